"""Presigned transfers: GetUploadUrl + PUT + ConfirmUpload, GetArtifactDownloadUrl.

On PostgreSQL + MinIO the whole flow; on the embedded local directory every presigned RPC
is FAILED_PRECONDITION pointing to the streaming RPCs (and writes nothing)."""

from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import models_pb2
from modelregistry.v1 import version_service_pb2 as vpb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.uploads import (
    F,
    MiB,
    objects,
    org_id,
    random_bytes,
    row_counts,
    sha,
    upload,
    upload_states,
)

FP = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def presigns(registry: RunningServer) -> bool:
    return registry.object_store.startswith("s3://")


@pytest.fixture
def s3(registry: RunningServer) -> RunningServer:
    if not presigns(registry):
        pytest.skip("presigned URLs need the S3/MinIO store")
    return registry


def http_put(url: str, data: bytes) -> None:
    req = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        body: bytes = resp.read()
        return body


def get_url(
    c: Client, parent: str, name: str = "model.onnx", fmt: str = "onnx", **spec: object
) -> vpb.GetUploadUrlResponse:
    return c.versions.GetUploadUrl(
        vpb.GetUploadUrlRequest(
            parent=parent, format=fmt, file=vpb.FileSpec(file_name=name, **spec)
        )  # type: ignore[arg-type]
    )


def confirm(
    c: Client,
    parent: str,
    key: str,
    data: bytes,
    *,
    name: str = "model.onnx",
    fmt: str = "onnx",
    size: int | None = None,
    sha256: str | None = None,
    **kw: str,
) -> vpb.ConfirmUploadResponse:
    spec = vpb.FileSpec(
        file_name=name,
        size_bytes=len(data) if size is None else size,
        sha256=sha(data) if sha256 is None else sha256,
    )
    return c.versions.ConfirmUpload(
        vpb.ConfirmUploadRequest(parent=parent, storage_key=key, format=fmt, file=spec, **kw)
    )


def presigned_upload(
    c: Client, parent: str, data: bytes, name: str = "model.onnx", fmt: str = "onnx"
) -> vpb.ConfirmUploadResponse:
    got = get_url(c, parent, name, fmt, size_bytes=len(data))
    http_put(got.url, data)
    return confirm(c, parent, got.storage_key, data, name=name, fmt=fmt)


# --- the embedded store ---------------------------------------------------------------------


def test_local_store_refuses_presigned_rpcs(registry: RunningServer, client: Client) -> None:
    if presigns(registry):
        pytest.skip("the local-directory store only")
    err = expect_error(FP, get_url, client, "models/m/versions/1", size_bytes=10)
    assert err.reason == "PRESIGN_UNSUPPORTED" and "UploadArtifacts" in err.message
    upload_uid = "00000000-0000-4000-8000-000000000000"
    key = f"orgs/{org_id(registry, client)}/models/m/versions/1/{upload_uid}/model.onnx"
    err = expect_error(FP, confirm, client, "models/m/versions/1", key, b"x")
    assert err.reason == "PRESIGN_UNSUPPORTED" and "UploadArtifacts" in err.message
    resp = upload(client, "models/m/versions/1", F("model.onnx", b"weights"))
    package = resp.packages[0].name
    err = expect_error(
        FP,
        client.models.GetArtifactDownloadUrl,
        mpb.GetArtifactDownloadUrlRequest(name="models/m", package=package),
    )
    assert err.reason == "PRESIGN_UNSUPPORTED" and "DownloadArtifact" in err.message
    assert upload_states(registry, client) == {resp.files[0].upload_id: "committed"}


