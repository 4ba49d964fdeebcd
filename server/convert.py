"""Domain/ORM objects -> protobuf messages (and request timestamps -> datetimes). Pure
functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from domain import names
from domain.compatibility import CompatibilityResult
from domain.errors import InvalidArgument
from domain.etags import etag_of
from domain.models import ModelView
from domain.optimization_plans import Option, PlanResult
from domain.optimized_configs import ConfigView
from domain.versions import ModelVersionView
from modelregistry.v1 import catalog_pb2, compatibility_pb2, model_service_pb2, models_pb2
from storage import orm

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # naive: UTC, as Timestamp.FromDatetime takes it
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(value)
        return ts
    # What FromDatetime gives for an aware datetime, in a third of the time (every row
    # of every response has two or three of these).
    since = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


# What Timestamp allows (google/protobuf/timestamp.proto): 0001-01-01 to 9999-12-31.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def request_time(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A request's Timestamp as an aware UTC datetime; InvalidArgument on `field` when it
    is outside what a Timestamp may hold (years 1 to 9999, nanos below a second), which
    the protobuf library cannot convert."""
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument.field(
            field, "must be a valid timestamp (years 1 to 9999, nanos 0 to 999,999,999)"
        )
    return ts.ToDatetime(tzinfo=UTC)


def model(view: ModelView) -> models_pb2.Model:
    m = view.model
    return models_pb2.Model(
        name=names.model_name(m.model_id),
        uid=m.id,
        model_id=m.model_id,
        framework=m.framework,
        description=m.description,
        tags=list(m.tags),
        enabled=m.enabled,
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
        etag=etag_of(m.id, m.revision),
        version_count=view.version_count,
    )


def model_version(v: ModelVersionView) -> models_pb2.ModelVersion:
    mv = v.version
    return models_pb2.ModelVersion(
        name=names.version_name(v.model_id, mv.version),
        uid=mv.id,
        version_id=mv.version,
        state=_VERSION_STATES[mv.lifecycle_status],
        description=mv.description,
        labels={str(k): str(val) for k, val in mv.labels.items()},
        create_time=timestamp(mv.created_at),
        update_time=timestamp(mv.updated_at),
        publish_time=timestamp(mv.published_at),
        catalog_version=(
            names.catalog_version_name(v.catalog_variant_id, v.catalog_version_id)
            if v.catalog_variant_id and v.catalog_version_id
            else ""
        ),
        etag=etag_of(mv.id, int(mv.updated_at.timestamp() * 1_000_000)),
    )


def variant(v: orm.CatalogVariant) -> catalog_pb2.Variant:
    return catalog_pb2.Variant(
        name=names.variant_name(v.id),
        uid=v.id,
        model_id=v.name,
        blessed=v.org_id is None,
        family=v.family,
        task_taxonomy=list(v.task_taxonomy),
        parameter_count=v.parameter_count or 0,
        license=v.license,
        description=v.description,
        create_time=timestamp(v.created_at),
        update_time=timestamp(v.updated_at),
        etag=etag_of(v.id, int(v.updated_at.timestamp() * 1_000_000)),
    )


def catalog_version(
    cv: orm.CatalogVersion, total_size_bytes: int = 0, model_version_name: str = ""
) -> catalog_pb2.CatalogVersion:
    return catalog_pb2.CatalogVersion(
        name=names.catalog_version_name(cv.variant_id, cv.id),
        uid=cv.id,
        version_id=cv.version,
        state=_CATALOG_STATES[cv.lifecycle],
        model_version=model_version_name,
        total_size_bytes=total_size_bytes,
        create_time=timestamp(cv.created_at),
        deprecate_time=timestamp(cv.deprecated_at),
    )


