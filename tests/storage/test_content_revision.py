"""catalog_variants.content_revision (migration 0008's triggers): every insert, update and
delete of a catalog version, package or resource bumps its variant's revision in the same
transaction, whoever writes it (ORM, Core, cascades); nothing else does."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    Model,
    ModelVersion,
    Org,
)


def revision(factory: sessionmaker[Session], variant_id: str) -> int:
    with transaction(factory, readonly=True) as session:
        value = session.scalar(
            select(CatalogVariant.content_revision).where(CatalogVariant.id == variant_id)
        )
    assert value is not None
    return value


def test_every_write_under_a_variant_bumps_it_and_only_it(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        org = Org(name="acme")
        session.add(org)
        session.flush()
        model = Model(org_id=org.id, model_id="resnet", framework="onnx")
        mv = ModelVersion(org_id=model.org_id, model=model, version="1.0")
        variant = CatalogVariant(org_id=org.id, name="resnet")
        bystander = CatalogVariant(org_id=None, name="other-blessed")
        session.add_all([model, mv, variant, bystander])
    vid, other = variant.id, bystander.id
    assert revision(factory, vid) == 0 and revision(factory, other) == 0

    def bumps(write: Callable[[Session], object]) -> None:
        before = revision(factory, vid)
        with transaction(factory) as session:
            write(session)
        assert revision(factory, vid) > before
        assert revision(factory, other) == 0

    ids: dict[str, str] = {}

    def add_version(session: Session) -> None:
        cv = CatalogVersion(variant_id=vid, version="1.0", model_version_id=mv.id)
        session.add(cv)
        session.flush()
        ids["cv"] = cv.id

    def add_package(session: Session) -> None:
        p = ArtifactPackage(catalog_version_id=ids["cv"], format="onnx")
        session.add(p)
        session.flush()
        ids["package"] = p.id

    def add_resource(session: Session) -> None:
        r = ArtifactResource(package_id=ids["package"], kind="weights", file_name="m.onnx")
        session.add(r)
        session.flush()
        ids["resource"] = r.id

    bumps(add_version)
    bumps(add_package)
    bumps(add_resource)
    bumps(lambda s: s.execute(update(CatalogVersion).values(lifecycle="deprecated")))
    bumps(lambda s: s.execute(update(ArtifactPackage).values(metrics={"latency_ms": 3})))
    bumps(lambda s: s.execute(update(ArtifactResource).values(storage_key="k", size_bytes=9)))
    bumps(lambda s: s.execute(delete(ArtifactResource)))
    bumps(add_resource)
    bumps(lambda s: s.execute(delete(ArtifactPackage)))  # cascades to its resource
    bumps(add_package)
    bumps(add_resource)
    # Deleting the model version cascades in the database to the catalog version, its
    # package and resource (DeleteVersion / DeleteModel).
    bumps(lambda s: s.execute(delete(ModelVersion).where(ModelVersion.id == mv.id)))
    with transaction(factory, readonly=True) as session:
        assert session.scalar(select(CatalogVersion.id)) is None


def test_the_variants_own_fields_leave_it_alone(factory: sessionmaker[Session]) -> None:
    """Those change updated_at, the other half of the manifest's key."""
    with transaction(factory) as session:
        variant = CatalogVariant(org_id=None, name="blessed-one")
        session.add(variant)
    with transaction(factory) as session:
        row = session.get(CatalogVariant, variant.id)
        assert row is not None
        before = row.updated_at
        row.description = "new"
    assert revision(factory, variant.id) == 0
    with transaction(factory, readonly=True) as session:
        row = session.get(CatalogVariant, variant.id)
        assert row is not None and row.updated_at > before
