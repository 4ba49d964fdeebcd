"""Queries about stored objects: which keys rows reference (for the garbage collector) and
packages in an org's scope (for presigned downloads)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ConversionJob,
    UploadSession,
)

ACTIVE_JOB_STATES = ("queued", "running")
_IN_CHUNK = 500  # keys per IN (...) list


def package_in_scope(
    session: Session, org_id: str, uid: str
) -> tuple[ArtifactPackage, CatalogVersion, CatalogVariant] | None:
    """A package the org can see (its own variants' or a blessed one's), resources loaded."""
    row = session.execute(
        select(ArtifactPackage, CatalogVersion, CatalogVariant)
        .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(
            ArtifactPackage.id == uid,
            (CatalogVariant.org_id.is_(None)) | (CatalogVariant.org_id == org_id),
        )
        .options(selectinload(ArtifactPackage.resources))
    ).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2]


def keys_referenced_by_resources(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of `keys` that some ArtifactResource (any org, or the blessed catalog) stores."""
    wanted = list(dict.fromkeys(keys))
    found: set[str] = set()
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        found.update(
            k
            for k in session.scalars(
                select(ArtifactResource.storage_key)
                .where(ArtifactResource.storage_key.in_(chunk))
                .distinct()
            )
            if k is not None
        )
    return found


def open_upload_sessions(session: Session, org_id: str | None = None) -> Sequence[UploadSession]:
    """Uploads still in flight (state open, expired or not yet swept), of one org or all."""
    q = select(UploadSession).where(UploadSession.state == "open")
    if org_id is not None:
        q = q.where(UploadSession.org_id == org_id)
    return session.scalars(q).all()


def active_conversion_jobs(session: Session, org_id: str | None = None) -> Sequence[ConversionJob]:
    """Conversion jobs that may still write objects (queued or running)."""
    q = select(ConversionJob).where(ConversionJob.state.in_(ACTIVE_JOB_STATES))
    if org_id is not None:
        q = q.where(ConversionJob.org_id == org_id)
    return session.scalars(q).all()
