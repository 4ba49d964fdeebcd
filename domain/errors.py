"""Errors raised by domain code.

Each class corresponds to one canonical gRPC status; the server maps them once, in
its error interceptor, to a status with AIP-193 details. Domain code never imports
grpc, so these carry plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (google.rpc.PreconditionFailure.Violation)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


class DomainError(Exception):
    """Base class. `reason` becomes google.rpc.ErrorInfo.reason (UPPER_SNAKE_CASE)."""

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field_name: str, description: str) -> InvalidArgument:
        return cls(f"{field_name}: {description}", [FieldViolation(field_name, description)])


class NotFound(DomainError):
    default_reason = "NOT_FOUND"

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None) -> None:
        super().__init__(
            message or f"{resource_type} {resource_name!r} not found",
            metadata={"resource_type": resource_type, "resource_name": resource_name},
        )
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DomainError):
    default_reason = "ALREADY_EXISTS"

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None) -> None:
        super().__init__(
            message or f"{resource_type} {resource_name!r} already exists",
            metadata={"resource_type": resource_type, "resource_name": resource_name},
        )
        self.resource_type = resource_type
        self.resource_name = resource_name


class FailedPrecondition(DomainError):
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        violations: list[PreconditionViolation] | None = None,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations or [])


class Aborted(DomainError):
    """A concurrency conflict (stale etag, lost race); the client may retry."""

    default_reason = "ABORTED"


class PermissionDenied(DomainError):
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    default_reason = "UNAUTHENTICATED"


class QuotaExceeded(DomainError):
    """A plan limit is reached (RESOURCE_EXHAUSTED with QuotaFailure)."""

    default_reason = "QUOTA_EXCEEDED"

    def __init__(
        self,
        message: str,
        violations: list[QuotaViolation],
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class RateLimited(DomainError):
    """Too many concurrent or recent requests (RESOURCE_EXHAUSTED with RetryInfo)."""

    default_reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: timedelta, **kwargs: object) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency (database, object store) is unreachable; retryable (UNAVAILABLE with
    RetryInfo: `retry_after`)."""

    default_reason = "BACKEND_UNAVAILABLE"
    default_retry_after = timedelta(seconds=1)

    def __init__(
        self,
        message: str,
        *,
        retry_after: timedelta | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after or self.default_retry_after


class DeadlineExceeded(DomainError):
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(DomainError):
    """An RPC of the contract whose implementation has not landed yet."""

    default_reason = "NOT_IMPLEMENTED"


@dataclass
class Violations:
    """Collects field violations so a request reports all its bad fields at once."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise InvalidArgument(f"{message}: {summary}", self.items)