# --- the presigned upload flow --------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 5 * MiB + 3], ids=lambda n: f"{n}B")
def test_put_confirm_download(s3: RunningServer, client: Client, size: int) -> None:
    data = random_bytes(size)
    got = get_url(client, "models/pre-net/versions/1.0", size_bytes=size, sha256=sha(data))
    oid = org_id(s3, client)
    assert got.storage_key.startswith(f"orgs/{oid}/models/pre-net/versions/1.0/")
    assert got.storage_key.endswith("/model.onnx")
    assert got.expire_time.seconds > 0
    # Nothing but the upload session exists before the confirm.
    assert row_counts(s3, client) == dict.fromkeys(row_counts(s3, client), 0)
    http_put(got.url, data)
    resp = confirm(client, "models/pre-net/versions/1.0", got.storage_key, data)
    assert resp.model_created
    (resource,) = resp.package.resources
    assert (resource.size_bytes, resource.sha256) == (size, sha(data))
    assert resource.kind == "weights" and resource.file_name == "model.onnx" and resource.stored
    assert resp.package.format == "onnx" and resp.package.runtime == "onnxruntime"
    assert resp.catalog_version.model_version == "models/pre-net/versions/1.0"
    assert resp.catalog_version.total_size_bytes == size
    model = client.models.GetModel(mpb.GetModelRequest(name="models/pre-net"))
    assert model.framework == "onnx"  # from the extension
    version = client.versions.GetVersion(vpb.GetVersionRequest(name="models/pre-net/versions/1.0"))
    assert version.state == models_pb2.ModelVersion.STATE_DRAFT
    # The recorded bytes live under a key no URL writes to; the PUT object is gone.
    (key,) = objects(s3, client)
    assert key != got.storage_key
    # A later PUT through the same URL cannot change what was recorded.
    http_put(got.url, b"tampered")
    dl = client.models.GetArtifactDownloadUrl(
        mpb.GetArtifactDownloadUrlRequest(name="models/pre-net", package=resp.package.name)
    )
    assert http_get(dl.url) == data
    assert dl.resource.name == resource.name and dl.resource.sha256 == sha(data)
    assert 3590 <= dl.expire_time.seconds - _now_s() <= 3610
    # ...and it can be published: size, sha256 and object all present.
    published = client.versions.PublishVersion(
        vpb.PublishVersionRequest(name="models/pre-net/versions/1.0")
    )
    assert published.state == models_pb2.ModelVersion.STATE_PUBLISHED


def _now_s() -> int:
    import time

    return int(time.time())


def test_framework_from_extension_and_format_extension(s3: RunningServer, client: Client) -> None:
    got = get_url(client, "models/lite/versions/1", name="weights", fmt="tflite", size_bytes=4)
    assert got.storage_key.endswith("/weights.tflite")
    http_put(got.url, b"TFL3")
    resp = confirm(
        client, "models/lite/versions/1", got.storage_key, b"TFL3", name="weights", fmt="tflite"
    )
    assert resp.package.resources[0].file_name == "weights.tflite"
    assert client.models.GetModel(mpb.GetModelRequest(name="models/lite")).framework == "tflite"
    got = get_url(client, "models/gg/versions/1", name="m.gguf", fmt="bin")
    http_put(got.url, b"GGUF....")
    confirm(client, "models/gg/versions/1", got.storage_key, b"GGUF....", name="m.gguf", fmt="bin")
    assert client.models.GetModel(mpb.GetModelRequest(name="models/gg")).framework == "gguf"


def test_sha256_optional_but_computed(s3: RunningServer, client: Client) -> None:
    data = random_bytes(1000)
    got = get_url(client, "models/m/versions/1")
    http_put(got.url, data)
    resp = confirm(client, "models/m/versions/1", got.storage_key, data, sha256="")
    assert resp.package.resources[0].sha256 == sha(data)


def test_second_file_joins_the_version(s3: RunningServer, client: Client) -> None:
    first = presigned_upload(client, "models/m/versions/1", b"a" * 10)
    second = presigned_upload(client, "models/m/versions/1", b"b" * 20, name="m.ort", fmt="ort")
    assert not second.model_created
    assert second.catalog_version.name == first.catalog_version.name
    assert second.catalog_version.total_size_bytes == 30
    # and the streamed path lands in the same catalog version
    resp = upload(client, "models/m/versions/1", F("x.tflite", b"c" * 5, fmt="tflite"))
    assert resp.catalog_version.name == first.catalog_version.name


# --- confirm refusals leave no rows and delete nothing ----------------------------------------


def test_confirm_without_put(s3: RunningServer, client: Client) -> None:
    got = get_url(client, "models/m/versions/1", size_bytes=3)
    err = expect_error(FP, confirm, client, "models/m/versions/1", got.storage_key, b"abc")
    assert err.reason == "OBJECT_MISSING" and "PUT" in err.message
    assert row_counts(s3, client) == dict.fromkeys(row_counts(s3, client), 0)
    # The session stays open: PUT now, confirm again.
    http_put(got.url, b"abc")
    confirm(client, "models/m/versions/1", got.storage_key, b"abc")


@pytest.mark.parametrize("problem", ["size", "sha", "empty"])
def test_confirm_mismatch(s3: RunningServer, client: Client, problem: str) -> None:
    data = random_bytes(4096)
    got = get_url(client, "models/m/versions/1")
    http_put(got.url, b"" if problem == "empty" else data)
    if problem == "size":
        err = expect_error(
            INVALID, confirm, client, "models/m/versions/1", got.storage_key, data, size=4095
        )
        assert err.reason == "SIZE_MISMATCH" and "file.size_bytes" in err.field_violations
    elif problem == "sha":
        err = expect_error(
            INVALID, confirm, client, "models/m/versions/1", got.storage_key, data,
            sha256=sha(b"other"),
        )  # fmt: skip
        assert err.reason == "CHECKSUM_MISMATCH" and "file.sha256" in err.field_violations
        assert err.metadata["actual_sha256"] == sha(data)
    else:
        err = expect_error(INVALID, confirm, client, "models/m/versions/1", got.storage_key, data)
        assert err.reason == "SIZE_MISMATCH"
    assert row_counts(s3, client) == dict.fromkeys(row_counts(s3, client), 0)
    # The object was not deleted: a correct confirm of the same bytes still works.
    if problem != "empty":
        assert got.storage_key in objects(s3, client)
        confirm(client, "models/m/versions/1", got.storage_key, data)


