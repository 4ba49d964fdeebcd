"""What a failed call means to the client: ClientError (a failure to report as one line),
`CODE: message` descriptions, and whether a failure is worth retrying (and after how long,
when the server says so with RetryInfo).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ClientError(Exception):
    """A failure to report to the user as one line."""


def describe(err: grpc.RpcError) -> str:
    """`CODE: message` of a failed call."""
    call: grpc.Call = err  # type: ignore[assignment]
    code = call.code()
    details = (call.details() or "").strip() or "(no details)"
    return f"{code.name if code else 'UNKNOWN'}: {details}"


def _status(err: grpc.RpcError) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds) of a failed call."""
    reason, delay = "", None
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            delay = ri.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


def retryable(err: grpc.RpcError) -> tuple[bool, float | None]:
    code = err.code()  # type: ignore[attr-defined]
    reason, delay = _status(err)
    if code in RETRYABLE:
        return True, delay
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (reason == "RATE_LIMITED" or delay):
        return True, delay  # a rate limit, not the plan's quota
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in (err.details() or ""):  # type: ignore[attr-defined]
        return True, delay
    return False, None
