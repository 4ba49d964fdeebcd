"""Hostile input corpus, on both backends: NUL characters in text, path traversal in file
names and storage keys, ONNX external data pointing at an absolute path, truncated streams,
compressed-message bombs, oversized metadata. Never INTERNAL or UNKNOWN, nothing stored by
a rejected request, and the server keeps serving."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import onnx
import pytest
from google.protobuf import struct_pb2
from onnx import TensorProto

from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import compatibility_pb2, conversion_pb2, models_pb2
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import telemetry_service_pb2 as tpb
from modelregistry.v1 import version_service_pb2 as vpb
from support import onnx_models
from support.registry import Client, RunningServer
from support.status import expect_error, rich
from support.telemetry import now, ts
from support.uploads import (
    F,
    artifact_requests,
    assert_nothing_stored,
    download,
    org_id,
    row_counts,
    upload,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def code_of(fn, *args, **kw) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kw)
    except grpc.RpcError as err:
        r = rich(err)
        return r.code, r.reason
    return grpc.StatusCode.OK, ""


def serving(c: Client) -> None:
    c.models.ListModels(mpb.ListModelsRequest(), timeout=30)


# --- NUL characters --------------------------------------------------------------------


def test_nul_in_any_unary_string_is_invalid_on_every_backend(
    registry: RunningServer, client: Client
) -> None:
    """PostgreSQL cannot store U+0000 in text or JSON (SQLite can): both refuse it alike,
    naming the field (found by fuzzing: ResolveModel, ResolveVariant and ListVariants
    answered INTERNAL on PostgreSQL)."""
    err = expect_error(
        INVALID,
        client.models.CreateModel,
        mpb.CreateModelRequest(
            model_id="m", model=models_pb2.Model(framework="onnx", description="a\x00b")
        ),
    )
    assert "model.description" in err.field_violations
    err = expect_error(
        INVALID, client.models.ResolveModel, mpb.ResolveModelRequest(model_id="\x00")
    )
    assert "model_id" in err.field_violations
    err = expect_error(
        INVALID, client.catalog.ResolveVariant, cpb.ResolveVariantRequest(model_id="m\x00")
    )
    assert "model_id" in err.field_violations
    err = expect_error(INVALID, client.catalog.ListVariants, cpb.ListVariantsRequest(search="\x00"))
    assert "search" in err.field_violations
    client.models.CreateModel(
        mpb.CreateModelRequest(model_id="m", model=models_pb2.Model(framework="onnx"))
    )
    config = struct_pb2.Struct()
    config.update({"nested": {"list": ["ok", "bad\x00"]}})
    err = expect_error(
        INVALID,
        client.models.PutOptimizedConfig,
        mpb.PutOptimizedConfigRequest(
            optimized_config=compatibility_pb2.OptimizedConfig(
                name="models/m/optimizedConfigs/pixel-8", config=config
            )
        ),
    )
    assert any(f.startswith("optimized_config.config") for f in err.field_violations)
    assert row_counts(registry, client)["models"] == 1


def test_nul_in_streamed_telemetry_is_never_internal(
    registry: RunningServer, client: Client
) -> None:
    """Streamed messages are not walked for NUL: the event is rejected by validation, or the
    database's refusal answers INVALID_ARGUMENT; never INTERNAL."""
    client.models.CreateModel(
        mpb.CreateModelRequest(model_id="m", model=models_pb2.Model(framework="onnx"))
    )
    event = tpb.InferenceSessionEvent(
        event_id="e\x001",
        model="models/m",
        version_id="1",
        device_id="d\x00",
        device_type="pixel\x00",
        occur_time=ts(now()),
        latency_ms=1.0,
        error_code="\x00",
    )
    code, _ = code_of(
        client.telemetry.ReportInferenceSessions,
        iter([tpb.ReportInferenceSessionsRequest(events=[event])]),
    )
    assert code in {grpc.StatusCode.OK, INVALID}
    serving(client)


# --- path traversal --------------------------------------------------------------------

