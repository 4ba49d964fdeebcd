"""Cross-org authorization matrix: every RPC of every service (enumerated from the
descriptors, so a new RPC without an entry here fails `test_every_rpc_has_cases`) is called
with another org's key and the first org's resource names and ids: models, versions by name
and by uid, the org's variant (override), catalog versions, packages and resources (by full
and wildcard names), upload ids (finished and still open), conversion jobs, optimized
configs, telemetry event and device ids.

Expected: NOT_FOUND (or the documented code), never another org's data in any response or
error (the org's uids, sha256s, storage keys and marker strings are searched for in every
answer, less what the request itself named), and the owner's data unchanged afterwards.
Blessed-catalog writes with a non-admin key answer PERMISSION_DENIED.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, field_mask_pb2, message_factory, struct_pb2, text_format
from test_auth_matrix import METHODS

from modelregistry.v1 import (
    catalog_pb2,
    catalog_service_pb2,
    compatibility_pb2,
    conversion_pb2,
    models_pb2,
)
from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import telemetry_service_pb2 as tpb
from modelregistry.v1 import version_service_pb2 as vpb
from support import onnx_models
from support.catalog import CatalogDb, Pkg, Res
from support.registry import Client, RunningServer
from support.status import rich
from support.telemetry import now, ts
from support.uploads import F, artifact_requests, sha, upload

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

JobState = conversion_pb2.ConversionJob


def path_of(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def invoke(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, key: str, request: Any
) -> tuple[grpc.StatusCode, list[Any], str]:
    """Call `method` with `request` (a list of messages for client streams): (code,
    responses, everything the answer said as text: messages, error message, details)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    metadata = [("authorization", f"Bearer {key}")]
    path = path_of(method)
    responses: list[Any] = []
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(path, **kwargs)
            for r in call(iter(request), metadata=metadata, timeout=60):
                responses.append(r)
        elif method.client_streaming:
            responses.append(
                channel.stream_unary(path, **kwargs)(iter(request), metadata=metadata, timeout=60)
            )
        elif method.server_streaming:
            for r in channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=60):
                responses.append(r)
        else:
            responses.append(
                channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=60)
            )
    except grpc.RpcError as err:
        details = rich(err)
        text = "\n".join(
            [text_format.MessageToString(r) for r in responses]
            + [details.message, details.reason, repr(details.metadata)]
            + [repr(details.field_violations), repr(details.precondition_violations)]
        )
        assert details.reason, f"{path}: every error carries an ErrorInfo"
        return details.code, responses, text
    return OK, responses, "\n".join(text_format.MessageToString(r) for r in responses)


def request_text(request: Any) -> str:
    items = request if isinstance(request, list) else [request]
    return "\n".join(text_format.MessageToString(r) for r in items)


# --- what the victim org owns ------------------------------------------------------------


@dataclass
class Victim:
    """Org A's resources, named every way the API accepts, and its secrets."""

    client: Client
    model_id: str
    shared_model_id: str  # a model id the attacker also owns a model of
    version: str
    version_by_uid: str
    variant: str
    catalog_version: str
    catalog_version_wild: str
    package: str
    package_wild: str
    resource: str
    resource_wild: str
    upload_done: str
    upload_open: str
    job: str
    config: str
    device_id: str
    event_ids: list[str]
    update_ids: list[str]
    blessed_variant: str
    blessed_catalog_version: str
    secrets: set[str] = field(default_factory=set)


MARK = "secret-" + uuid.uuid4().hex[:10]


def _uids_in(message: Any) -> set[str]:
    """Every uid / sha256-like value in a message's text."""
    text = text_format.MessageToString(message)
    return set(
        re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)
    ) | set(re.findall(r"\b[0-9a-f]{64}\b", text))


