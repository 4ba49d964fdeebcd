"""The one error mapper: domain and infrastructure exceptions -> gRPC status (AIP-193).

Every error carries a google.rpc.ErrorInfo (reason, domain, metadata); bad fields add
BadRequest, unmet preconditions PreconditionFailure, plan limits QuotaFailure, rate
limits RetryInfo, missing resources ResourceInfo.
"""

from __future__ import annotations

import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from domain import errors as d

ERROR_DOMAIN = "modelregistry.dev"

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


def _details(err: d.DomainError) -> list[any_pb2.Any]:
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata
            )
        )
    ]
    if isinstance(err, d.InvalidArgument) and err.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in err.violations
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
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in err.violations
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
                            subject=v.subject, description=v.description
                        )
                        for v in err.violations
                    ]
                )
            )
        )
    elif isinstance(err, d.RateLimited):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(err.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    elif isinstance(err, (d.NotFound, d.AlreadyExists)):
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=err.resource_type,
                    resource_name=err.resource_name,
                    description=err.message,
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
    status = status_pb2.Status(code=code, message=err.message, details=_details(err))
    return rpc_status.to_status(status)


def as_domain_error(exc: BaseException) -> d.DomainError | None:
    """Recognise domain errors and transient infrastructure failures; None means a bug."""
    if isinstance(exc, d.DomainError):
        return exc
    if isinstance(exc, NotImplementedError):
        # The generated servicer base class raises this for RPCs not implemented yet.
        return d.Unimplemented("this RPC is not implemented yet")
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return d.Unavailable("the database is unavailable; retry later")
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return d.Unavailable("the database connection pool is exhausted; retry later")
    if isinstance(exc, (ConnectionError, TimeoutError)) or _is_urllib3_error(exc):
        return d.Unavailable("the object store is unavailable; retry later")
    return None


def _is_urllib3_error(exc: BaseException) -> bool:
    # minio surfaces network failures as urllib3 errors; import lazily to keep this cheap.
    import urllib3.exceptions

    return isinstance(exc, (urllib3.exceptions.HTTPError,))