TRAVERSAL = [
    "../../../../etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "/etc/passwd",
    "a/../../b.onnx",
    "%2e%2e%2f%2e%2e%2fm.onnx",
    "....//....//m.onnx",
    "..",
    ".",
    "m.onnx/..",
    "C:\\m.onnx",
    "\u202egnp.onnx",
]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_path_traversal_in_file_names_stays_inside_the_org(
    registry: RunningServer, client: Client, name: str, tmp_path: Path
) -> None:
    data = os.urandom(256)
    marker = set(os.listdir(Path(registry.object_store).parent)) if is_local(registry) else set()
    code, _ = code_of(upload, client, "models/m/versions/1", F(name, data))
    assert code in {grpc.StatusCode.OK, INVALID}, code
    if code != grpc.StatusCode.OK:
        assert_nothing_stored(registry, client)
        return
    from sqlalchemy import select

    from storage.db import transaction
    from storage.orm import ArtifactPackage, ArtifactResource, CatalogVariant, CatalogVersion

    oid = org_id(registry, client)
    with transaction(registry._sessions, readonly=True) as s:
        rows = s.execute(
            select(ArtifactResource.file_name, ArtifactResource.storage_key)
            .join(ArtifactPackage)
            .join(CatalogVersion)
            .join(CatalogVariant)
            .where(CatalogVariant.org_id == oid)
        ).all()
    assert len(rows) == 1
    file_name, key = rows[0]
    assert "/" not in file_name and "\\" not in file_name and file_name not in {".", ".."}
    assert key.startswith(f"orgs/{oid}/") and ".." not in key.split("/"), key
    if is_local(registry):
        # nothing appeared beside the blob directory
        assert set(os.listdir(Path(registry.object_store).parent)) == marker
        root = Path(registry.object_store).resolve()
        assert (root / key).resolve().is_relative_to(root)
    listed = client.versions.ListVersions(vpb.ListVersionsRequest(parent="models/m"))
    assert len(listed.versions) == 1
    resource = (
        client.models.ListModelArtifactPackages(
            mpb.ListModelArtifactPackagesRequest(name="models/m")
        )
        .packages[0]
        .resources[0]
    )
    assert download(client, resource.name)[1] == data


def is_local(registry: RunningServer) -> bool:
    return not registry.object_store.startswith("s3://")


