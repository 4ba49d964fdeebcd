"""Catalog rows for tests, written straight to the server's database.

Uploads (VersionService) are what create catalog versions, packages and resources under an
org's own variant; these helpers stand in for them (and for `catalog import` under blessed
variants) and bump the same revision counters those writes bump, in the same transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import field_mask_pb2

from modelregistry.v1 import catalog_pb2
from modelregistry.v1 import catalog_service_pb2 as cpb
from storage.db import create_engine_for, session_factory, transaction
from storage.orm import ArtifactPackage, ArtifactResource, CatalogVariant, CatalogVersion
from storage.repos import catalog as catalog_repo
from storage.repos import tenancy
from support.registry import Client, RunningServer


@dataclass
class Res:
    file_name: str = "model.onnx"
    kind: str = "weights"
    storage_key: str | None = None
    data: bytes | None = None  # stored under storage_key when given (see CatalogDb.store)
    size_bytes: int = 0
    sha256: str | None = None
    required: bool = True
    load_order: int = 0


@dataclass
class Pkg:
    format: str = "onnx"
    quantization: str = "none"
    runtime: str = "onnxruntime"
    resources: list[Res] = field(default_factory=lambda: [Res()])


class CatalogDb:
    def __init__(self, registry: RunningServer) -> None:
        self.registry = registry
        self.engine = create_engine_for(registry.database_url, pool_size=2)
        self.sessions = session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def add_version(
        self,
        variant_uid: str,
        version: str,
        packages: list[Pkg] | None = None,
        lifecycle: str = "active",
    ) -> str:
        """A catalog version with packages and resources; returns its resource name."""
        store = self.registry.server.runtime.store
        with transaction(self.sessions) as session:
            variant = session.get(CatalogVariant, variant_uid)
            assert variant is not None
            cv = CatalogVersion(variant_id=variant_uid, version=version, lifecycle=lifecycle)
            session.add(cv)
            session.flush()
            for p in packages or []:
                package = ArtifactPackage(
                    catalog_version_id=cv.id,
                    format=p.format,
                    quantization=p.quantization,
                    runtime=p.runtime,
                    source="upload",
                )
                session.add(package)
                session.flush()
                for r in p.resources:
                    size, sha = r.size_bytes, r.sha256
                    if r.data is not None:
                        assert r.storage_key is not None
                        size, sha = store.put(r.storage_key, r.data)
                    session.add(
                        ArtifactResource(
                            package_id=package.id,
                            kind=r.kind,
                            file_name=r.file_name,
                            storage_key=r.storage_key,
                            size_bytes=size,
                            sha256=sha,
                            required=r.required,
                            load_order=r.load_order,
                        )
                    )
            if variant.org_id is None:
                catalog_repo.bump_catalog_revision(session)
            else:
                tenancy.bump_org_revision(session, variant.org_id)
            return f"variants/{variant_uid}/versions/{cv.id}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create_variant(
    c: Client, model_id: str, *, blessed: bool = False, **fields: Any
) -> catalog_pb2.Variant:
    return c.catalog.CreateVariant(
        cpb.CreateVariantRequest(
            variant=catalog_pb2.Variant(model_id=model_id, **fields), blessed=blessed
        )
    )


def update_variant(c: Client, name: str, paths: list[str], **fields: Any) -> catalog_pb2.Variant:
    return c.catalog.UpdateVariant(
        cpb.UpdateVariantRequest(
            variant=catalog_pb2.Variant(name=name, **fields),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
    )
