"""Helpers for upload/download tests: request streams, one-call uploads, and checks that a
failed upload left nothing behind (rows or objects)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from modelregistry.v1 import catalog_pb2
from modelregistry.v1 import version_service_pb2 as vpb
from storage.db import transaction
from storage.objectstore import ObjectStore, open_store
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    Model,
    ModelVersion,
    Org,
    UploadSession,
)
from support.registry import Client, RunningServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 1 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def chunks(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class F:
    """One file of an UploadArtifacts stream."""

    name: str
    data: bytes
    fmt: str = "onnx"
    kind: str = ""
    declare_size: bool = True
    declare_sha: bool = True
    upload_id: str = ""
    write_offset: int = 0
    size: int | None = None  # overrides the declared size
    sha256: str | None = None  # overrides the declared sha256
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> vpb.FileSpec:
        size = self.size if self.size is not None else (len(self.data) if self.declare_size else 0)
        digest = (
            self.sha256 if self.sha256 is not None else (sha(self.data) if self.declare_sha else "")
        )
        return vpb.FileSpec(file_name=self.name, kind=self.kind, size_bytes=size, sha256=digest)


def artifact_requests(
    parent: str, files: Iterable[F], chunk: int = CHUNK
) -> Iterator[vpb.UploadArtifactsRequest]:
    yield vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
    for f in files:
        yield vpb.UploadArtifactsRequest(
            file=vpb.UploadFileHeader(
                file=f.spec(),
                format=f.fmt,
                upload_id=f.upload_id,
                write_offset=f.write_offset,
                **f.extra,
            )
        )
        for piece in chunks(f.data[f.write_offset :], chunk):
            yield vpb.UploadArtifactsRequest(chunk=piece)


def upload(
    c: Client, parent: str, *files: F, chunk: int = CHUNK, timeout: float = 120
) -> vpb.UploadArtifactsResponse:
    return c.versions.UploadArtifacts(artifact_requests(parent, files, chunk), timeout=timeout)


def bundle_header(
    parent: str,
    primary: F,
    extras: list[F],
    *,
    kinds: list[str] | None = None,
    fmt: str = "onnx",
    upload_id: str = "",
    write_offset: int = 0,
) -> vpb.UploadBundleRequest:
    return vpb.UploadBundleRequest(
        header=vpb.UploadBundleHeader(
            parent=parent,
            format=fmt,
            primary=primary.spec(),
            extras=[e.spec() for e in extras],
            extras_kind=kinds if kinds is not None else [e.kind or "sidecar" for e in extras],
            upload_id=upload_id,
            write_offset=write_offset,
        )
    )


def bundle_requests(
    parent: str,
    primary: F,
    extras: list[F],
    *,
    chunk: int = CHUNK,
    write_offset: int = 0,
    **kw: Any,
) -> Iterator[vpb.UploadBundleRequest]:
    yield bundle_header(parent, primary, extras, write_offset=write_offset, **kw)
    data = primary.data + b"".join(e.data for e in extras)
    for piece in chunks(data[write_offset:], chunk):
        yield vpb.UploadBundleRequest(chunk=piece)


def download(
    c: Client, name: str, offset: int = 0, limit: int = 0
) -> tuple[catalog_pb2.ArtifactResource, bytes, int]:
    """(resource metadata, bytes, number of messages)."""
    resource = None
    parts = []
    n = 0
    for msg in c.versions.DownloadArtifact(
        vpb.DownloadArtifactRequest(name=name, read_offset=offset, read_limit=limit), timeout=120
    ):
        n += 1
        if msg.HasField("resource"):
            assert resource is None, "only the first message carries the resource"
            resource = msg.resource
        assert len(msg.data) <= MiB
        parts.append(msg.data)
    assert resource is not None
    return resource, b"".join(parts), n


# --- what an org has, straight from the backends -------------------------------------------


def org_id(registry: RunningServer, c: Client) -> str:
    with transaction(registry._sessions, readonly=True) as s:
        return s.scalars(select(Org.id).where(Org.name == c.org)).one()


def row_counts(registry: RunningServer, c: Client) -> dict[str, int]:
    """The org's rows in every table an upload writes (upload sessions excluded)."""
    oid = org_id(registry, c)
    with transaction(registry._sessions, readonly=True) as s:

        def count(q: Any) -> int:
            return int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)

        own_variants = select(CatalogVariant.id).where(CatalogVariant.org_id == oid)
        cvs = select(CatalogVersion.id).where(CatalogVersion.variant_id.in_(own_variants))
        pkgs = select(ArtifactPackage.id).where(ArtifactPackage.catalog_version_id.in_(cvs))
        return {
            "models": count(select(Model.id).where(Model.org_id == oid)),
            "versions": count(select(ModelVersion.id).join(Model).where(Model.org_id == oid)),
            "variants": count(own_variants),
            "catalog_versions": count(cvs),
            "packages": count(pkgs),
            "resources": count(
                select(ArtifactResource.id).where(ArtifactResource.package_id.in_(pkgs))
            ),
        }


def upload_states(registry: RunningServer, c: Client) -> dict[str, str]:
    oid = org_id(registry, c)
    with transaction(registry._sessions, readonly=True) as s:
        return {
            r.id: r.state
            for r in s.scalars(select(UploadSession).where(UploadSession.org_id == oid))
        }


def store_of(registry: RunningServer) -> ObjectStore:
    return open_store(registry.object_store)


def objects(registry: RunningServer, c: Client) -> list[str]:
    """Complete objects under the org's prefix."""
    prefix = f"orgs/{org_id(registry, c)}/"
    return sorted(o.key for o in store_of(registry).list(prefix))


def incomplete(registry: RunningServer, c: Client) -> list[str]:
    """Unfinished multipart uploads / partial files under the org's prefix."""
    prefix = f"orgs/{org_id(registry, c)}/"
    # MinIO lists multipart uploads by exact key only: list all, filter here.
    return sorted(
        u.key for u in store_of(registry).list_incomplete_uploads() if u.key.startswith(prefix)
    )


def assert_nothing_stored(registry: RunningServer, c: Client) -> None:
    """No artifact rows and no objects (complete or partial) for the org."""
    counts = row_counts(registry, c)
    assert counts == dict.fromkeys(counts, 0), counts
    assert objects(registry, c) == []
    assert incomplete(registry, c) == []


def assert_only_resumable_leftovers(registry: RunningServer, c: Client) -> None:
    """No artifact rows; every object or partial upload left belongs to an upload that is
    still open (resumable; reclaimed by the garbage collector when it expires)."""
    counts = row_counts(registry, c)
    assert counts == dict.fromkeys(counts, 0), counts
    states = upload_states(registry, c)
    for key in objects(registry, c) + incomplete(registry, c):
        upload_id = key.rsplit("/", 2)[1]
        assert states.get(upload_id) == "open", (key, states)