def test_storage_keys_outside_the_org_cannot_be_confirmed(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    theirs = upload(other_client, "models/m/versions/1", F("model.onnx", os.urandom(64)))
    assert theirs.packages
    other = org_id(registry, other_client)
    for key in [
        f"orgs/{other}/x",
        f"orgs/{org_id(registry, client)}/../{other}/x",
        "../../etc/passwd",
        "/etc/passwd",
        "",
    ]:
        code, _ = code_of(
            client.versions.ConfirmUpload,
            vpb.ConfirmUploadRequest(
                parent="models/m/versions/1",
                storage_key=key,
                format="onnx",
                file=vpb.FileSpec(file_name="model.onnx", size_bytes=64),
            ),
        )
        assert code in {
            INVALID,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
        }, (key, code)
    assert_nothing_stored(registry, client)


def test_onnx_external_data_at_an_absolute_path_fails_the_job(client: Client) -> None:
    model = onnx.load_from_string(onnx_models.mlp())
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    source = upload(client, "models/m/versions/1", F("m.onnx", model.SerializeToString()))
    events = list(
        client.versions.ConvertArtifact(
            vpb.ConvertArtifactRequest(
                source=source.packages[0].resources[0].name,
                spec=conversion_pb2.ConversionSpec(targets=["onnx"]),
            ),
            timeout=180,
        )
    )
    assert events[-1].state == conversion_pb2.ConversionJob.STATE_FAILED
    assert "passwd" not in "".join(e.message for e in events[:-1] if e.stage == "load")


# --- truncated streams -----------------------------------------------------------------


def _truncated() -> dict[str, tuple[str, list[object]]]:
    parent = "models/m/versions/1"
    target = vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
    spec = vpb.FileSpec(file_name="m.onnx", size_bytes=10)
    header = vpb.UploadArtifactsRequest(file=vpb.UploadFileHeader(file=spec, format="onnx"))
    bundle = vpb.UploadBundleRequest(
        header=vpb.UploadBundleHeader(parent=parent, format="onnx", primary=spec)
    )
    convert = vpb.UploadAndConvertRequest(
        header=vpb.UploadAndConvertHeader(
            parent=parent, file=spec, spec=conversion_pb2.ConversionSpec(targets=["onnx"])
        )
    )
    return {
        "artifacts-empty": ("UploadArtifacts", []),
        "artifacts-target-only": ("UploadArtifacts", [target]),
        "artifacts-chunk-first": ("UploadArtifacts", [vpb.UploadArtifactsRequest(chunk=b"abc")]),
        "artifacts-header-no-bytes": ("UploadArtifacts", [target, header]),
        "artifacts-short": (
            "UploadArtifacts",
            [target, header, vpb.UploadArtifactsRequest(chunk=b"abc")],
        ),
        "bundle-empty": ("UploadBundle", []),
        "bundle-header-only": ("UploadBundle", [bundle]),
        "convert-empty": ("UploadAndConvert", []),
        "convert-header-only": ("UploadAndConvert", [convert]),
        "telemetry-empty": ("ReportInferenceSessions", []),
    }


@pytest.mark.parametrize("case", list(_truncated()))
def test_truncated_streams(registry: RunningServer, client: Client, case: str) -> None:
    rpc, messages = _truncated()[case]
    stub = client.telemetry if rpc.startswith("Report") else client.versions
    method = getattr(stub, rpc)

    def go() -> None:
        result = method(iter(messages), timeout=60)
        if rpc == "UploadAndConvert":
            list(result)

    code, reason = code_of(go)
    assert code not in NEVER, code
    if rpc.startswith("Report"):
        assert code == grpc.StatusCode.OK
        return
    assert code == INVALID, (code, reason)
    counts = row_counts(registry, client)
    assert counts == dict.fromkeys(counts, 0), counts
    serving(client)


# --- compression bombs and oversized metadata -----------------------------------------


def test_compressed_message_bombs_are_resource_exhausted(
    registry: RunningServer, client: Client
) -> None:
    """64 MiB that gzip to ~64 KiB: the server refuses them after decompressing no more
    than its 16 MiB message limit, and keeps serving."""
    bomb = mpb.CreateModelRequest(
        model_id="m", model=models_pb2.Model(framework="onnx", description="a" * (64 << 20))
    )
    err = expect_error_transport(
        client.models.CreateModel, bomb, compression=grpc.Compression.Gzip, timeout=120
    )
    assert err == grpc.StatusCode.RESOURCE_EXHAUSTED

    def stream() -> Iterator[vpb.UploadArtifactsRequest]:
        yield from artifact_requests("models/m/versions/1", [])
        yield vpb.UploadArtifactsRequest(
            file=vpb.UploadFileHeader(file=vpb.FileSpec(file_name="m.onnx"), format="onnx")
        )
        yield vpb.UploadArtifactsRequest(chunk=b"\x00" * (64 << 20))

    err = expect_error_transport(
        client.versions.UploadArtifacts, stream(), compression=grpc.Compression.Gzip, timeout=120
    )
    assert err == grpc.StatusCode.RESOURCE_EXHAUSTED
    serving(client)
    counts = row_counts(registry, client)
    assert counts == dict.fromkeys(counts, 0), counts


def expect_error_transport(fn, *args, **kw) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kw)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return,attr-defined]
    raise AssertionError("the call succeeded")


def test_oversized_metadata_is_refused_and_the_server_keeps_serving(
    registry: RunningServer, client: Client
) -> None:
    for metadata in (
        [("x-big", "a" * (20 << 10))],
        [("x-huge", "a" * (1 << 20))],
        [(f"x-{i}", "a" * 16) for i in range(3000)],
    ):
        code = expect_error_transport(
            client.models.ListModels, mpb.ListModelsRequest(), metadata=metadata, timeout=30
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
    # a long bearer token is just an unknown key
    stub = mpb.DESCRIPTOR.services_by_name["ModelService"]
    assert stub is not None
    call = registry.channel.unary_unary(
        "/modelregistry.v1.ModelService/ListModels",
        request_serializer=mpb.ListModelsRequest.SerializeToString,
        response_deserializer=mpb.ListModelsResponse.FromString,
    )
    for token in ("x" * 4000, "mr_" + "_" * 4000, f"mr_{uuid.uuid4().hex}_%00'\"\\"):
        code, reason = code_of(
            call, mpb.ListModelsRequest(), metadata=[("authorization", f"Bearer {token}")]
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, reason)
    serving(client)
