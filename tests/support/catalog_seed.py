"""SEEDING ONLY: catalog rows written straight through the storage layer.

Compatibility and plan tests need catalog versions whose packages are 1-7 GB (to meet the
device budgets) and that carry conversion metrics. Real uploads of that size are too slow for
the suite (tests/test_compatibility_uploads.py covers small real uploads), and ConvertArtifact
(issue #5) has not landed, so this helper writes the rows directly: a variant for the model's
name (the org's override, or a blessed row), an active catalog version, packages and resource
rows (sizes only; no bytes are stored). Switch the measured-plan test to ConvertArtifact once
it is available.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from domain import names
from storage.db import create_engine_for, session_factory, transaction
from storage.orm import ArtifactPackage, ArtifactResource, CatalogVariant, CatalogVersion, Org

_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}


def _sessions(database_url: str) -> sessionmaker[Session]:
    if database_url not in _engines:
        engine = create_engine_for(database_url, pool_size=2)
        _engines[database_url] = (engine, session_factory(engine))
    return _engines[database_url][1]


@dataclass(frozen=True)
class SeedPackage:
    format: str
    size_bytes: int
    quantization: str = "none"
    runtime: str = ""
    source: str = "upload"
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeededVersion:
    variant_uid: str
    version_uid: str
    packages: list[str]  # resource names, in the order given

    @property
    def name(self) -> str:
        return names.catalog_version_name(self.variant_uid, self.version_uid)


def _org_id(session: Session, org: str) -> str:
    return session.scalars(select(Org.id).where(Org.name == org)).one()


_clock = datetime.now(UTC)


def _tick() -> datetime:
    """Strictly increasing creation times, so 'latest' never depends on clock resolution."""
    global _clock
    _clock = max(_clock + timedelta(milliseconds=1), datetime.now(UTC))
    return _clock


def _add_package(session: Session, version: CatalogVersion, p: SeedPackage) -> str:
    pkg = ArtifactPackage(
        catalog_version_id=version.id,
        format=p.format,
        quantization=p.quantization,
        runtime=p.runtime,
        source=p.source,
        metrics=dict(p.metrics),
        created_at=_tick(),
    )
    session.add(pkg)
    session.flush()
    session.add(
        ArtifactResource(
            package_id=pkg.id,
            kind="weights",
            file_name=f"model.{p.format}",
            storage_key=f"seed/{uuid.uuid4().hex}",
            size_bytes=p.size_bytes,
            sha256="0" * 64,
        )
    )
    return names.package_name(version.variant_id, version.id, pkg.id)


def seed_version(
    database_url: str,
    org: str | None,
    model_id: str,
    packages: list[SeedPackage],
    *,
    version: str = "",
    lifecycle: str = "active",
) -> SeededVersion:
    """A new catalog version (with packages) of the variant named `model_id`: the org's
    override when `org` is given, else a blessed variant. The variant is created if needed."""
    with transaction(_sessions(database_url)) as session:
        org_id = _org_id(session, org) if org else None
        variant = session.scalars(
            select(CatalogVariant).where(
                CatalogVariant.name == model_id,
                CatalogVariant.org_id.is_(None)
                if org_id is None
                else CatalogVariant.org_id == org_id,
            )
        ).one_or_none()
        if variant is None:
            variant = CatalogVariant(org_id=org_id, name=model_id)
            session.add(variant)
            session.flush()
        cv = CatalogVersion(
            variant_id=variant.id,
            version=version or f"v{uuid.uuid4().hex[:8]}",
            lifecycle=lifecycle,
            created_at=_tick(),
            deprecated_at=_tick() if lifecycle == "deprecated" else None,
        )
        session.add(cv)
        session.flush()
        pkg_names = [_add_package(session, cv, p) for p in packages]
        return SeededVersion(variant.id, cv.id, pkg_names)


def add_package(database_url: str, seeded: SeededVersion, package: SeedPackage) -> str:
    """Add a package to an existing catalog version (as a conversion would)."""
    with transaction(_sessions(database_url)) as session:
        cv = session.get(CatalogVersion, seeded.version_uid)
        assert cv is not None
        return _add_package(session, cv, package)


def deprecate(database_url: str, seeded: SeededVersion) -> None:
    with transaction(_sessions(database_url)) as session:
        cv = session.get(CatalogVersion, seeded.version_uid)
        assert cv is not None
        cv.lifecycle = "deprecated"
        cv.deprecated_at = datetime.now(UTC)