def test_confirm_twice(s3: RunningServer, client: Client) -> None:
    got = get_url(client, "models/m/versions/1")
    http_put(got.url, b"abc")
    confirm(client, "models/m/versions/1", got.storage_key, b"abc")
    before = row_counts(s3, client)
    err = expect_error(FP, confirm, client, "models/m/versions/1", got.storage_key, b"abc")
    assert err.reason == "UPLOAD_COMMITTED"
    assert row_counts(s3, client) == before


def test_concurrent_confirms_record_once(s3: RunningServer, client: Client) -> None:
    got = get_url(client, "models/m/versions/1")
    data = random_bytes(6 * MiB)
    http_put(got.url, data)

    def attempt() -> str:
        try:
            confirm(client, "models/m/versions/1", got.storage_key, data)
            return "ok"
        except grpc.RpcError as err:
            return err.code().name  # type: ignore[attr-defined, no-any-return]

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _i: attempt(), range(4)))
    assert outcomes.count("ok") == 1, outcomes
    assert set(outcomes) <= {"ok", "ABORTED", "FAILED_PRECONDITION"}
    assert row_counts(s3, client)["resources"] == 1
    assert len(objects(s3, client)) == 1  # the one recorded copy; stray copies removed


def test_bad_input_writes_nothing(s3: RunningServer, client: Client) -> None:
    oid = org_id(s3, client)
    bad_get = [
        (dict(parent="models/Bad Name/versions/1"), "parent"),
        (dict(format=""), "format"),
        (dict(format="zip"), "format"),
        (dict(name=""), "file.file_name"),
        (dict(name="../../etc/passwd"), "file.file_name"),
        (dict(kind="junk"), "file.kind"),
        (dict(size_bytes=-1), "file.size_bytes"),
        (dict(sha256="xyz"), "file.sha256"),
    ]
    for change, field in bad_get:
        args = {"parent": "models/m/versions/1", "name": "model.onnx", "fmt": "onnx"}
        spec: dict[str, object] = {}
        for k, v in change.items():
            if k in args:
                args[k] = v  # type: ignore[assignment]
            elif k == "format":
                args["fmt"] = v  # type: ignore[assignment]
            else:
                spec[k] = v
        err = expect_error(
            INVALID, get_url, client, args["parent"], args["name"], args["fmt"], **spec
        )
        assert field in err.field_violations, (change, err.field_violations)
    err = expect_error(INVALID, get_url, client, "models/m/versions/1", size_bytes=6 * 1024**3)
    assert err.reason == "FILE_TOO_LARGE"
    assert upload_states(s3, client) == {}
    # A real session to confirm against.
    got = get_url(client, "models/m/versions/1")
    http_put(got.url, b"abc")
    key = got.storage_key
    parent = "models/m/versions/1"
    other_key = key.replace(oid, "00000000-0000-4000-8000-000000000000")
    cases = [
        (dict(key=""), INVALID, "storage_key"),
        (dict(key="catalog/x/model.onnx"), INVALID, "storage_key"),
        (dict(key=key.replace("/model.onnx", "/../model.onnx")), INVALID, "storage_key"),
        (dict(key=key.replace("versions/1", "versions/2")), INVALID, "storage_key"),
        (dict(name="other.onnx"), INVALID, "file.file_name"),
        (dict(size=0), INVALID, "file.size_bytes"),
        (dict(fmt="tflite"), INVALID, "format"),
        (dict(quantization="int3"), INVALID, "quantization"),
        (dict(sha256="nothex"), INVALID, "file.sha256"),
        (dict(key=other_key), NOT_FOUND, None),
    ]
    for change, code, field in cases:
        kw: dict[str, object] = {}
        k = str(change.pop("key", key))
        for name in ("name", "size", "sha256", "fmt", "quantization"):
            if name in change:
                kw[name] = change[name]
        err = expect_error(code, confirm, client, parent, k, b"abc", **kw)  # type: ignore[arg-type]
        if field:
            assert field in err.field_violations, (change, err.field_violations)
    assert row_counts(s3, client) == dict.fromkeys(row_counts(s3, client), 0)
    assert list(upload_states(s3, client).values()) == ["open"]


