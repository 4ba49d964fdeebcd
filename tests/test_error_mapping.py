"""The one error mapper: every domain error becomes the documented code with AIP-193 details."""

from __future__ import annotations

from datetime import timedelta

import grpc
import psycopg
import pytest
import sqlalchemy.exc
from google.rpc import error_details_pb2, status_pb2

from domain import errors as d
from server.errors import ERROR_DOMAIN, to_status


def decode(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def unpack(proto: status_pb2.Status, cls: type) -> list:  # type: ignore[type-arg]
    out = []
    for detail in proto.details:
        if detail.Is(cls.DESCRIPTOR):
            msg = cls()
            detail.Unpack(msg)
            out.append(msg)
    return out


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (d.InvalidArgument.field("name", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (d.NotFound("model", "models/x"), grpc.StatusCode.NOT_FOUND),
        (d.AlreadyExists("model", "models/x"), grpc.StatusCode.ALREADY_EXISTS),
        (d.FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION),
        (d.Aborted("etag"), grpc.StatusCode.ABORTED),
        (d.PermissionDenied("admin only"), grpc.StatusCode.PERMISSION_DENIED),
        (d.Unauthenticated("no key"), grpc.StatusCode.UNAUTHENTICATED),
        (
            d.QuotaExceeded("plan", [d.QuotaViolation("org", "20/month")]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (d.RateLimited("slow down", timedelta(seconds=2)), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (d.Unavailable("db down"), grpc.StatusCode.UNAVAILABLE),
        (d.Unimplemented("later"), grpc.StatusCode.UNIMPLEMENTED),
        (NotImplementedError(), grpc.StatusCode.UNIMPLEMENTED),
        (
            sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")),
            grpc.StatusCode.UNAVAILABLE,
        ),
        (ConnectionResetError(), grpc.StatusCode.UNAVAILABLE),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_codes_and_error_info(error: BaseException, code: grpc.StatusCode) -> None:
    status = to_status(error)
    assert status.code == code
    proto = decode(status)
    assert proto.code == code.value[0]
    (info,) = unpack(proto, error_details_pb2.ErrorInfo)
    assert info.domain == ERROR_DOMAIN and info.reason


def test_internal_errors_hide_their_text() -> None:
    status = to_status(KeyError("secret table name"))
    assert "secret" not in status.details


def test_details_carry_violations() -> None:
    bad = to_status(
        d.InvalidArgument("x", [d.FieldViolation("a", "why"), d.FieldViolation("b", "why")])
    )
    (br,) = unpack(decode(bad), error_details_pb2.BadRequest)
    assert [v.field for v in br.field_violations] == ["a", "b"]
    pre = to_status(
        d.FailedPrecondition("x", [d.PreconditionViolation("STATE", "models/m", "draft")])
    )
    (pf,) = unpack(decode(pre), error_details_pb2.PreconditionFailure)
    assert pf.violations[0].type == "STATE"
    quota = to_status(d.QuotaExceeded("x", [d.QuotaViolation("org:acme", "20 versions/month")]))
    (qf,) = unpack(decode(quota), error_details_pb2.QuotaFailure)
    assert qf.violations[0].subject == "org:acme"
    slow = to_status(d.RateLimited("x", timedelta(milliseconds=1500)))
    (ri,) = unpack(decode(slow), error_details_pb2.RetryInfo)
    assert ri.retry_delay.ToTimedelta() == timedelta(milliseconds=1500)
    for outage in (ConnectionResetError(), d.Unavailable("x", retry_after=timedelta(seconds=3))):
        (ri,) = unpack(decode(to_status(outage)), error_details_pb2.RetryInfo)
        assert ri.retry_delay.ToTimedelta() > timedelta(0)
    missing = to_status(d.NotFound("model", "models/m"))
    (res,) = unpack(decode(missing), error_details_pb2.ResourceInfo)
    assert res.resource_name == "models/m"


def test_error_trailers_stay_small_whatever_the_input() -> None:
    """Errors echo client input; trailers past the clients' 8 KiB metadata limit would
    reach the client as 'Stream removed' instead of the status (found by fuzzing)."""
    many = d.InvalidArgument(
        "bad: " + "; ".join(f"spec.targets[{i}]: unknown target ''" for i in range(5000)),
        [d.FieldViolation(f"spec.targets[{i}]", "\u00e9" * 500) for i in range(5000)],
    )
    huge_name = d.NotFound("model", "models/" + "\U0001f600" * 5000)
    for err in (many, huge_name):
        status = to_status(err)
        raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
        assert len(raw) * 4 // 3 + 3 * len(status.details.encode()) <= 6000
        proto = decode(status)
        info = unpack(proto, error_details_pb2.ErrorInfo)[0]
        assert info.reason
    (br,) = unpack(decode(to_status(many)), error_details_pb2.BadRequest)
    assert 1 <= len(br.field_violations) <= 12
    assert br.field_violations[0].field == "spec.targets[0]"
    assert "more not listed" in to_status(many).details


def test_a_value_the_database_refuses_is_invalid_argument() -> None:
    """PostgreSQL refuses NUL in text (psycopg DataError): bad input, not INTERNAL; the
    driver's text (which may quote SQL) is not echoed."""
    exc = sqlalchemy.exc.DataError("INSERT ...", {}, Exception("cannot contain NUL (0x00)"))
    status = to_status(exc)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "INSERT" not in status.details
    (info,) = unpack(decode(status), error_details_pb2.ErrorInfo)
    assert info.reason == "UNSTORABLE_VALUE"


@pytest.mark.parametrize(
    "exc_type", [psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure]
)
def test_a_write_the_database_failed_for_a_concurrent_one_is_aborted(exc_type: type) -> None:
    """A transaction PostgreSQL failed to let a concurrent one proceed is a retryable
    conflict (ABORTED), not an outage."""
    exc = sqlalchemy.exc.OperationalError("UPDATE orgs ...", {}, exc_type("deadlock detected"))
    status = to_status(exc)
    assert status.code == grpc.StatusCode.ABORTED
    assert "UPDATE" not in status.details
    (info,) = unpack(decode(status), error_details_pb2.ErrorInfo)
    assert info.reason == "CONCURRENT_WRITE"
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("down"))
    assert to_status(refused).code == grpc.StatusCode.UNAVAILABLE