def package(p: orm.ArtifactPackage, variant_id: str) -> catalog_pb2.ArtifactPackage:
    """`p.resources` must be loaded (selectinload) before the session closed."""
    metrics = struct_pb2.Struct()
    metrics.update(p.metrics or {})
    return catalog_pb2.ArtifactPackage(
        name=names.package_name(variant_id, p.catalog_version_id, p.id),
        uid=p.id,
        format=p.format,
        quantization=p.quantization,
        runtime=p.runtime,
        source=p.source,
        metrics=metrics,
        resources=[resource(r, variant_id, p.catalog_version_id) for r in p.resources],
        create_time=timestamp(p.created_at),
    )


def resource(
    r: orm.ArtifactResource, variant_id: str, version_id: str
) -> catalog_pb2.ArtifactResource:
    return catalog_pb2.ArtifactResource(
        name=names.resource_name(variant_id, version_id, r.package_id, r.id),
        uid=r.id,
        kind=r.kind,
        file_name=r.file_name,
        size_bytes=r.size_bytes,
        sha256=r.sha256 or "",
        required=r.required,
        load_order=r.load_order,
        stored=r.storage_key is not None,
        create_time=timestamp(r.created_at),
    )


_VERSION_STATES = {
    "draft": models_pb2.ModelVersion.STATE_DRAFT,
    "published": models_pb2.ModelVersion.STATE_PUBLISHED,
}
_CATALOG_STATES = {
    "active": catalog_pb2.CatalogVersion.STATE_ACTIVE,
    "deprecated": catalog_pb2.CatalogVersion.STATE_DEPRECATED,
}


def _provenance(measured: bool) -> compatibility_pb2.Provenance.ValueType:
    return (
        compatibility_pb2.PROVENANCE_MEASURED
        if measured
        else compatibility_pb2.PROVENANCE_ESTIMATED
    )


def compatibility(r: CompatibilityResult) -> model_service_pb2.CheckCompatibilityResponse:
    return model_service_pb2.CheckCompatibilityResponse(
        catalog_version=r.catalog_version,
        framework=r.framework,
        results=[
            compatibility_pb2.DeviceCompatibility(
                device_profile=d.device_profile,
                compatible=d.compatible,
                recommended_package=d.recommended_package,
                reasons=[
                    compatibility_pb2.IncompatibilityReason(
                        code=x.code,
                        package=x.package,
                        message=x.message,
                        suggested_fix=x.suggested_fix,
                    )
                    for x in d.reasons
                ],
            )
            for d in r.results
        ],
    )


def optimization_option(o: Option) -> compatibility_pb2.OptimizationOption:
    return compatibility_pb2.OptimizationOption(
        format=o.format,
        quantization=o.quantization,
        expected_size_bytes=int(o.size.value),
        expected_max_abs_error=o.max_abs_error.value,
        expected_latency_ms=o.latency_ms.value,
        size_provenance=_provenance(o.size.measured),
        accuracy_provenance=_provenance(o.max_abs_error.measured),
        latency_provenance=_provenance(o.latency_ms.measured),
        estimate_rule=o.estimate_rule,
        package=o.package,
        feasible=o.feasible,
        infeasible_reasons=o.infeasible_reasons,
    )


def optimization_plan(r: PlanResult) -> model_service_pb2.GetOptimizationPlanResponse:
    return model_service_pb2.GetOptimizationPlanResponse(
        catalog_version=r.catalog_version,
        source_size_bytes=r.source_size_bytes,
        plans=[
            compatibility_pb2.DeviceOptimizationPlan(
                device_profile=p.device_profile,
                recommended=optimization_option(p.recommended) if p.recommended else None,
                alternatives=[optimization_option(o) for o in p.alternatives],
            )
            for p in r.plans
        ],
    )


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """Like json_format.MessageToDict, but keeps NaN/Infinity for the domain to reject."""
    return {k: _value(v) for k, v in s.fields.items()}


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None


def optimized_config(v: ConfigView) -> compatibility_pb2.OptimizedConfig:
    config = struct_pb2.Struct()
    config.update(v.config)
    return compatibility_pb2.OptimizedConfig(
        name=names.optimized_config_name(v.model_id, v.device_type),
        config=config,
        revision=v.revision,
        create_time=timestamp(v.created_at),
    )