def test_foreign_org_cannot_confirm(
    s3: RunningServer, client: Client, other_client: Client
) -> None:
    got = get_url(client, "models/m/versions/1")
    http_put(got.url, b"abc")
    expect_error(NOT_FOUND, confirm, other_client, "models/m/versions/1", got.storage_key, b"abc")
    assert row_counts(s3, other_client) == dict.fromkeys(row_counts(s3, other_client), 0)
    confirm(client, "models/m/versions/1", got.storage_key, b"abc")


def test_plan_gate(s3: RunningServer) -> None:
    c = s3.new_org(plan="free")  # 20 new versions per month
    presigned_upload(c, "models/m/versions/v0", b"abc")
    for i in range(1, 20):
        c.versions.CreateVersion(vpb.CreateVersionRequest(parent="models/m", version_id=f"v{i}"))
    err = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, get_url, c, "models/m/versions/over")
    assert err.quota_violations
    assert "model_versions_monthly" in err.quota_violations[0].description
    # An existing draft still takes files.
    presigned_upload(c, "models/m/versions/v3", b"abc")


def test_published_version_takes_no_more(s3: RunningServer, client: Client) -> None:
    presigned_upload(client, "models/m/versions/1", b"abc")
    got = get_url(client, "models/m/versions/1", name="extra.onnx")
    http_put(got.url, b"def")
    client.versions.PublishVersion(vpb.PublishVersionRequest(name="models/m/versions/1"))
    err = expect_error(
        FP, confirm, client, "models/m/versions/1", got.storage_key, b"def", name="extra.onnx"
    )
    assert err.reason == "VERSION_NOT_DRAFT"
    err = expect_error(FP, get_url, client, "models/m/versions/1")
    assert err.reason == "VERSION_NOT_DRAFT"


def test_model_deleted_before_confirm(s3: RunningServer, client: Client) -> None:
    presigned_upload(client, "models/m/versions/1", b"abc")
    got = get_url(client, "models/m/versions/2")
    http_put(got.url, b"def")
    client.models.DeleteModel(mpb.DeleteModelRequest(name="models/m"))
    # The version is gone; confirming re-creates the model, as a first upload would.
    resp = confirm(client, "models/m/versions/2", got.storage_key, b"def")
    assert resp.model_created


# --- GetArtifactDownloadUrl -----------------------------------------------------------------


def test_download_url_scope_and_state(
    s3: RunningServer, client: Client, other_client: Client
) -> None:
    resp = presigned_upload(client, "models/m/versions/1", b"weights!")
    package = resp.package.name
    uid = resp.package.uid
    req = mpb.GetArtifactDownloadUrlRequest
    for wildcard in (package, f"variants/-/versions/-/packages/{uid}"):
        dl = client.models.GetArtifactDownloadUrl(req(name="models/m", package=wildcard))
        assert http_get(dl.url) == b"weights!"
    # The model is checked first: another org sees NOT_FOUND for both.
    err = expect_error(
        NOT_FOUND, other_client.models.GetArtifactDownloadUrl, req(name="models/m", package=package)
    )
    assert err.metadata.get("resource_name") == "models/m"
    presigned_upload(other_client, "models/m/versions/1", b"theirs")
    expect_error(
        NOT_FOUND, other_client.models.GetArtifactDownloadUrl, req(name="models/m", package=package)
    )
    # A package of another model of the same org.
    presigned_upload(client, "models/n/versions/1", b"n")
    expect_error(
        NOT_FOUND, client.models.GetArtifactDownloadUrl, req(name="models/n", package=package)
    )
    expect_error(
        NOT_FOUND, client.models.GetArtifactDownloadUrl, req(name="models/zz", package=package)
    )
    for bad in (dict(name="m", package=package), dict(name="models/m", package=""),
                dict(name="models/m", package="variants/x/versions/y/packages/z")):  # fmt: skip
        expect_error(INVALID, client.models.GetArtifactDownloadUrl, req(**bad))
    client.models.UpdateModel(
        mpb.UpdateModelRequest(
            model=models_pb2.Model(name="models/m", enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    err = expect_error(
        FP, client.models.GetArtifactDownloadUrl, req(name="models/m", package=package)
    )
    assert err.reason == "MODEL_DISABLED"


def test_download_url_primary_weights_of_a_bundle(s3: RunningServer, client: Client) -> None:
    from support.uploads import bundle_requests

    primary, tokens = F("model.onnx", b"primary-weights"), F("tokens.txt", b"a b c")
    resp = client.versions.UploadBundle(
        bundle_requests("models/tts/versions/1", primary, [tokens], kinds=["tokenizer"])
    )
    dl = client.models.GetArtifactDownloadUrl(
        mpb.GetArtifactDownloadUrlRequest(name="models/tts", package=resp.package.name)
    )
    assert dl.resource.kind == "weights" and dl.resource.file_name == "model.onnx"
    assert http_get(dl.url) == b"primary-weights"