def build_victim(registry: RunningServer, admin: Client) -> Victim:
    a = registry.new_org()
    suffix = uuid.uuid4().hex[:8]
    model_id, shared = f"xo-{suffix}", f"xo-shared-{suffix}"
    secrets = {MARK}
    for mid in (model_id, shared):
        m = a.models.CreateModel(
            mpb.CreateModelRequest(
                model_id=mid,
                model=models_pb2.Model(framework="onnx", description=MARK, tags=[MARK]),
            )
        )
        secrets |= _uids_in(m)
    data = onnx_models.mlp(inputs=8, hidden=8, outputs=2, layers=1)
    up = upload(a, f"models/{model_id}/versions/1", F("model.onnx", data))
    secrets |= _uids_in(up) | {sha(data)}
    up_shared = upload(a, f"models/{shared}/versions/1", F("model.onnx", data + b""))
    secrets |= _uids_in(up_shared)
    version = a.versions.GetVersion(vpb.GetVersionRequest(name=f"models/{model_id}/versions/1"))
    a.versions.CreateVersion(
        vpb.CreateVersionRequest(
            parent=f"models/{model_id}",
            version_id="2",
            version=models_pb2.ModelVersion(description=MARK, labels={"k": MARK}),
        )
    )
    secrets |= _uids_in(version)
    pkg = up.packages[0]
    res = pkg.resources[0]
    cv = up.catalog_version
    _, variant_uid, _, cv_uid = cv.name.split("/")
    # an upload left open (stream ended before the declared size): resumable
    open_id = str(uuid.uuid4())
    try:
        upload(a, f"models/{model_id}/versions/3", F("p.onnx", b"abc", size=100, upload_id=open_id))
    except grpc.RpcError as err:
        assert rich(err).reason == "UPLOAD_INCOMPLETE"
    # a finished conversion job
    events = list(
        a.versions.ConvertArtifact(
            vpb.ConvertArtifactRequest(
                source=res.name, spec=conversion_pb2.ConversionSpec(targets=["onnx"])
            ),
            timeout=180,
        )
    )
    job = events[-1].job
    secrets |= _uids_in(a.versions.GetConversionJob(vpb.GetConversionJobRequest(name=job)))
    config = f"models/{model_id}/optimizedConfigs/pixel-8"
    cfg = struct_pb2.Struct()
    cfg.update({"threads": 4, "note": MARK})
    a.models.PutOptimizedConfig(
        mpb.PutOptimizedConfigRequest(
            optimized_config=compatibility_pb2.OptimizedConfig(name=config, config=cfg)
        )
    )
    device_id = f"dev-{MARK}"
    a.telemetry.ReportDeviceHeartbeat(
        tpb.ReportDeviceHeartbeatRequest(
            device=tpb.Device(
                device_id=device_id,
                device_type="pixel-8",
                platform=MARK,
                health=tpb.Device.HEALTH_HEALTHY,
            )
        )
    )
    event_ids = [f"ev-{uuid.uuid4()}" for _ in range(3)]
    a.telemetry.ReportInferenceSessions(
        iter(
            [
                tpb.ReportInferenceSessionsRequest(
                    events=[inference_event(e, m, device_id) for e in event_ids for m in [shared]]
                )
            ]
        )
    )
    update_ids = [f"up-{uuid.uuid4()}" for _ in range(2)]
    a.telemetry.ReportTrainingUpdates(
        iter(
            [
                tpb.ReportTrainingUpdatesRequest(
                    updates=[update_event(u, shared) for u in update_ids]
                )
            ]
        )
    )
    # blessed rows, written by an admin of yet another org
    blessed = admin.catalog.CreateVariant(
        cpb.CreateVariantRequest(
            variant=catalog_pb2.Variant(model_id=f"xo-blessed-{suffix}"), blessed=True
        )
    )
    db = CatalogDb(registry)
    try:
        blessed_cv = db.add_version(blessed.uid, "1", [Pkg(resources=[Res(size_bytes=10)])])
    finally:
        db.close()
    secrets -= {""}
    return Victim(
        client=a,
        model_id=model_id,
        shared_model_id=shared,
        version=f"models/{model_id}/versions/1",
        version_by_uid=f"models/-/versions/{version.uid}",
        variant=f"variants/{variant_uid}",
        catalog_version=cv.name,
        catalog_version_wild=f"variants/-/versions/{cv_uid}",
        package=pkg.name,
        package_wild=f"variants/-/versions/-/packages/{pkg.uid}",
        resource=res.name,
        resource_wild=f"variants/-/versions/-/packages/-/resources/{res.uid}",
        upload_done=up.files[0].upload_id,
        upload_open=open_id,
        job=job,
        config=config,
        device_id=device_id,
        event_ids=event_ids,
        update_ids=update_ids,
        blessed_variant=blessed.name,
        blessed_catalog_version=blessed_cv,
        secrets=secrets,
    )


