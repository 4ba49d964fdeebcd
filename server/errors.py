"""The one error mapper: domain and infrastructure exceptions -> gRPC status (AIP-193).

Every error carries a google.rpc.ErrorInfo (reason, domain, metadata); bad fields add
BadRequest, unmet preconditions PreconditionFailure, plan limits QuotaFailure, rate
limits and backend outages RetryInfo, missing resources ResourceInfo.
"""

from __future__ import annotations

import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from domain import errors as d
from storage.objectstore.base import StorageUnavailable

ERROR_DOMAIN = "modelregistry.dev"

# Error trailers must stay well under the 8 KiB of metadata gRPC clients accept by default
# (16 KiB hard): past it the client sees "Stream removed" (RESOURCE_EXHAUSTED) instead of
# the real status. Messages, metadata values and violation texts echo client input, so
# they are clipped (UTF-8 bytes; the message travels twice, percent-encoded in
# grpc-message and inside grpc-status-details-bin) and at most MAX_VIOLATIONS are listed,
# the message saying how many more there were.
MAX_MESSAGE_BYTES = 400
MAX_TEXT_BYTES = 256
# Identifiers (field paths, subjects, resource names) are clipped far later than prose:
# a client must get a resource name whole (the longest, a resource of a package, is 184
# bytes) to act on it.
MAX_NAME_BYTES = 320
MAX_VIOLATIONS = 12
TRAILER_BUDGET = 6000


def clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


_CODES: list[tuple[type[d.DomainError], int]] = [
    (d.InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (d.NotFound, code_pb2.NOT_FOUND),
    (d.AlreadyExists, code_pb2.ALREADY_EXISTS),
    (d.FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (d.Aborted, code_pb2.ABORTED),
    (d.PermissionDenied, code_pb2.PERMISSION_DENIED),
    (d.Unauthenticated, code_pb2.UNAUTHENTICATED),
    (d.QuotaExceeded, code_pb2.RESOURCE_EXHAUSTED),
    (d.RateLimited, code_pb2.RESOURCE_EXHAUSTED),
    (d.Unavailable, code_pb2.UNAVAILABLE),
    (d.DeadlineExceeded, code_pb2.DEADLINE_EXCEEDED),
    (d.Unimplemented, code_pb2.UNIMPLEMENTED),
]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _details(err: d.DomainError, max_violations: int = MAX_VIOLATIONS) -> list[any_pb2.Any]:
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=err.reason,
                domain=ERROR_DOMAIN,
                metadata={clip(k): clip(v, MAX_NAME_BYTES) for k, v in err.metadata.items()},
            )
        )
    ]
    if isinstance(err, d.InvalidArgument) and err.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=clip(v.field, MAX_NAME_BYTES), description=clip(v.description)
                        )
                        for v in err.violations[:max_violations]
                    ]
                )
            )
        )
    elif isinstance(err, d.FailedPrecondition) and err.violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=clip(v.type, MAX_NAME_BYTES),
                            subject=clip(v.subject, MAX_NAME_BYTES),
                            description=clip(v.description),
                        )
                        for v in err.violations[:max_violations]
                    ]
                )
            )
        )
    elif isinstance(err, d.QuotaExceeded):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=clip(v.subject, MAX_NAME_BYTES),
                            description=clip(v.description),
                        )
                        for v in err.violations[:max_violations]
                    ]
                )
            )
        )
    elif isinstance(err, (d.RateLimited, d.Unavailable)):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(err.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    elif isinstance(err, (d.NotFound, d.AlreadyExists)):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=clip(err.resource_type, MAX_NAME_BYTES),
                    resource_name=clip(err.resource_name, MAX_NAME_BYTES),
                    description=clip(err.message),
                )
            )
        )
    return details


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status for an exception escaping a handler."""
    err = as_domain_error(exc)
    code = next(c for cls, c in _CODES if isinstance(err, cls)) if err else code_pb2.INTERNAL
    if err is None:
        err = d.DomainError("internal error; the server logged the details", reason="INTERNAL")
    violations = len(getattr(err, "violations", ()))
    limit = MAX_VIOLATIONS
    while True:
        message = clip(err.message, MAX_MESSAGE_BYTES)
        if violations > limit:
            message = clip(err.message, MAX_MESSAGE_BYTES - 40) + (
                f" ({violations - limit} more not listed)"
            )
        status = status_pb2.Status(code=code, message=message, details=_details(err, limit))
        # base64 of the details plus the percent-encoded message (3 bytes per non-ASCII byte)
        size = status.ByteSize() * 4 // 3 + 3 * len(message.encode())
        if size <= TRAILER_BUDGET or limit == 0:
            return rpc_status.to_status(status)
        limit //= 2


# PostgreSQL's deadlock_detected and serialization_failure: the database failed this
# transaction to let a concurrent one proceed.
_CONFLICT_STATES = {"40P01", "40001"}


def as_domain_error(exc: BaseException) -> d.DomainError | None:
    """Recognise domain errors and transient infrastructure failures; None means a bug."""
    if isinstance(exc, d.DomainError):
        return exc
    if isinstance(exc, NotImplementedError):
        # The generated servicer base class raises this for RPCs not implemented yet.
        return d.Unimplemented("this RPC is not implemented yet")
    if getattr(getattr(exc, "orig", None), "sqlstate", None) in _CONFLICT_STATES:
        # Writers take their locks in one order (storage.repos.tenancy.bump_org_revision),
        # so this is rare; the transaction was rolled back whole and may be retried.
        return d.Aborted(
            "a concurrent write conflicted with this one and nothing was written; retry",
            reason="CONCURRENT_WRITE",
        )
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return d.Unavailable("the database is unavailable; retry later")
    if isinstance(exc, sqlalchemy.exc.DataError):
        # The database refused a value from the request (PostgreSQL: a NUL character in
        # text, a number out of a column's range): bad input, not a server fault. The
        # driver's text is not echoed (it may quote SQL).
        return d.InvalidArgument(
            "the request holds a value the database cannot store "
            "(for example a NUL character in text, or a number out of range)",
            reason="UNSTORABLE_VALUE",
        )
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return d.Unavailable("the database connection pool is exhausted; retry later")
    if isinstance(exc, StorageUnavailable):
        return d.Unavailable("the object store is unavailable; retry later")
    if isinstance(exc, (ConnectionError, TimeoutError)) or _is_urllib3_error(exc):
        return d.Unavailable("the object store is unavailable; retry later")
    return None


def _is_urllib3_error(exc: BaseException) -> bool:
    # minio surfaces network failures as urllib3 errors; import lazily to keep this cheap.
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.HTTPError,))
