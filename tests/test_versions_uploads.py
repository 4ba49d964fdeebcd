"""Streamed uploads and downloads over a real server, on both backends: round trips with
sha256 checks, several files per stream, bundles, auto-created targets, concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modelregistry.v1 import catalog_pb2, models_pb2
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import version_service_pb2 as vpb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.uploads import (
    F,
    MiB,
    bundle_requests,
    download,
    objects,
    random_bytes,
    row_counts,
    sha,
    upload,
    upload_states,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "size", [1, 1000, 5 * MiB + 1, 17 * MiB + 3, 64 * MiB], ids=lambda n: f"{n}B"
)
def test_round_trip(registry: RunningServer, client: Client, size: int) -> None:
    data = random_bytes(size)
    resp = upload(client, "models/rt/versions/1", F("model.onnx", data))
    assert resp.model_created
    (package,) = resp.packages
    (resource,) = package.resources
    assert resource.size_bytes == size
    assert resource.sha256 == sha(data)
    assert resource.stored and resource.kind == "weights" and resource.file_name == "model.onnx"
    assert package.format == "onnx" and package.runtime == "onnxruntime"
    assert package.source == "upload" and package.quantization == "none"
    assert resp.files[0].sha256 == sha(data) and resp.files[0].size_bytes == size
    assert resp.catalog_version.total_size_bytes == size
    assert resp.catalog_version.model_version == "models/rt/versions/1"
    got, body, messages = download(client, resource.name)
    assert body == data
    assert got.sha256 == sha(data)
    assert messages == max(1, -(-size // MiB))  # 1 MiB per message
    (key,) = objects(registry, client)
    assert key.endswith(f"/models/rt/versions/1/{resp.files[0].upload_id}/model.onnx")


def test_undeclared_size_and_sha_are_computed(client: Client) -> None:
    data = random_bytes(9 * MiB + 7)
    resp = upload(
        client,
        "models/u/versions/1",
        F("w.onnx", data, declare_size=False, declare_sha=False),
        chunk=3 * MiB + 1,
    )
    resource = resp.packages[0].resources[0]
    assert (resource.size_bytes, resource.sha256) == (len(data), sha(data))


def test_auto_created_model_variant_and_catalog_version(client: Client) -> None:
    resp = upload(
        client, "models/lite-net/versions/0.1", F("net.tflite", b"tfl3" * 10, fmt="tflite")
    )
    assert resp.model_created
    m = client.models.GetModel(mpb.GetModelRequest(name="models/lite-net"))
    assert m.framework == "tflite" and m.enabled and m.version_count == 1
    v = client.versions.GetVersion(vpb.GetVersionRequest(name="models/lite-net/versions/0.1"))
    assert v.state == models_pb2.ModelVersion.STATE_DRAFT
    assert v.catalog_version == resp.catalog_version.name
    assert resp.catalog_version.version_id == "0.1"
    assert resp.catalog_version.state == catalog_pb2.CatalogVersion.STATE_ACTIVE
    # A second upload reuses everything.
    again = upload(client, "models/lite-net/versions/0.1", F("net2.tflite", b"x" * 5, fmt="tflite"))
    assert not again.model_created
    assert again.catalog_version.name == resp.catalog_version.name
    assert again.catalog_version.total_size_bytes == 45


@pytest.mark.parametrize(
    ("file_name", "fmt", "framework"),
    [("m.pt", "pt", "pytorch"), ("m.onnx", "ort", "onnx"), ("m.bin", "gguf", "gguf")],
)
def test_framework_from_extension_or_format(
    client: Client, file_name: str, fmt: str, framework: str
) -> None:
    upload(client, "models/fw/versions/1", F(file_name, b"abc", fmt=fmt))
    assert client.models.GetModel(mpb.GetModelRequest(name="models/fw")).framework == framework


def test_existing_model_is_not_recreated(client: Client) -> None:
    client.models.CreateModel(
        mpb.CreateModelRequest(model_id="pre", model=models_pb2.Model(framework="pytorch"))
    )
    resp = upload(client, "models/pre/versions/1", F("m.onnx", b"abc"))
    assert not resp.model_created
    assert client.models.GetModel(mpb.GetModelRequest(name="models/pre")).framework == "pytorch"


def test_several_files_in_one_stream_each_its_own_package(
    registry: RunningServer, client: Client
) -> None:
    files = [
        F("model.onnx", random_bytes(3 * MiB)),
        F("model.ort", random_bytes(10 * MiB + 5), fmt="ort", declare_sha=False),
        F("model-int8.onnx", random_bytes(1), fmt="onnx-int8", declare_size=False),
        F("tokenizer.json", b"{}", kind="tokenizer", fmt="onnx"),
    ]
    resp = upload(client, "models/multi/versions/2", *files)
    assert [p.format for p in resp.packages] == ["onnx", "ort", "onnx-int8", "onnx"]
    assert [p.runtime for p in resp.packages] == [
        "onnxruntime",
        "onnxruntime-mobile",
        "onnxruntime",
        "onnxruntime",
    ]
    assert len({f.upload_id for f in resp.files}) == 4
    for f, p in zip(files, resp.packages, strict=True):
        (r,) = p.resources
        assert (r.file_name, r.size_bytes, r.sha256) == (f.name, len(f.data), sha(f.data))
        assert download(client, r.name)[1] == f.data
    assert resp.catalog_version.total_size_bytes == sum(len(f.data) for f in files)
    assert row_counts(registry, client)["packages"] == 4
    assert set(upload_states(registry, client).values()) == {"committed"}
    # Uploads report complete once recorded.
    status = client.versions.QueryUploadStatus(
        vpb.QueryUploadStatusRequest(upload_id=resp.files[1].upload_id)
    )
    assert status.complete and status.committed_size == len(files[1].data)


def test_file_names_are_sanitized(registry: RunningServer, client: Client) -> None:
    resp = upload(
        client,
        "models/san/versions/1",
        F("some/dir/my model (v2).onnx", b"abc"),
        F("C:\\Users\\me\\.hidden.onnx", b"def"),
    )
    assert [p.resources[0].file_name for p in resp.packages] == [
        "my_model__v2_.onnx",
        "hidden.onnx",
    ]
    for key in objects(registry, client):
        assert key.rsplit("/", 1)[1] in ("my_model__v2_.onnx", "hidden.onnx")


def test_bundle_one_package_with_sidecars(registry: RunningServer, client: Client) -> None:
    primary = F("model.onnx", random_bytes(6 * MiB + 1))
    extras = [
        F("tokens.txt", b"a\nb\nc\n", kind="tokenizer"),
        F("espeak-ng-data.tar", random_bytes(2 * MiB)),
        F("config.json", b'{"x": 1}', declare_size=False),  # the last may be undeclared
    ]
    resp = client.versions.UploadBundle(
        bundle_requests(
            "models/piper/versions/1",
            primary,
            extras,
            kinds=["tokenizer", "sidecar", "config"],
            chunk=1 * MiB + 17,  # chunks straddle file boundaries
        ),
        timeout=120,
    )
    assert resp.model_created and resp.upload_id
    p = resp.package
    assert [(r.file_name, r.kind, r.load_order) for r in p.resources] == [
        ("model.onnx", "weights", 0),
        ("tokens.txt", "tokenizer", 1),
        ("espeak-ng-data.tar", "sidecar", 2),
        ("config.json", "config", 3),
    ]
    for f, r in zip([primary, *extras], p.resources, strict=True):
        assert (r.size_bytes, r.sha256) == (len(f.data), sha(f.data))
        assert download(client, r.name)[1] == f.data
    assert row_counts(registry, client)["packages"] == 1
    assert row_counts(registry, client)["resources"] == 4
    keys = objects(registry, client)
    assert len(keys) == 4 and len({k.rsplit("/", 2)[1] for k in keys}) == 1  # one directory


def test_download_ranges(client: Client) -> None:
    data = random_bytes(3 * MiB + 10)
    resp = upload(client, "models/dl/versions/1", F("m.onnx", data))
    name = resp.packages[0].resources[0].name
    for offset, limit in [(0, 0), (1, 0), (MiB, 10), (3 * MiB, 0), (len(data) - 1, 5)]:
        resource, body, _ = download(client, name, offset, limit)
        end = offset + limit if limit else len(data)
        assert body == data[offset:end]
        assert resource.size_bytes == len(data)  # metadata of the whole file
    resource, body, messages = download(client, name, len(data))
    assert body == b"" and messages == 1 and resource.sha256 == sha(data)
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, download, client, name, len(data) + 1)
    assert "read_offset" in err.field_violations
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, download, client, name, -1)
    assert "read_offset" in err.field_violations
    # By uid alone, and with a wrong parent.
    uid = resp.packages[0].resources[0].uid
    assert download(client, f"variants/-/versions/-/packages/-/resources/{uid}")[1] == data
    wrong = name.replace(resp.packages[0].uid, resp.catalog_version.uid)
    expect_error(NOT_FOUND, download, client, wrong)
    for bad in ["", "resources/x", f"variants/-/versions/-/packages/-/resources/{uid}x"]:
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, download, client, bad)


def test_download_is_org_scoped_and_blocked_for_disabled_models(
    client: Client, other_client: Client
) -> None:
    resp = upload(client, "models/priv/versions/1", F("m.onnx", b"secret"))
    name = resp.packages[0].resources[0].name
    expect_error(NOT_FOUND, download, other_client, name)
    from google.protobuf import field_mask_pb2

    client.models.UpdateModel(
        mpb.UpdateModelRequest(
            model=models_pb2.Model(name="models/priv", enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, download, client, name)
    assert err.reason == "MODEL_DISABLED"


def test_same_model_id_in_two_orgs_stays_separate(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    a = upload(client, "models/same/versions/1", F("a.onnx", b"aaa"))
    b = upload(other_client, "models/same/versions/1", F("b.onnx", b"bbbb"))
    assert a.model_created and b.model_created
    assert a.catalog_version.name != b.catalog_version.name
    assert row_counts(registry, client)["resources"] == 1
    assert row_counts(registry, other_client)["resources"] == 1
    assert download(other_client, b.packages[0].resources[0].name)[1] == b"bbbb"


def test_concurrent_uploads_to_one_version(registry: RunningServer, client: Client) -> None:
    n = 6
    payloads = [random_bytes(200_000 + i) for i in range(n)]
    start = threading.Barrier(n)

    def one(i: int) -> vpb.UploadArtifactsResponse:
        start.wait()
        return upload(client, "models/conc/versions/1", F(f"m{i}.onnx", payloads[i]))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert sum(r.model_created for r in results) == 1
    assert len({r.catalog_version.name for r in results}) == 1
    counts = row_counts(registry, client)
    assert counts == {
        "models": 1,
        "versions": 1,
        "variants": 1,
        "catalog_versions": 1,
        "packages": n,
        "resources": n,
    }
    for i, r in enumerate(results):
        assert download(client, r.packages[0].resources[0].name)[1] == payloads[i]
    v = client.versions.GetVersion(vpb.GetVersionRequest(name="models/conc/versions/1"))
    published = client.versions.PublishVersion(vpb.PublishVersionRequest(name=v.name))
    assert published.state == models_pb2.ModelVersion.STATE_PUBLISHED


@pytest.mark.slow
def test_round_trip_several_hundred_mib(client: Client) -> None:
    size = 300 * MiB + 5
    block = random_bytes(MiB)
    data = (block * 301)[:size]
    resp = upload(client, "models/big/versions/1", F("big.onnx", data), chunk=4 * MiB, timeout=600)
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (size, sha(data))
    _, body, _ = download(client, r.name, offset=size - 3 * MiB)
    assert body == data[-3 * MiB :]