def inference_event(event_id: str, model_id: str, device_id: str) -> tpb.InferenceSessionEvent:
    return tpb.InferenceSessionEvent(
        event_id=event_id,
        model=f"models/{model_id}",
        version_id="1",
        device_id=device_id,
        device_type="pixel-8",
        occur_time=ts(now()),
        latency_ms=12.5,
    )


def update_event(event_id: str, model_id: str) -> tpb.TrainingUpdateEvent:
    return tpb.TrainingUpdateEvent(
        event_id=event_id,
        model=f"models/{model_id}",
        version_id="1",
        device_id="dev-x",
        occur_time=ts(now()),
        sample_count=10,
        metrics={"loss": 0.5},
    )


def telemetry_window(model: str) -> tpb.GetInferenceTelemetryRequest:
    t = now()
    return tpb.GetInferenceTelemetryRequest(
        name=model, start_time=ts(t - timedelta(days=1)), end_time=ts(t + timedelta(hours=1))
    )


def view_of(v: Victim) -> str:
    """What the victim sees of its own data, as text; must not change."""
    a = v.client
    parts: list[Any] = [
        a.models.GetModel(mpb.GetModelRequest(name=f"models/{v.model_id}")),
        a.models.GetModel(mpb.GetModelRequest(name=f"models/{v.shared_model_id}")),
        a.versions.ListVersions(vpb.ListVersionsRequest(parent=f"models/{v.model_id}")),
        a.catalog.GetVariant(cpb.GetVariantRequest(name=v.variant)),
        a.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=v.catalog_version)),
        a.catalog.ListCatalogVersionPackages(
            cpb.ListCatalogVersionPackagesRequest(parent=v.catalog_version)
        ),
        a.versions.GetConversionJob(vpb.GetConversionJobRequest(name=v.job)),
        a.models.GetOptimizedConfig(mpb.GetOptimizedConfigRequest(name=v.config)),
        a.versions.QueryUploadStatus(vpb.QueryUploadStatusRequest(upload_id=v.upload_done)),
        a.versions.QueryUploadStatus(vpb.QueryUploadStatusRequest(upload_id=v.upload_open)),
        a.telemetry.GetTrainingStats(
            tpb.GetTrainingStatsRequest(name=f"models/{v.shared_model_id}")
        ),
        a.catalog.GetVariant(cpb.GetVariantRequest(name=v.blessed_variant)),
        a.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=v.blessed_catalog_version)),
    ]
    manifest = a.models.GetManifest(mpb.GetManifestRequest())
    telemetry = a.telemetry.GetInferenceTelemetry(telemetry_window(f"models/{v.shared_model_id}"))
    # window-dependent fields (fleet offline counts) aside, the counts must hold
    return "\n".join(text_format.MessageToString(p) for p in parts) + (
        f"\nmanifest {manifest.etag}\nsessions {telemetry.session_count}"
    )


# --- the matrix ------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    request: Any  # a message, or a list of messages for client-streaming RPCs
    codes: set[grpc.StatusCode]
    check: Callable[[list[Any]], None] | None = None
    admin_only: bool = False  # a non-admin key must get PERMISSION_DENIED


def nf(label: str, request: Any) -> Case:
    return Case(label, request, {NOT_FOUND})


def names(v: Victim, *kinds: str) -> list[tuple[str, str]]:
    table = {
        "model": [("model", f"models/{v.model_id}")],
        "version": [("version", v.version), ("version-by-uid", v.version_by_uid)],
        "variant": [("variant", v.variant)],
        "cv": [
            ("catalog-version", v.catalog_version),
            ("catalog-version-wild", v.catalog_version_wild),
        ],
        "package": [("package", v.package), ("package-wild", v.package_wild)],
        "resource": [("resource", v.resource), ("resource-wild", v.resource_wild)],
    }
    return [pair for k in kinds for pair in table[k]]


def own_parent(attacker: Client) -> str:
    return f"models/{attacker.org}-own/versions/1"


