"""Queries over model versions, the catalog rows uploads create for them, and uploads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, selectinload

from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    Model,
    ModelVersion,
    UploadSession,
)
from storage.repos.paging import page_and_total

NEWEST_FIRST = (ModelVersion.created_at.desc(), ModelVersion.id.desc())


# Built once, with bound parameters (see storage/repos/models.py).
_GET = (
    select(ModelVersion)
    .join(Model, Model.id == ModelVersion.model_uid)
    .where(
        Model.org_id == bindparam("org_id"),
        Model.model_id == bindparam("model_id"),
        ModelVersion.version == bindparam("version"),
    )
)
_CATALOG_REFS = (
    select(CatalogVersion.model_version_id, CatalogVersion.variant_id, CatalogVersion.id)
    .where(CatalogVersion.model_version_id.in_(bindparam("uids", expanding=True)))
    .order_by(CatalogVersion.created_at)
)


def get(session: Session, org_id: str, model_id: str, version: str) -> ModelVersion | None:
    return session.scalars(
        _GET, {"org_id": org_id, "model_id": model_id, "version": version}
    ).one_or_none()


def get_by_uid(session: Session, org_id: str, uid: str) -> tuple[ModelVersion, str] | None:
    """The org's version with this uid and its model's slug."""
    row = session.execute(
        select(ModelVersion, Model.model_id)
        .join(Model, Model.id == ModelVersion.model_uid)
        .where(Model.org_id == org_id, ModelVersion.id == uid)
    ).one_or_none()
    return (row[0], row[1]) if row else None


def lock(session: Session, version: ModelVersion) -> ModelVersion:
    """Re-read `version` with a row lock (PostgreSQL; SQLite writers are serial anyway)."""
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.id == version.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def list_page(
    session: Session, model_uid: str, offset: int, limit: int
) -> tuple[list[ModelVersion], int]:
    base = select(ModelVersion).where(ModelVersion.model_uid == model_uid)
    return page_and_total(session, base, NEWEST_FIRST, offset, limit)


def created_since(session: Session, org_id: str, since: datetime) -> int:
    """How many of the org's versions (still existing) were created at or after `since`
    (ix_model_versions_org_id_created_at: the org's rows of the period, nothing else)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(ModelVersion)
            .where(ModelVersion.org_id == org_id, ModelVersion.created_at >= since)
        )
        or 0
    )


def catalog_refs(session: Session, version_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """model version uid -> (variant uid, catalog version uid) of its catalog version."""
    if not version_uids:
        return {}
    rows = session.execute(_CATALOG_REFS, {"uids": list(version_uids)}).all()
    out: dict[str, tuple[str, str]] = {}
    for mv_uid, variant_uid, cv_uid in rows:
        if mv_uid is not None:
            out.setdefault(mv_uid, (variant_uid, cv_uid))
    return out


def org_variant(session: Session, org_id: str, name: str) -> CatalogVariant | None:
    """The org's own override variant named `name` (never the blessed row)."""
    return session.scalars(
        select(CatalogVariant).where(CatalogVariant.org_id == org_id, CatalogVariant.name == name)
    ).one_or_none()


def blessed_variant(session: Session, name: str) -> CatalogVariant | None:
    return session.scalars(
        select(CatalogVariant).where(CatalogVariant.org_id.is_(None), CatalogVariant.name == name)
    ).one_or_none()


def catalog_version(session: Session, variant_uid: str, version: str) -> CatalogVersion | None:
    return session.scalars(
        select(CatalogVersion).where(
            CatalogVersion.variant_id == variant_uid, CatalogVersion.version == version
        )
    ).one_or_none()


def total_size(session: Session, catalog_version_uid: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(ArtifactResource.size_bytes), 0))
            .join(ArtifactPackage, ArtifactPackage.id == ArtifactResource.package_id)
            .where(ArtifactPackage.catalog_version_id == catalog_version_uid)
        )
        or 0
    )


def packages_of_model_version(session: Session, version_uid: str) -> list[ArtifactPackage]:
    """Every package (resources loaded) of the catalog versions linked to a model version."""
    return list(
        session.scalars(
            select(ArtifactPackage)
            .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
            .where(CatalogVersion.model_version_id == version_uid)
            .order_by(ArtifactPackage.created_at, ArtifactPackage.id)
            .options(selectinload(ArtifactPackage.resources))
        )
    )


def resource_in_scope(
    session: Session, org_id: str, uid: str
) -> tuple[ArtifactResource, ArtifactPackage, CatalogVersion, CatalogVariant] | None:
    """A resource the org can see (its own variants' or a blessed one's), with its parents."""
    row = session.execute(
        select(ArtifactResource, ArtifactPackage, CatalogVersion, CatalogVariant)
        .join(ArtifactPackage, ArtifactPackage.id == ArtifactResource.package_id)
        .join(CatalogVersion, CatalogVersion.id == ArtifactPackage.catalog_version_id)
        .join(CatalogVariant, CatalogVariant.id == CatalogVersion.variant_id)
        .where(
            ArtifactResource.id == uid,
            (CatalogVariant.org_id.is_(None)) | (CatalogVariant.org_id == org_id),
        )
    ).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2], row[3]


def upload_session(session: Session, org_id: str, upload_id: str) -> UploadSession | None:
    return session.scalars(
        select(UploadSession).where(UploadSession.org_id == org_id, UploadSession.id == upload_id)
    ).one_or_none()


def upload_session_for_update(
    session: Session, org_id: str, upload_id: str
) -> UploadSession | None:
    return session.scalars(
        select(UploadSession)
        .where(UploadSession.org_id == org_id, UploadSession.id == upload_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def upload_session_exists(session: Session, upload_id: str) -> bool:
    """Whether any org has an upload with this id (ids are global primary keys)."""
    return session.get(UploadSession, upload_id) is not None
