"""Helpers for the TelemetryService tests: models and versions to report against (through
ModelService and VersionService), event builders, and a way to age devices (heartbeat
times are the server's clock, so tests move last_seen_at back in the database)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from modelregistry.v1 import model_service_pb2, models_pb2, version_service_pb2
from modelregistry.v1 import telemetry_service_pb2 as pb
from storage.db import create_engine_for, session_factory, transaction
from storage.orm import Device, InferenceSession, Org
from support.registry import Client, RunningServer


def now() -> datetime:
    return datetime.now(UTC)


def ts(t: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


@functools.cache
def _engine(url: str) -> Engine:
    return create_engine_for(url, pool_size=1, max_overflow=2)


def _db(registry: RunningServer) -> Session:
    return session_factory(_engine(registry.database_url))()


def make_model(client: Client, model_id: str) -> None:
    client.models.CreateModel(
        model_service_pb2.CreateModelRequest(
            model_id=model_id, model=models_pb2.Model(framework="onnx")
        )
    )


def make_version(client: Client, model_id: str, version: str) -> None:
    client.versions.CreateVersion(
        version_service_pb2.CreateVersionRequest(parent=f"models/{model_id}", version_id=version)
    )


def model_with_versions(client: Client, model_id: str, versions: Iterable[str] = ("1.0",)) -> None:
    make_model(client, model_id)
    for v in versions:
        make_version(client, model_id, v)


def session(
    model: str = "models/m",
    version: str = "1.0",
    *,
    event_id: str | None = None,
    device_id: str = "dev-1",
    device_type: str = "pixel-8",
    at: datetime | None = None,
    latency_ms: float = 10.0,
    ttft_ms: float = 0.0,
    tokens_per_second: float = 0.0,
    error: bool = False,
    error_code: str = "",
) -> pb.InferenceSessionEvent:
    return pb.InferenceSessionEvent(
        event_id=event_id if event_id is not None else str(uuid.uuid4()),
        model=model,
        version_id=version,
        device_id=device_id,
        device_type=device_type,
        occur_time=ts(at or now() - timedelta(minutes=1)),
        latency_ms=latency_ms,
        time_to_first_token_ms=ttft_ms,
        tokens_per_second=tokens_per_second,
        error=error,
        error_code=error_code,
    )


def update_event(
    model: str = "models/m",
    version: str = "1.0",
    *,
    event_id: str | None = None,
    device_id: str = "dev-1",
    at: datetime | None = None,
    sample_count: int = 10,
    metrics: dict[str, float] | None = None,
) -> pb.TrainingUpdateEvent:
    return pb.TrainingUpdateEvent(
        event_id=event_id if event_id is not None else str(uuid.uuid4()),
        model=model,
        version_id=version,
        device_id=device_id,
        occur_time=ts(at or now() - timedelta(minutes=1)),
        sample_count=sample_count,
        metrics=metrics or {},
    )


def batches(
    events: Sequence[pb.InferenceSessionEvent], size: int = 1000
) -> list[list[pb.InferenceSessionEvent]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def report(
    client: Client, *batches_: Sequence[pb.InferenceSessionEvent]
) -> pb.ReportInferenceSessionsResponse:
    return client.telemetry.ReportInferenceSessions(
        iter([pb.ReportInferenceSessionsRequest(events=list(b)) for b in batches_])
    )


def report_updates(
    client: Client, *batches_: Sequence[pb.TrainingUpdateEvent]
) -> pb.ReportTrainingUpdatesResponse:
    return client.telemetry.ReportTrainingUpdates(
        iter([pb.ReportTrainingUpdatesRequest(updates=list(b)) for b in batches_])
    )


def window(
    client: Client,
    model: str = "models/m",
    start: datetime | None = None,
    end: datetime | None = None,
    **kw: str,
) -> pb.GetInferenceTelemetryResponse:
    t = now()
    return client.telemetry.GetInferenceTelemetry(
        pb.GetInferenceTelemetryRequest(
            name=model,
            start_time=ts(start or t - timedelta(days=1)),
            end_time=ts(end or t + timedelta(minutes=1)),
            **kw,
        )
    )


def heartbeat(
    client: Client,
    device_id: str,
    health: int = pb.Device.HEALTH_HEALTHY,
    **kw: str,
) -> pb.ReportDeviceHeartbeatResponse:
    return client.telemetry.ReportDeviceHeartbeat(
        pb.ReportDeviceHeartbeatRequest(
            device=pb.Device(device_id=device_id, health=health, **kw)  # type: ignore[arg-type]
        )
    )


def age_device(registry: RunningServer, client: Client, device_id: str, age: timedelta) -> None:
    """Pretend the device's last heartbeat was `age` ago."""
    with transaction(session_factory(_engine(registry.database_url))) as s:
        org_id = s.scalars(select(Org.id).where(Org.name == client.org)).one()
        s.execute(
            update(Device)
            .where(Device.org_id == org_id, Device.device_id == device_id)
            .values(last_seen_at=now() - age)
        )


def stored_sessions(registry: RunningServer, client: Client) -> int:
    from storage.repos.telemetry import session_count

    with _db(registry) as s:
        org_id = s.scalars(select(Org.id).where(Org.name == client.org)).one()
        return session_count(s, org_id)


def stored_rows(registry: RunningServer, client: Client) -> dict[str, InferenceSession]:
    """The org's raw sessions by event id, as the database holds them."""
    with _db(registry) as s:
        org_id = s.scalars(select(Org.id).where(Org.name == client.org)).one()
        rows = s.scalars(select(InferenceSession).where(InferenceSession.org_id == org_id))
        return {r.event_id: r for r in rows}


def partition_of_rows(registry: RunningServer, client: Client) -> dict[str, str] | None:
    """PostgreSQL: the partition holding each of the org's raw sessions, by event id
    (None on SQLite, where the table is not partitioned)."""
    with _db(registry) as s:
        if s.get_bind().dialect.name != "postgresql":
            return None
        org_id = s.scalars(select(Org.id).where(Org.name == client.org)).one()
        rows = s.execute(
            text(
                "SELECT event_id, tableoid::regclass::text FROM inference_sessions"
                " WHERE org_id = :org"
            ),
            {"org": org_id},
        )
        return {e: p for e, p in rows}


def session_partitions(registry: RunningServer) -> list[str] | None:
    """PostgreSQL: the partitions of inference_sessions (pg_inherits); None on SQLite."""
    with _db(registry) as s:
        if s.get_bind().dialect.name != "postgresql":
            return None
        rows = s.execute(
            text(
                "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'inference_sessions'::regclass ORDER BY 1"
            )
        )
        return [r for (r,) in rows]


def day_partition(t: datetime) -> str:
    return f"inference_sessions_p{t.astimezone(UTC):%Y%m%d}"
