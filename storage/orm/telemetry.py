"""Device fleet and the telemetry devices report: inference sessions, training updates."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from storage.orm.base import ID_LENGTH, Base, CreatedAt, Json, Timestamps, UuidPk, utcnow
from storage.orm.tenancy import SLUG_LENGTH, STATE_LENGTH, org_fk

HEALTH_STATUSES = ("healthy", "degraded", "unhealthy", "offline", "unknown")
SESSION_STATUSES = ("ok", "error")

_DEVICE_ID_LENGTH = 255
_EVENT_ID_LENGTH = 128


class Device(UuidPk, CreatedAt, Base):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("org_id", "device_id"),
        CheckConstraint(
            "health_status IN ('healthy', 'degraded', 'unhealthy', 'offline', 'unknown')",
            name="health_status",
        ),
    )

    org_id: Mapped[str] = org_fk(index=False)
    device_id: Mapped[str] = mapped_column(String(_DEVICE_ID_LENGTH))
    device_type: Mapped[str] = mapped_column(String(SLUG_LENGTH), default="")
    platform: Mapped[str] = mapped_column(String(64), default="")
    os_version: Mapped[str] = mapped_column(String(64), default="")
    runtime_version: Mapped[str] = mapped_column(String(64), default="")
    health_status: Mapped[str] = mapped_column(String(STATE_LENGTH), default="unknown")
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


# PostgreSQL stores raw sessions in one partition per UTC day of occurred_at, named by this
# prefix and the day (inference_sessions_p20261126); created on demand by ingestion
# (storage.repos.telemetry.ensure_session_partitions), dropped whole by the retention.
SESSION_PARTITION_PREFIX = "inference_sessions_p"


def is_session_partition(name: str | None) -> bool:
    """A daily partition of inference_sessions (not part of the ORM's schema)."""
    return bool(name) and re.fullmatch(SESSION_PARTITION_PREFIX + r"\d{8}", name or "") is not None


class InferenceSession(Base):
    """One raw inference event, kept for the telemetry retention period.

    No surrogate id: (org_id, event_id, occurred_at) is the key, so re-delivered events
    (a retry re-sends the same event, occur_time included) conflict and are skipped
    (INSERT .. ON CONFLICT DO NOTHING), and each insert maintains one index fewer. The key
    holds occurred_at because on PostgreSQL the table is partitioned by it (RANGE, one
    partition per UTC day; a unique key of a partitioned table must include the partition
    key); SQLite has the same key, so both backends dedupe alike.
    No foreign key on org_id either, and the time index is keyed by `scope`, an integer
    hash of (org_id, model_id), not by the two strings: both made each insert dearer
    (migration 0010 says why that is safe; a trigger on orgs deletes an org's sessions).
    """

    __tablename__ = "inference_sessions"
    __table_args__ = (
        # Devices retry batches; the key makes re-delivery idempotent.
        PrimaryKeyConstraint("org_id", "event_id", "occurred_at"),
        CheckConstraint("status IN ('ok', 'error')", name="status"),
        Index(None, "scope", "occurred_at"),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    event_id: Mapped[str] = mapped_column(String(_EVENT_ID_LENGTH))
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    # storage.repos.telemetry.session_scope(org_id, model_id)
    scope: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    device_id: Mapped[str] = mapped_column(String(_DEVICE_ID_LENGTH))
    device_type: Mapped[str] = mapped_column(String(SLUG_LENGTH), default="")
    occurred_at: Mapped[datetime]
    latency_ms: Mapped[float]
    ttft_ms: Mapped[float | None]
    tokens_per_second: Mapped[float | None]
    status: Mapped[str] = mapped_column(String(STATE_LENGTH), default="ok")
    error_code: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class _RollupValues:
    """The aggregate columns every rollup table has."""

    session_count: Mapped[int] = mapped_column(BigInteger, default=0)
    error_count: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_sum: Mapped[float] = mapped_column(default=0.0)
    latency_sketch: Mapped[bytes] = mapped_column(LargeBinary)
    ttft_count: Mapped[int] = mapped_column(BigInteger, default=0)
    ttft_sum: Mapped[float] = mapped_column(default=0.0)
    ttft_sketch: Mapped[bytes] = mapped_column(LargeBinary)
    tps_count: Mapped[int] = mapped_column(BigInteger, default=0)
    tps_sum: Mapped[float] = mapped_column(default=0.0)
    tps_sketch: Mapped[bytes] = mapped_column(LargeBinary)


class InferenceRollup(_RollupValues, Base):
    """Mergeable aggregate of one hour of a model's inference sessions.

    One row per (org, model, version, device type, hour), plus rows with version and/or
    device_type '*' holding the same hour summed over all versions / device types, so any
    filter combination reads at most one row per hour. Maintained in the ingesting
    transaction. Sketches are log-bucketed histograms (domain.sketch) with a bounded
    relative error; merging two rows adds their counts, sums and bucket counts.
    """

    __tablename__ = "inference_rollups"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "model_id", "version", "device_type", "hour"),
        Index(None, "hour"),
    )

    org_id: Mapped[str] = org_fk(index=False)
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    device_type: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    # Start of the hour (UTC) the sessions occurred in.
    hour: Mapped[datetime]


class InferenceRollup10m(_RollupValues, Base):
    """The same aggregates per 10 minutes: a window's partial hours at its edges read
    these, so at most 10 minutes at each edge come from raw sessions."""

    __tablename__ = "inference_rollups_10m"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "model_id", "version", "device_type", "bucket"),
        Index(None, "bucket"),
    )

    org_id: Mapped[str] = org_fk(index=False)
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    device_type: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    # Start of the 10 minutes (UTC) the sessions occurred in.
    bucket: Mapped[datetime]


class TrainingUpdate(UuidPk, Base):
    __tablename__ = "training_updates"
    __table_args__ = (
        UniqueConstraint("org_id", "event_id"),
        Index(None, "org_id", "model_id", "version", "occurred_at"),
    )

    org_id: Mapped[str] = org_fk(index=False)
    event_id: Mapped[str] = mapped_column(String(_EVENT_ID_LENGTH))
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    device_id: Mapped[str] = mapped_column(String(_DEVICE_ID_LENGTH))
    sample_count: Mapped[int] = mapped_column(default=0)
    metrics: Mapped[dict[str, float]] = mapped_column(Json, default=dict)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceProfileOverride(UuidPk, Timestamps, Base):
    """An org's own device profile (memory, accelerators...) used by compatibility checks."""

    __tablename__ = "device_profile_overrides"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    org_id: Mapped[str] = org_fk(index=False)
    name: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    profile: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
