"""domain.manifest.ManifestData -> protobuf (GetManifestResponse, ManifestEntry), and the
manifest's content etag.

This runs for every model of an org on a full build (10,000+ entries), so it fills
sub-messages in place instead of constructing and copying them, and converts timestamps
with integer arithmetic. Field semantics match server/convert.py's variant/package/
resource converters; tests compare the two.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from domain import manifest
from domain.etags import etag_of
from modelregistry.v1 import catalog_pb2, manifest_pb2
from modelregistry.v1 import model_service_pb2 as pb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACTIVE = catalog_pb2.CatalogVersion.STATE_ACTIVE
_STATES = {
    "active": catalog_pb2.CatalogVersion.STATE_ACTIVE,
    "deprecated": catalog_pb2.CatalogVersion.STATE_DEPRECATED,
}


def _ts(msg: timestamp_pb2.Timestamp, value: datetime) -> None:
    delta = value - _EPOCH
    msg.seconds = delta.days * 86_400 + delta.seconds
    msg.nanos = delta.microseconds * 1000


def _micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


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
    if variant.task_taxonomy:
        v.task_taxonomy.extend(variant.task_taxonomy)
    if variant.parameter_count:
        v.parameter_count = variant.parameter_count
    if variant.license:
        v.license = variant.license
    if variant.description:
        v.description = variant.description
    _ts(v.create_time, variant.created_at)
    _ts(v.update_time, variant.updated_at)
    v.etag = etag_of(vid, _micros(variant.updated_at))
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
            if p.metrics:
                pm.metrics.update(p.metrics)
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


def response(data: manifest.ManifestData, generated: datetime) -> pb.GetManifestResponse:
    """The whole manifest with its content etag (generate_time is not part of it)."""
    out = pb.GetManifestResponse()
    models = out.models
    for name in data.names:
        _fill(models[name], data, name)
    out.etag = content_etag(out)
    _ts(out.generate_time, generated)
    return out


def content_etag(message: Any) -> str:
    """Strong etag of a manifest: a hash of its deterministic serialization."""
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    return f"m-{digest[:32]}"
