"""domain.manifest.ManifestData -> protobuf (GetManifestResponse, ManifestEntry), and the
manifest's content etag.

This runs for every model of an org on a full build (10,000+ entries), so it fills
sub-messages in place instead of constructing and copying them, and converts timestamps
with integer arithmetic. Field semantics match server/convert.py's variant/package/
resource converters; tests compare the two.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from domain import manifest
from domain.etags import etag_of
from modelregistry.v1 import catalog_pb2, manifest_pb2
from modelregistry.v1 import model_service_pb2 as pb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ACTIVE = catalog_pb2.CatalogVersion.STATE_ACTIVE
_STATES = {
    "active": catalog_pb2.CatalogVersion.STATE_ACTIVE,
    "deprecated": catalog_pb2.CatalogVersion.STATE_DEPRECATED,
}


def _dt(value: str | datetime) -> datetime:
    """A raw timestamp (storage.repos.catalog._raw): ISO text in naive UTC, or a datetime."""
    return datetime.fromisoformat(value) if type(value) is str else value  # type: ignore[return-value]


def _ts(msg: timestamp_pb2.Timestamp, value: str | datetime) -> None:
    dt = _dt(value)
    delta = dt - (_NAIVE_EPOCH if dt.tzinfo is None else _EPOCH)
    msg.seconds = delta.days * 86_400 + delta.seconds
    msg.nanos = delta.microseconds * 1000


def _etag_revision(value: str | datetime) -> int:
    """As domain.catalog.variant_etag_revision / convert.variant compute it."""
    dt = _dt(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _json(value: Any) -> Any:
    if type(value) is str:
        return None if value in ("[]", "{}") else json.loads(value)
    return value


def _fill(entry: manifest_pb2.ManifestEntry, data: manifest.ManifestData, name: str) -> None:
    entry.model_id = name
    model = data.models.get(name)
    if model is not None:
        entry.model = f"models/{name}"
        entry.enabled = model.enabled
    else:
        entry.enabled = True
    variant = data.variants.get(name)
    versions = data.versions.get(variant.id, []) if variant is not None else []
    framework = manifest.framework_of(model, versions, data.packages)
    if framework:
        entry.framework = framework
    if variant is None:
        return
    vid = variant.id
    v = entry.variant
    v.name = f"variants/{vid}"
    v.uid = vid
    v.model_id = name
    v.blessed = variant.org_id is None
    if variant.family:
        v.family = variant.family
    taxonomy = _json(variant.task_taxonomy)
    if taxonomy:
        v.task_taxonomy.extend(taxonomy)
    if variant.parameter_count:
        v.parameter_count = variant.parameter_count
    if variant.license:
        v.license = variant.license
    if variant.description:
        v.description = variant.description
    _ts(v.create_time, variant.created_at)
    _ts(v.update_time, variant.updated_at)
    v.etag = etag_of(vid, _etag_revision(variant.updated_at))
    latest = manifest.latest_active(versions)
    if latest is not None:
        entry.latest_version = latest.version
    packages = data.packages
    resources = data.resources
    for cv in versions:
        mv = entry.versions.add()
        mv.version_id = cv.version
        version_name = f"variants/{vid}/versions/{cv.id}"
        mv.catalog_version = version_name
        mv.state = _STATES[cv.lifecycle]
        for p in packages.get(cv.id, ()):
            pm = mv.packages.add()
            package_name = f"{version_name}/packages/{p.id}"
            pm.name = package_name
            pm.uid = p.id
            pm.format = p.format
            pm.quantization = p.quantization
            if p.runtime:
                pm.runtime = p.runtime
            pm.source = p.source
            metrics = _json(p.metrics)
            if metrics:
                pm.metrics.update(metrics)
            else:
                pm.metrics.SetInParent()  # as convert.package: present, empty
            _ts(pm.create_time, p.created_at)
            for r in resources.get(p.id, ()):
                rm = pm.resources.add()
                rm.name = f"{package_name}/resources/{r.id}"
                rm.uid = r.id
                rm.kind = r.kind
                rm.file_name = r.file_name
                if r.size_bytes:
                    rm.size_bytes = r.size_bytes
                if r.sha256:
                    rm.sha256 = r.sha256
                rm.required = r.required
                if r.load_order:
                    rm.load_order = r.load_order
                rm.stored = bool(r.stored)
                _ts(rm.create_time, r.created_at)


def entry(data: manifest.ManifestData, name: str) -> manifest_pb2.ManifestEntry:
    out = manifest_pb2.ManifestEntry()
    _fill(out, data, name)
    return out


@dataclass(frozen=True)
class Built:
    """A built manifest, and per entry the rows it was built from and the sha256 of its
    deterministic serialization, so the next build can reuse what did not change."""

    response: pb.GetManifestResponse
    index: dict[str, tuple[tuple[Any, ...], bytes]]

    @property
    def etag(self) -> str:
        return self.response.etag


def signature(data: manifest.ManifestData, name: str) -> tuple[Any, ...]:
    """Every row _fill reads for `name`, in order: equal signatures, equal entries."""
    model = data.models.get(name)
    variant = data.variants.get(name)
    if variant is None:
        return (model,)
    parts: list[Any] = [model, variant]
    packages = data.packages
    resources = data.resources
    for cv in data.versions.get(variant.id, ()):
        parts.append(cv)
        for p in packages.get(cv.id, ()):
            parts.append(p)
            parts.append(tuple(resources.get(p.id, ())))
    return tuple(parts)


def response(
    data: manifest.ManifestData, generated: datetime, previous: Built | None = None
) -> Built:
    """The whole manifest with its content etag (generate_time is not part of it).

    The etag hashes, in name order, each name with the sha256 of its entry's deterministic
    serialization: a pure function of the content, the same on every server. Entries whose
    rows equal those `previous` was built from are copied from it (in C) with their
    digests instead of being filled and hashed again, so a rebuild after a change costs
    little more than loading the rows.
    """
    out = pb.GetManifestResponse()
    models = out.models
    old_index = previous.index if previous is not None else {}
    old_models = previous.response.models if previous is not None else None
    index: dict[str, tuple[tuple[Any, ...], bytes]] = {}
    etag = hashlib.sha256()
    sha256 = hashlib.sha256
    for name in data.names:
        sig = signature(data, name)
        target = models[name]
        old = old_index.get(name)
        if old is not None and old[0] == sig and old_models is not None:
            target.CopyFrom(old_models[name])
            digest = old[1]
        else:
            _fill(target, data, name)
            digest = sha256(target.SerializeToString(deterministic=True)).digest()
        index[name] = (sig, digest)
        encoded = name.encode()
        etag.update(len(encoded).to_bytes(2, "big"))
        etag.update(encoded)
        etag.update(digest)
    out.etag = f"m-{etag.hexdigest()[:32]}"
    _ts(out.generate_time, generated)
    return Built(out, index)
