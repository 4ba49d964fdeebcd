"""The conversion job queue and the progress events each job emits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.orm.base import ID_LENGTH, Base, Json, Timestamps, UuidPk, utcnow
from storage.orm.tenancy import SLUG_LENGTH, STATE_LENGTH, org_fk

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class ConversionJob(UuidPk, Timestamps, Base):
    __tablename__ = "conversion_jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
        # Workers claim the oldest queued job and reap running ones with stale heartbeats.
        Index(None, "state", "created_at"),
    )

    org_id: Mapped[str] = org_fk()
    # SET NULL: the job's history outlives the artifact it converted.
    source_resource_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("artifact_resources.id", ondelete="SET NULL"), index=True
    )
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    targets: Mapped[list[str]] = mapped_column(Json, default=list)
    options: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    state: Mapped[str] = mapped_column(String(STATE_LENGTH), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(default=False)

    events: Mapped[list[ConversionEvent]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ConversionEvent.seq",
    )


class ConversionEvent(Base):
    """One progress event of a job; `seq` orders them for WatchConversion replays."""

    __tablename__ = "conversion_events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("conversion_jobs.id", ondelete="CASCADE")
    )
    seq: Mapped[int]
    stage: Mapped[str] = mapped_column(String(64))
    fraction: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[ConversionJob] = relationship(back_populates="events")