def cases_for(path: str, v: Victim, b: Client) -> list[Case]:
    table = case_table(v, b)
    m = path.rsplit("/", 1)[1]
    return table[m]() if m in table else []


def case_table(v: Victim, b: Client) -> dict[str, Callable[[], list[Case]]]:
    """Per RPC (by method name), the cases built lazily."""
    onnx_spec = conversion_pb2.ConversionSpec(targets=["onnx"])
    shared = f"models/{v.shared_model_id}"
    table: dict[str, Callable[[], list[Case]]] = {
        # ModelService
        "CreateModel": lambda: [
            # the same model id in another org is a different model: created, not a clash
            Case(
                "same-id",
                mpb.CreateModelRequest(
                    model_id=v.model_id, model=models_pb2.Model(framework="onnx")
                ),
                {OK},
            ),
        ],
        "GetModel": lambda: [nf(n, mpb.GetModelRequest(name=x)) for n, x in names(v, "model")],
        "ListModels": lambda: [
            Case("all", mpb.ListModelsRequest(page_size=1000), {OK}),
            Case("search", mpb.ListModelsRequest(search=v.model_id), {OK}),
            Case("tag", mpb.ListModelsRequest(tag=MARK), {OK}),
        ],
        "UpdateModel": lambda: [
            nf(
                "model",
                mpb.UpdateModelRequest(
                    model=models_pb2.Model(name=f"models/{v.model_id}", description="pwned"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                ),
            ),
        ],
        "DeleteModel": lambda: [
            nf(n, mpb.DeleteModelRequest(name=x)) for n, x in names(v, "model")
        ],
        "ListModelFilterOptions": lambda: [Case("all", mpb.ListModelFilterOptionsRequest(), {OK})],
        "ResolveModel": lambda: [nf("model", mpb.ResolveModelRequest(model_id=v.model_id))],
        "GetManifest": lambda: [Case("all", mpb.GetManifestRequest(), {OK})],
        "CheckCompatibility": lambda: [
            nf(
                "model",
                mpb.CheckCompatibilityRequest(
                    name=f"models/{v.model_id}", device_profiles=["iphone-15"]
                ),
            ),
        ],
        "GetOptimizationPlan": lambda: [
            nf(
                "model",
                mpb.GetOptimizationPlanRequest(
                    name=f"models/{v.model_id}", device_profiles=["iphone-15"]
                ),
            ),
        ],
        "GetOptimizedConfig": lambda: [nf("config", mpb.GetOptimizedConfigRequest(name=v.config))],
        "PutOptimizedConfig": lambda: [
            nf(
                "config",
                mpb.PutOptimizedConfigRequest(
                    optimized_config=compatibility_pb2.OptimizedConfig(
                        name=v.config,
                        config=struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=1)}),
                    )
                ),
            ),
        ],
        "ListModelArtifactPackages": lambda: [
            nf("model", mpb.ListModelArtifactPackagesRequest(name=f"models/{v.model_id}")),
        ],
        "GetArtifactDownloadUrl": lambda: (
            [
                nf(n, mpb.GetArtifactDownloadUrlRequest(name=f"models/{v.model_id}", package=p))
                for n, p in names(v, "package")
            ]
            + [
                # the attacker's own model of the same name, the victim's package
                Case(
                    f"shared-{n}",
                    mpb.GetArtifactDownloadUrlRequest(name=shared, package=p),
                    {NOT_FOUND, PRECONDITION},
                )
                for n, p in names(v, "package")
            ]
        ),
        # VersionService
        "CreateVersion": lambda: [
            nf("model", vpb.CreateVersionRequest(parent=f"models/{v.model_id}", version_id="9")),
        ],
        "ListVersions": lambda: [
            nf("model", vpb.ListVersionsRequest(parent=f"models/{v.model_id}")),
            Case("shared", vpb.ListVersionsRequest(parent=shared), {OK}),
        ],
        "GetVersion": lambda: [
            nf(n, vpb.GetVersionRequest(name=x)) for n, x in names(v, "version")
        ],
        "DeleteVersion": lambda: [
            nf(n, vpb.DeleteVersionRequest(name=x)) for n, x in names(v, "version")
        ],
        "PublishVersion": lambda: [
            nf(n, vpb.PublishVersionRequest(name=x)) for n, x in names(v, "version")
        ],
        "GetUploadUrl": lambda: [
            # presigning lands under the caller's own org whatever the name; the embedded
            # store cannot presign at all
            Case(
                "version",
                vpb.GetUploadUrlRequest(
                    parent=v.version, format="onnx", file=vpb.FileSpec(file_name="m.onnx")
                ),
                {OK, PRECONDITION},
            ),
        ],
        "ConfirmUpload": lambda: [
            # the victim's stored object, claimed by key under the attacker's version
            Case(
                "storage-key",
                vpb.ConfirmUploadRequest(
                    parent=own_parent(b),
                    storage_key=storage_key_of(v),
                    format="onnx",
                    file=vpb.FileSpec(file_name="model.onnx", size_bytes=0),
                ),
                {NOT_FOUND, INVALID, PRECONDITION},
            ),
        ],
        "UploadArtifacts": lambda: [
            nf(
                f"{n}@{off}",
                list(
                    artifact_requests(
                        own_parent(b), [F("m.onnx", b"abc", upload_id=uid, write_offset=off)]
                    )
                ),
            )
            for n, uid in [("upload-done", v.upload_done), ("upload-open", v.upload_open)]
            for off in (0, 3)
        ],
        "UploadBundle": lambda: [
            nf(
                f"{n}",
                [
                    vpb.UploadBundleRequest(
                        header=vpb.UploadBundleHeader(
                            parent=own_parent(b),
                            format="onnx",
                            primary=vpb.FileSpec(file_name="m.onnx", size_bytes=3),
                            upload_id=uid,
                            write_offset=0,
                        )
                    ),
                    vpb.UploadBundleRequest(chunk=b"abc"),
                ],
            )
            for n, uid in [("upload-done", v.upload_done), ("upload-open", v.upload_open)]
        ],
        "UploadAndConvert": lambda: [
            nf(
                f"{n}",
                [
                    vpb.UploadAndConvertRequest(
                        header=vpb.UploadAndConvertHeader(
                            parent=own_parent(b),
                            file=vpb.FileSpec(file_name="m.onnx", size_bytes=3),
                            spec=onnx_spec,
                            upload_id=uid,
                        )
                    ),
                    vpb.UploadAndConvertRequest(chunk=b"abc"),
                ],
            )
            for n, uid in [("upload-done", v.upload_done), ("upload-open", v.upload_open)]
        ],
        "ConvertArtifact": lambda: [
            nf(n, vpb.ConvertArtifactRequest(source=x, spec=onnx_spec))
            for n, x in names(v, "resource", "package")
        ],
        "WatchConversion": lambda: [nf("job", vpb.WatchConversionRequest(name=v.job))],
        "GetConversionJob": lambda: [nf("job", vpb.GetConversionJobRequest(name=v.job))],
        "CancelConversion": lambda: [nf("job", vpb.CancelConversionRequest(name=v.job))],
        "QueryUploadStatus": lambda: [
            nf("upload-done", vpb.QueryUploadStatusRequest(upload_id=v.upload_done)),
            nf("upload-open", vpb.QueryUploadStatusRequest(upload_id=v.upload_open)),
        ],
        "DownloadArtifact": lambda: [
            nf(n, vpb.DownloadArtifactRequest(name=x)) for n, x in names(v, "resource")
        ],
        # CatalogService
        "CreateVariant": lambda: [
            Case(
                "same-model-id",
                cpb.CreateVariantRequest(variant=catalog_pb2.Variant(model_id=v.model_id)),
                {OK},
            ),
            Case(
                "blessed",
                cpb.CreateVariantRequest(
                    variant=catalog_pb2.Variant(model_id=f"xo-new-{uuid.uuid4().hex[:6]}"),
                    blessed=True,
                ),
                {DENIED},
                admin_only=True,
            ),
        ],
        "GetVariant": lambda: [nf("variant", cpb.GetVariantRequest(name=v.variant))],
        "ListVariants": lambda: [
            Case(f"scope-{s}", cpb.ListVariantsRequest(scope=s, page_size=1000, search="xo-"), {OK})
            for s in catalog_service_pb2.VariantScope.values()
        ],
        "UpdateVariant": lambda: [
            nf(
                "variant",
                cpb.UpdateVariantRequest(
                    variant=catalog_pb2.Variant(name=v.variant, description="pwned"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                ),
            ),
            Case(
                "blessed",
                cpb.UpdateVariantRequest(
                    variant=catalog_pb2.Variant(name=v.blessed_variant, description="pwned"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                ),
                {DENIED},
                admin_only=True,
            ),
        ],
        "ResolveVariant": lambda: [nf("model", cpb.ResolveVariantRequest(model_id=v.model_id))],
        "ListCatalogVersions": lambda: [
            nf("variant", cpb.ListCatalogVersionsRequest(parent=v.variant)),
        ],
        "GetCatalogVersion": lambda: [
            nf(n, cpb.GetCatalogVersionRequest(name=x)) for n, x in names(v, "cv")
        ],
        "DeprecateCatalogVersion": lambda: (
            [nf(n, cpb.DeprecateCatalogVersionRequest(name=x)) for n, x in names(v, "cv")]
            + [
                Case(
                    "blessed",
                    cpb.DeprecateCatalogVersionRequest(name=v.blessed_catalog_version),
                    {DENIED},
                    admin_only=True,
                ),
            ]
        ),
        "GetCatalogVersionDownloadUrls": lambda: [
            nf(n, cpb.GetCatalogVersionDownloadUrlsRequest(name=x)) for n, x in names(v, "cv")
        ],
        "ListCatalogVersionPackages": lambda: [
            nf(n, cpb.ListCatalogVersionPackagesRequest(parent=x)) for n, x in names(v, "cv")
        ],
        # TelemetryService
        "ReportInferenceSessions": lambda: [
            # the victim's model: each event rejected (no such model for this org)
            Case(
                "model",
                [
                    tpb.ReportInferenceSessionsRequest(
                        events=[inference_event(f"ev-{uuid.uuid4()}", v.model_id, v.device_id)]
                    )
                ],
                {OK},
                check=lambda rs: accepted(rs, 0, 0),
            ),
            # the victim's event ids on the attacker's own model of the same name: new
            # events here, not duplicates (ids are per org)
            Case(
                "event-ids",
                [
                    tpb.ReportInferenceSessionsRequest(
                        events=[
                            inference_event(e, v.shared_model_id, v.device_id) for e in v.event_ids
                        ]
                    )
                ],
                {OK},
                check=lambda rs: accepted(rs, len(v.event_ids), 0),
            ),
        ],
        "ReportTrainingUpdates": lambda: [
            Case(
                "model",
                [
                    tpb.ReportTrainingUpdatesRequest(
                        updates=[update_event(f"up-{uuid.uuid4()}", v.model_id)]
                    )
                ],
                {OK},
                check=lambda rs: accepted(rs, 0, 0),
            ),
            Case(
                "event-ids",
                [
                    tpb.ReportTrainingUpdatesRequest(
                        updates=[update_event(u, v.shared_model_id) for u in v.update_ids]
                    )
                ],
                {OK},
                check=lambda rs: accepted(rs, len(v.update_ids), 0),
            ),
        ],
        "ReportDeviceHeartbeat": lambda: [
            # the victim's device id registers a new device of this org
            Case(
                "device",
                tpb.ReportDeviceHeartbeatRequest(
                    device=tpb.Device(
                        device_id=v.device_id,
                        device_type="pixel-8",
                        health=tpb.Device.HEALTH_HEALTHY,
                    )
                ),
                {OK},
                check=lambda rs: registered(rs),
            ),
        ],
        "GetInferenceTelemetry": lambda: [
            nf("model", telemetry_window(f"models/{v.model_id}")),
        ],
        "GetTrainingStats": lambda: [
            nf("model", tpb.GetTrainingStatsRequest(name=f"models/{v.model_id}")),
        ],
        "GetVersionTrainingStats": lambda: [
            nf(n, tpb.GetVersionTrainingStatsRequest(name=x))
            for n, x in names(v, "version")
            if "/-/" not in x
        ],
    }
    return table


def storage_key_of(v: Victim) -> str:
    """The victim's resource's storage key, found the way an attacker could guess it: not
    through the API (which never shows it) but from the database, as the worst case."""
    from sqlalchemy import select

    from storage.orm import ArtifactResource

    registry = _REGISTRY[0]
    with registry._sessions() as s:
        key = s.scalars(
            select(ArtifactResource.storage_key).where(
                ArtifactResource.id == v.resource.rsplit("/", 1)[1]
            )
        ).one()
    v.secrets.add(key)
    return key


_REGISTRY: list[RunningServer] = []


def accepted(responses: list[Any], n: int, duplicates: int) -> None:
    (r,) = responses
    assert (r.accepted_count, r.duplicate_count) == (n, duplicates), r


def registered(responses: list[Any]) -> None:
    (r,) = responses
    assert r.registered, "another org's device id is a new device for this org"
    assert r.device.platform != MARK


# --- tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(registry: RunningServer) -> Iterator[Victim]:
    _REGISTRY[:] = [registry]
    admin = registry.new_org(admin=True)
    yield build_victim(registry, admin)


def test_every_rpc_has_cases(registry: RunningServer) -> None:
    """A new RPC needs an entry in cases_for (this fails until it has one)."""
    fake = Victim(
        client=registry.new_org(), model_id="a", shared_model_id="b", version="", version_by_uid="",
        variant="", catalog_version="", catalog_version_wild="", package="", package_wild="",
        resource="", resource_wild="", upload_done="", upload_open="", job="", config="",
        device_id="", event_ids=[], update_ids=[], blessed_variant="", blessed_catalog_version="",
    )  # fmt: skip
    table = case_table(fake, fake.client)
    missing = [path_of(m) for m in METHODS if m.name not in table]
    assert missing == [], f"RPCs without cross-org cases: {missing}"


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
@pytest.mark.parametrize("attacker_kind", ["member", "admin"])
def test_another_orgs_key_never_reaches_this_orgs_data(
    registry: RunningServer, victim: Victim, method: descriptor.MethodDescriptor,
    attacker_kind: str,
) -> None:  # fmt: skip
    attacker = registry.new_org(admin=attacker_kind == "admin")
    # the attacker owns a model with the same id as one of the victim's
    attacker.models.CreateModel(
        mpb.CreateModelRequest(
            model_id=victim.shared_model_id, model=models_pb2.Model(framework="onnx")
        )
    )
    attacker.versions.CreateVersion(
        vpb.CreateVersionRequest(parent=f"models/{victim.shared_model_id}", version_id="1")
    )
    path = path_of(method)
    cases = cases_for(path, victim, attacker)
    assert cases, f"{path} has no cross-org cases"
    before = view_of(victim)
    failures = []
    for case in cases:
        if case.admin_only and attacker_kind == "admin":
            continue  # an admin may write blessed rows: not a cross-org matter
        code, responses, text = invoke(registry.channel, method, attacker.key, case.request)
        if code not in case.codes:
            failures.append(
                f"{case.label}: {code.name} not in {[c.name for c in case.codes]}: {text[:300]}"
            )
            continue
        asked = request_text(case.request)
        leaked = {s for s in victim.secrets if s in text and s not in asked}
        if leaked:
            failures.append(f"{case.label}: answer carries the other org's {sorted(leaked)}")
        if case.check is not None and code == OK:
            try:
                case.check(responses)
            except AssertionError as err:
                failures.append(f"{case.label}: {err}")
    assert not failures, "\n".join(failures)
    assert view_of(victim) == before, "the other org's calls changed this org's data"


def test_the_scan_would_see_a_leak(registry: RunningServer, victim: Victim) -> None:
    """The owner's own answers carry its secrets: the scan above is not vacuous."""
    by_name = {m.name: m for m in METHODS}
    for name, request in [
        ("ListVariants", cpb.ListVariantsRequest(page_size=1000, search="xo-")),
        ("ListModels", mpb.ListModelsRequest(page_size=1000)),
        ("GetConversionJob", vpb.GetConversionJobRequest(name=victim.job)),
    ]:
        code, _, text = invoke(registry.channel, by_name[name], victim.client.key, request)
        assert code == OK
        asked = request_text(request)
        assert {s for s in victim.secrets if s in text and s not in asked}, name
