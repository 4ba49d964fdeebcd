"""Constraints the database enforces: cascades, SET NULL, uniqueness, JSON round trips."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ConversionEvent,
    ConversionJob,
    InferenceSession,
    Model,
    ModelVersion,
    OptimizedConfig,
    Org,
    TrainingUpdate,
)
from storage.repos.telemetry import session_scope


def count(session: Session, entity: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(entity)) or 0


def make_org(factory: sessionmaker[Session], name: str = "acme") -> str:
    with transaction(factory) as session:
        org = Org(name=name)
        session.add(org)
    return org.id


def make_uploaded_version(factory: sessionmaker[Session], org_id: str) -> dict[str, str]:
    """A model with one version whose upload created a catalog version, package, resource."""
    with transaction(factory) as session:
        model = Model(org_id=org_id, model_id="resnet", framework="onnx", tags=["vision"])
        version = ModelVersion(
            org_id=model.org_id, model=model, version="1.0", labels={"stage": "dev"}
        )
        variant = CatalogVariant(org_id=org_id, name="resnet", task_taxonomy=["vision"])
        cversion = CatalogVersion(variant=variant, version="1.0", model_version=version)
        package = ArtifactPackage(catalog_version=cversion, format="onnx", metrics={"x": 1})
        resource = ArtifactResource(
            package=package, kind="weights", file_name="model.onnx", storage_key="k", size_bytes=3
        )
        config = OptimizedConfig(org_id=org_id, model=model, device_type="pixel8", revision=1)
        job = ConversionJob(org_id=org_id, model_id="resnet", version="1.0", targets=["ort"])
        session.add_all([model, variant, config, job])
        session.flush()
        job.source_resource_id = resource.id
        session.add(ConversionEvent(job=job, seq=1, stage="queued"))
    return {
        "model": model.id,
        "version": version.id,
        "variant": variant.id,
        "job": job.id,
        "resource": resource.id,
    }


def orm_delete(session: Session, ids: dict[str, str]) -> None:
    model = session.get(Model, ids["model"])
    assert model is not None
    session.delete(model)


def bulk_delete(session: Session, ids: dict[str, str]) -> None:
    session.execute(delete(Model).where(Model.id == ids["model"]))


@pytest.mark.parametrize("remove", [orm_delete, bulk_delete], ids=["orm", "bulk"])
def test_deleting_a_model_cascades_to_everything_it_produced(
    factory: sessionmaker[Session], remove: Callable[[Session, dict[str, str]], None]
) -> None:
    org_id = make_org(factory)
    ids = make_uploaded_version(factory, org_id)
    with transaction(factory) as session:
        remove(session, ids)
    with factory() as session:
        for entity in (
            Model,
            ModelVersion,
            CatalogVersion,
            ArtifactPackage,
            ArtifactResource,
            OptimizedConfig,
        ):
            assert count(session, entity) == 0, entity.__name__
        # The variant is the org's catalog entry, not part of the model: it stays.
        assert session.get(CatalogVariant, ids["variant"]) is not None
        # Conversion history outlives the artifact it converted.
        job = session.get(ConversionJob, ids["job"])
        assert job is not None
        assert job.source_resource_id is None
        assert count(session, ConversionEvent) == 1


def test_deleting_a_version_keeps_the_model(factory: sessionmaker[Session]) -> None:
    ids = make_uploaded_version(factory, make_org(factory))
    with transaction(factory) as session:
        session.execute(delete(ModelVersion).where(ModelVersion.id == ids["version"]))
    with factory() as session:
        assert count(session, Model) == 1
        assert count(session, CatalogVersion) == count(session, ArtifactResource) == 0


def test_deleting_an_org_removes_all_its_data(factory: sessionmaker[Session]) -> None:
    org_id = make_org(factory)
    make_uploaded_version(factory, org_id)
    with transaction(factory) as session:
        session.execute(delete(Org).where(Org.id == org_id))
    with factory() as session:
        for entity in (Model, CatalogVariant, ConversionJob, ConversionEvent, OptimizedConfig):
            assert count(session, entity) == 0, entity.__name__


def test_deleting_an_org_removes_its_raw_sessions(factory: sessionmaker[Session]) -> None:
    # inference_sessions has no foreign key to orgs (migration 0010): a trigger on orgs
    # deletes them instead.
    acme, globex = make_org(factory, "acme"), make_org(factory, "globex")
    with transaction(factory) as session:
        for org_id in (acme, globex):
            for i in range(3):
                session.add(
                    InferenceSession(
                        org_id=org_id,
                        event_id=f"e{i}",
                        model_id="m",
                        scope=session_scope(org_id, "m"),
                        version="1.0",
                        device_id="d",
                        occurred_at=datetime.now(UTC),
                        latency_ms=1.0,
                    )
                )
    with transaction(factory) as session:
        session.execute(delete(Org).where(Org.id == acme))
    with factory() as session:
        left = session.scalars(select(InferenceSession.org_id)).all()
    assert left == [globex] * 3


def test_blessed_variant_names_are_unique(factory: sessionmaker[Session]) -> None:
    acme, globex = make_org(factory, "acme"), make_org(factory, "globex")
    with transaction(factory) as session:
        session.add(CatalogVariant(org_id=None, name="llama"))
        # Overrides of a blessed name, one per org, are what resolution is about.
        session.add(CatalogVariant(org_id=acme, name="llama"))
        session.add(CatalogVariant(org_id=globex, name="llama"))
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(CatalogVariant(org_id=None, name="llama"))
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(CatalogVariant(org_id=acme, name="llama"))
    with factory() as session:
        assert count(session, CatalogVariant) == 3


def test_model_slugs_are_unique_per_org(factory: sessionmaker[Session]) -> None:
    acme, globex = make_org(factory, "acme"), make_org(factory, "globex")
    with transaction(factory) as session:
        session.add_all([Model(org_id=acme, model_id="m"), Model(org_id=globex, model_id="m")])
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(Model(org_id=acme, model_id="m"))


def test_check_constraints_reject_unknown_states(factory: sessionmaker[Session]) -> None:
    org_id = make_org(factory)
    with pytest.raises(IntegrityError), transaction(factory) as session:
        model = Model(org_id=org_id, model_id="m")
        session.add(
            ModelVersion(org_id=model.org_id, model=model, version="1", lifecycle_status="archived")
        )


def test_json_columns_round_trip(factory: sessionmaker[Session]) -> None:
    org_id = make_org(factory)
    with transaction(factory) as session:
        update = TrainingUpdate(
            org_id=org_id,
            event_id="e1",
            model_id="m",
            version="1",
            device_id="d",
            sample_count=5,
            metrics={"loss": 0.25, "accuracy": 0.9},
            occurred_at=datetime.now(UTC),
        )
        session.add(update)
    with factory() as session:
        loaded = session.scalars(select(TrainingUpdate)).one()
        assert loaded.metrics == {"loss": 0.25, "accuracy": 0.9}
        assert len(loaded.id) == 36
