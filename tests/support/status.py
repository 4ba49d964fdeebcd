"""Decoding AIP-193 error details from a failed call."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: dict[str, str] = field(default_factory=dict)
    precondition_violations: list[error_details_pb2.PreconditionFailure.Violation] = field(
        default_factory=list
    )
    quota_violations: list[error_details_pb2.QuotaFailure.Violation] = field(default_factory=list)
    retry_delay_s: float | None = None


def rich(err: grpc.RpcError) -> RichError:
    call: grpc.Call = err  # type: ignore[assignment]
    out = RichError(call.code(), call.details() or "")
    for key, value in call.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == call.code().value[0]
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                detail.Unpack(br)
                out.field_violations = {v.field: v.description for v in br.field_violations}
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                pf = error_details_pb2.PreconditionFailure()
                detail.Unpack(pf)
                out.precondition_violations = list(pf.violations)
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                qf = error_details_pb2.QuotaFailure()
                detail.Unpack(qf)
                out.quota_violations = list(qf.violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                ri = error_details_pb2.RetryInfo()
                detail.Unpack(ri)
                out.retry_delay_s = ri.retry_delay.ToTimedelta().total_seconds()
    return out


def expect_error(code: grpc.StatusCode, fn, *args, **kwargs) -> RichError:  # type: ignore[no-untyped-def]
    """Call fn, assert it fails with `code` and carries an ErrorInfo; return the details."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as err:
        details = rich(err)
        assert details.code == code, f"expected {code}, got {details.code}: {details.message}"
        assert details.reason, "every error carries an ErrorInfo reason"
        return details
    raise AssertionError(f"expected {code}, the call succeeded")
