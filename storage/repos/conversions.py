"""Queries over conversion jobs and their progress events.

Every tenant query takes `org_id`; the worker-side queries (claim, heartbeat, reap) act
on jobs of every org and are used only by conversion workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ConversionEvent,
    ConversionJob,
)

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def get(session: Session, org_id: str, job_id: str) -> ConversionJob | None:
    return session.scalars(
        select(ConversionJob).where(ConversionJob.org_id == org_id, ConversionJob.id == job_id)
    ).one_or_none()


def lock(session: Session, job_id: str) -> ConversionJob | None:
    """The job, locked for this transaction (PostgreSQL row lock; SQLite already holds the
    database write lock in a read-write transaction). Refreshes a cached instance."""
    return session.scalars(
        select(ConversionJob)
        .where(ConversionJob.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def state_of(session: Session, job_id: str) -> str | None:
    return session.scalar(select(ConversionJob.state).where(ConversionJob.id == job_id))


def events_after(
    session: Session, job_id: str, after_seq: int, limit: int = 500
) -> Sequence[ConversionEvent]:
    return session.scalars(
        select(ConversionEvent)
        .where(ConversionEvent.job_id == job_id, ConversionEvent.seq > after_seq)
        .order_by(ConversionEvent.seq)
        .limit(limit)
    ).all()


def append_event(
    session: Session, job_id: str, stage: str, fraction: float, message: str
) -> ConversionEvent:
    """Add the job's next event. The caller holds the job's row lock (see `lock`), so
    sequence numbers are gap-free and never collide."""
    last = session.scalar(
        select(func.coalesce(func.max(ConversionEvent.seq), 0)).where(
            ConversionEvent.job_id == job_id
        )
    )
    event = ConversionEvent(
        job_id=job_id,
        seq=int(last or 0) + 1,
        stage=stage[:64],
        fraction=min(1.0, max(0.0, fraction)),
        message=message,
    )
    session.add(event)
    session.flush()
    return event


def last_fraction(session: Session, job_id: str) -> float:
    value = session.scalar(
        select(ConversionEvent.fraction)
        .where(ConversionEvent.job_id == job_id)
        .order_by(ConversionEvent.seq.desc())
        .limit(1)
    )
    return float(value or 0.0)


# --- worker side ------------------------------------------------------------------------


def next_queued(session: Session) -> ConversionJob | None:
    """The oldest queued job no other transaction holds: `FOR UPDATE SKIP LOCKED` on
    PostgreSQL, so concurrent workers each get a different one. On SQLite the clause is
    not rendered; a read-write transaction there holds the database write lock, which
    serialises claims anyway, and `claim` re-checks the state."""
    return session.scalars(
        select(ConversionJob)
        .where(ConversionJob.state == "queued")
        .order_by(ConversionJob.created_at, ConversionJob.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).one_or_none()


def claim(session: Session, job_id: str, worker_id: str, now: datetime) -> bool:
    """Conditionally move a queued job to running for `worker_id`; False if it was no
    longer queued (another worker, or a cancellation, got there first)."""
    result = session.execute(
        update(ConversionJob)
        .where(ConversionJob.id == job_id, ConversionJob.state == "queued")
        .values(
            state="running",
            worker_id=worker_id,
            heartbeat_at=now,
            attempts=ConversionJob.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def heartbeat(session: Session, job_id: str, worker_id: str, now: datetime) -> bool | None:
    """Record that `worker_id` is still on the job. Returns whether cancellation was
    requested, or None when the job is no longer this worker's (reaped, or finished)."""
    result = session.execute(
        update(ConversionJob)
        .where(
            ConversionJob.id == job_id,
            ConversionJob.state == "running",
            ConversionJob.worker_id == worker_id,
        )
        # A heartbeat is not a change of the job: keep update_time as it was.
        .values(heartbeat_at=now, updated_at=ConversionJob.updated_at)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    return bool(
        session.scalar(select(ConversionJob.cancel_requested).where(ConversionJob.id == job_id))
    )


def any_stale(session: Session, older_than: datetime) -> bool:
    return (
        session.scalar(
            select(ConversionJob.id)
            .where(ConversionJob.state == "running", ConversionJob.heartbeat_at < older_than)
            .limit(1)
        )
        is not None
    )


def stale_running(session: Session, older_than: datetime) -> Sequence[ConversionJob]:
    """Running jobs whose worker has not sent a heartbeat since `older_than`."""
    return session.scalars(
        select(ConversionJob)
        .where(ConversionJob.state == "running", ConversionJob.heartbeat_at < older_than)
        .order_by(ConversionJob.heartbeat_at)
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()


# --- sources ------------------------------------------------------------------------------


def resource_with_parents(
    session: Session, resource_id: str
) -> tuple[ArtifactResource, ArtifactPackage, CatalogVersion, CatalogVariant] | None:
    row = session.execute(
        select(ArtifactResource, ArtifactPackage, CatalogVersion, CatalogVariant)
        .join(ArtifactPackage, ArtifactResource.package_id == ArtifactPackage.id)
        .join(CatalogVersion, ArtifactPackage.catalog_version_id == CatalogVersion.id)
        .join(CatalogVariant, CatalogVersion.variant_id == CatalogVariant.id)
        .where(ArtifactResource.id == resource_id)
    ).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2], row[3]


def package_with_parents(
    session: Session, package_id: str
) -> tuple[ArtifactPackage, CatalogVersion, CatalogVariant] | None:
    row = session.execute(
        select(ArtifactPackage, CatalogVersion, CatalogVariant)
        .join(CatalogVersion, ArtifactPackage.catalog_version_id == CatalogVersion.id)
        .join(CatalogVariant, CatalogVersion.variant_id == CatalogVariant.id)
        .where(ArtifactPackage.id == package_id)
    ).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2]


def package_resources(session: Session, package_id: str) -> Sequence[ArtifactResource]:
    return session.scalars(
        select(ArtifactResource)
        .where(ArtifactResource.package_id == package_id)
        .order_by(ArtifactResource.load_order, ArtifactResource.created_at)
    ).all()


def packages_by_id(
    session: Session, package_ids: Sequence[str]
) -> dict[str, tuple[ArtifactPackage, str]]:
    """package id -> (package with resources loaded, its variant id)."""
    if not package_ids:
        return {}
    rows = session.execute(
        select(ArtifactPackage, CatalogVersion.variant_id)
        .join(CatalogVersion, ArtifactPackage.catalog_version_id == CatalogVersion.id)
        .where(ArtifactPackage.id.in_(list(package_ids)))
        .options(selectinload(ArtifactPackage.resources))
    ).all()
    return {p.id: (p, variant_id) for p, variant_id in rows}
