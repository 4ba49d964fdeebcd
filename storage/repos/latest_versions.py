"""The latest active catalog version of a variant and its packages (compatibility checks
and optimization plans read these)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from storage.orm import ArtifactPackage, CatalogVersion


def latest_active(session: Session, variant_id: str) -> CatalogVersion | None:
    """The newest `active` version of the variant (by creation time, then id)."""
    return session.scalars(
        select(CatalogVersion)
        .where(CatalogVersion.variant_id == variant_id, CatalogVersion.lifecycle == "active")
        .order_by(CatalogVersion.created_at.desc(), CatalogVersion.id.desc())
        .limit(1)
    ).one_or_none()


def version_count(session: Session, variant_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(CatalogVersion)
            .where(CatalogVersion.variant_id == variant_id)
        )
        or 0
    )


def packages_with_resources(session: Session, catalog_version_id: str) -> list[ArtifactPackage]:
    return list(
        session.scalars(
            select(ArtifactPackage)
            .where(ArtifactPackage.catalog_version_id == catalog_version_id)
            .options(selectinload(ArtifactPackage.resources))
            .order_by(ArtifactPackage.created_at, ArtifactPackage.id)
        )
    )
