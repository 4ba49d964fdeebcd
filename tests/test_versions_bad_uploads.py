"""Bad uploads: each answers a precise status with details and leaves no rows and no
objects (complete or partial) behind, on both backends."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import models_pb2
from modelregistry.v1 import version_service_pb2 as vpb
from support.fixtures import BACKENDS, backend_urls
from support.registry import Client, RunningServer
from support.status import RichError, expect_error
from support.uploads import (
    F,
    MiB,
    artifact_requests,
    assert_nothing_stored,
    assert_only_resumable_leftovers,
    bundle_header,
    bundle_requests,
    random_bytes,
    row_counts,
    sha,
    upload,
    upload_states,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PARENT = "models/bad/versions/1"


def stream_error(
    code: grpc.StatusCode, c: Client, requests: Iterator[vpb.UploadArtifactsRequest]
) -> RichError:
    return expect_error(code, c.versions.UploadArtifacts, requests, timeout=60)


def bundle_error(
    code: grpc.StatusCode, c: Client, requests: Iterator[vpb.UploadBundleRequest]
) -> RichError:
    return expect_error(code, c.versions.UploadBundle, requests, timeout=60)


def target() -> vpb.UploadArtifactsRequest:
    return vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=PARENT))


def header(f: F) -> vpb.UploadArtifactsRequest:
    return vpb.UploadArtifactsRequest(
        file=vpb.UploadFileHeader(file=f.spec(), format=f.fmt, upload_id=f.upload_id)
    )


def chunk(data: bytes) -> vpb.UploadArtifactsRequest:
    return vpb.UploadArtifactsRequest(chunk=data)


def assert_clean(registry: RunningServer, c: Client) -> None:
    assert_nothing_stored(registry, c)
    assert set(upload_states(registry, c).values()) <= {"aborted"}


# --- checksums and sizes ----------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 12 * MiB], ids=["small", "multipart"])
def test_checksum_mismatch(registry: RunningServer, client: Client, size: int) -> None:
    data = random_bytes(size)
    err = stream_error(
        INVALID, client, artifact_requests(PARENT, [F("m.onnx", data, sha256=sha(b"other"))])
    )
    assert err.reason == "CHECKSUM_MISMATCH"
    assert "file.file.sha256" in err.field_violations
    assert err.metadata["actual_sha256"] == sha(data)
    assert_clean(registry, client)


@pytest.mark.parametrize(
    ("declared", "sent"), [(100, 101), (9 * MiB, 10 * MiB)], ids=["long", "long-multipart"]
)
def test_more_bytes_than_declared(
    registry: RunningServer, client: Client, declared: int, sent: int
) -> None:
    data = random_bytes(sent)
    err = stream_error(
        INVALID,
        client,
        artifact_requests(PARENT, [F("m.onnx", data, size=declared, declare_sha=False)]),
    )
    assert err.reason == "SIZE_MISMATCH"
    assert "file.file.size_bytes" in err.field_violations
    assert_clean(registry, client)


@pytest.mark.parametrize(
    ("declared", "sent"), [(100, 99), (10 * MiB, 9 * MiB)], ids=["short", "short-multipart"]
)
def test_stream_ending_before_the_declared_size(
    registry: RunningServer, client: Client, declared: int, sent: int
) -> None:
    """Indistinguishable from a dropped client: an error, nothing recorded, and the durable
    parts stay with the still open upload (resumable, else reclaimed when it expires)."""
    data = random_bytes(declared)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()))

    def requests() -> Iterator[vpb.UploadArtifactsRequest]:
        yield target()
        yield header(f)
        for i in range(0, sent, MiB):
            yield chunk(data[i : min(i + MiB, sent)])

    err = stream_error(INVALID, client, requests())
    assert err.reason == "UPLOAD_INCOMPLETE"
    assert "file.file.size_bytes" in err.field_violations
    committed = int(err.metadata["committed_size"])
    assert committed == (8 * MiB if sent > 8 * MiB else 0)
    assert f"of the declared {declared} bytes" in err.message
    assert_only_resumable_leftovers(registry, client)
    resumed = F("m.onnx", data, upload_id=f.upload_id, write_offset=committed)
    assert upload(client, PARENT, resumed).packages[0].resources[0].sha256 == sha(data)


def test_zero_byte_weights(registry: RunningServer, client: Client) -> None:
    err = stream_error(
        INVALID, client, artifact_requests(PARENT, [F("m.onnx", b"", declare_sha=False)])
    )
    assert err.reason == "EMPTY_FILE"
    assert_clean(registry, client)


def test_an_empty_sidecar_is_fine(client: Client) -> None:
    resp = upload(client, PARENT, F("m.onnx", b"w"), F("empty.json", b"", kind="config"))
    assert resp.packages[1].resources[0].size_bytes == 0
    assert resp.packages[1].resources[0].sha256 == sha(b"")


def test_a_bad_second_file_discards_the_first(registry: RunningServer, client: Client) -> None:
    files = [F("good.onnx", random_bytes(9 * MiB)), F("bad.onnx", b"abc", sha256=sha(b"x"))]
    err = stream_error(INVALID, client, artifact_requests(PARENT, files))
    assert err.reason == "CHECKSUM_MISMATCH"
    assert_clean(registry, client)


# --- stream structure ------------------------------------------------------------------


def test_empty_stream(registry: RunningServer, client: Client) -> None:
    err = stream_error(INVALID, client, iter([]))
    assert err.reason == "HEADER_MISSING"
    err = bundle_error(INVALID, client, iter([]))
    assert err.reason == "HEADER_MISSING"
    assert_clean(registry, client)


def test_target_missing(registry: RunningServer, client: Client) -> None:
    err = stream_error(INVALID, client, iter([header(F("m.onnx", b"abc")), chunk(b"abc")]))
    assert err.reason == "HEADER_MISSING"
    assert "target" in err.field_violations
    assert_clean(registry, client)


def test_chunk_before_file_header(registry: RunningServer, client: Client) -> None:
    err = stream_error(INVALID, client, iter([target(), chunk(b"abc")]))
    assert err.reason == "HEADER_MISSING"
    assert_clean(registry, client)


def test_no_file_at_all(registry: RunningServer, client: Client) -> None:
    err = stream_error(INVALID, client, iter([target()]))
    assert err.reason == "HEADER_MISSING"
    assert_clean(registry, client)


def test_target_repeated(registry: RunningServer, client: Client) -> None:
    f = F("m.onnx", b"abc")
    err = stream_error(INVALID, client, iter([target(), header(f), chunk(b"abc"), target()]))
    assert err.reason == "HEADER_REPEATED"
    assert_clean(registry, client)


def test_upload_id_repeated_in_one_stream(registry: RunningServer, client: Client) -> None:
    uid = str(uuid.uuid4())
    files = [F("a.onnx", b"a", upload_id=uid), F("b.onnx", b"b", upload_id=uid)]
    err = stream_error(INVALID, client, artifact_requests(PARENT, files))
    assert "file.upload_id" in err.field_violations
    assert_clean(registry, client)


@pytest.mark.parametrize(
    ("f", "bad_field"),
    [
        (F("../../etc/passwd", b"x"), "file.file.file_name"),
        (F("a/../b.onnx", b"x"), "file.file.file_name"),
        (F("", b"x"), "file.file.file_name"),
        (F("bad\x07name.onnx", b"x"), "file.file.file_name"),
        (F("dir/", b"x"), "file.file.file_name"),
        (F("...", b"x"), "file.file.file_name"),
        (F("m.onnx", b"x", fmt="exe"), "file.format"),
        (F("m.onnx", b"x", fmt=""), "file.format"),
        (F("m.onnx", b"x", kind="virus"), "file.file.kind"),
        (F("m.onnx", b"x", sha256="XYZ"), "file.file.sha256"),
        (F("m.onnx", b"x", size=-5), "file.file.size_bytes"),
        (F("m.onnx", b"x", extra={"quantization": "int3"}), "file.quantization"),
        (F("m.onnx", b"x", extra={"runtime": "Bad Runtime"}), "file.runtime"),
        (F("m.onnx", b"x", upload_id="not-a-uuid"), "file.upload_id"),
    ],
)
def test_bad_file_header(registry: RunningServer, client: Client, f: F, bad_field: str) -> None:
    err = stream_error(INVALID, client, artifact_requests(PARENT, [f]))
    assert bad_field in err.field_violations, err.field_violations
    assert_clean(registry, client)


@pytest.mark.parametrize(
    "parent", ["", "models/x", "models/-/versions/" + str(uuid.uuid4()), "models/X/versions/1"]
)
def test_bad_target(registry: RunningServer, client: Client, parent: str) -> None:
    err = stream_error(INVALID, client, artifact_requests(parent, [F("m.onnx", b"x")]))
    assert "target.parent" in err.field_violations
    assert_clean(registry, client)


# --- resumption misuse ------------------------------------------------------------------


def test_foreign_upload_id_is_not_found(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    theirs = upload(other_client, PARENT, F("m.onnx", b"abc", upload_id=str(uuid.uuid4())))
    uid = theirs.files[0].upload_id
    for offset in (0, 3):
        err = stream_error(
            grpc.StatusCode.NOT_FOUND,
            client,
            artifact_requests(PARENT, [F("m.onnx", b"abc", upload_id=uid, write_offset=offset)]),
        )
        assert err.metadata["resource_name"] == f"uploads/{uid}"
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        client.versions.QueryUploadStatus,
        vpb.QueryUploadStatusRequest(upload_id=uid),
    )
    assert_clean(registry, client)
    assert row_counts(registry, other_client)["resources"] == 1


def test_resuming_an_unknown_upload(registry: RunningServer, client: Client) -> None:
    f = F("m.onnx", b"abcdef", upload_id=str(uuid.uuid4()), write_offset=3)
    err = stream_error(grpc.StatusCode.NOT_FOUND, client, artifact_requests(PARENT, [f]))
    assert "start a new upload" in err.message
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        client.versions.QueryUploadStatus,
        vpb.QueryUploadStatusRequest(upload_id=f.upload_id),
    )
    err = expect_error(
        INVALID, client.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id="x")
    )
    assert "upload_id" in err.field_violations
    assert_clean(registry, client)


def test_a_committed_upload_cannot_be_continued(client: Client) -> None:
    f = F("m.onnx", b"abc", upload_id=str(uuid.uuid4()))
    upload(client, PARENT, f)
    err = stream_error(grpc.StatusCode.FAILED_PRECONDITION, client, artifact_requests(PARENT, [f]))
    assert err.reason == "UPLOAD_COMMITTED"


# --- the target changing under the upload -----------------------------------------------


def test_model_deleted_mid_upload(registry: RunningServer, client: Client) -> None:
    client.models.CreateModel(
        mpb.CreateModelRequest(model_id="bad", model=models_pb2.Model(framework="onnx"))
    )
    uid = str(uuid.uuid4())
    data = random_bytes(20 * MiB)
    resume = threading.Event()

    def requests() -> Iterator[vpb.UploadArtifactsRequest]:
        yield target()
        yield header(F("m.onnx", data, upload_id=uid))
        for i in range(0, 10 * MiB, MiB):
            yield chunk(data[i : i + MiB])
        resume.wait(30)
        for i in range(10 * MiB, len(data), MiB):
            yield chunk(data[i : i + MiB])

    call = client.versions.UploadArtifacts.future(requests(), timeout=60)
    try:
        _wait_committed(client, uid, 1)
        client.models.DeleteModel(mpb.DeleteModelRequest(name="models/bad"))
    finally:
        resume.set()
    with pytest.raises(grpc.RpcError) as info:
        call.result()
    assert info.value.code() == grpc.StatusCode.ABORTED
    err = expect_error(grpc.StatusCode.ABORTED, _raise, info.value)
    assert err.reason == "TARGET_DELETED"
    assert_clean(registry, client)


def _raise(err: BaseException) -> None:
    raise err


def _wait_committed(c: Client, upload_id: str, at_least: int, timeout: float = 30) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = c.versions.QueryUploadStatus(vpb.QueryUploadStatusRequest(upload_id=upload_id))
            if status.committed_size >= at_least:
                return status.committed_size
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        time.sleep(0.05)
    raise AssertionError(f"upload {upload_id} did not commit {at_least} bytes in time")


# --- bundles -----------------------------------------------------------------------------


def test_bundle_extras_and_kinds_must_match(registry: RunningServer, client: Client) -> None:
    primary, extras = F("m.onnx", b"w" * 10), [F("a.txt", b"a"), F("b.txt", b"b")]
    err = bundle_error(
        INVALID, client, bundle_requests(PARENT, primary, extras, kinds=["tokenizer"])
    )
    assert "header.extras_kind" in err.field_violations
    assert_clean(registry, client)


@pytest.mark.parametrize(
    ("extras", "kinds", "bad_field"),
    [
        (
            [F("a.txt", b"a", declare_size=False), F("b.txt", b"b")],
            None,
            "header.extras[0].size_bytes",
        ),
        ([F("m.onnx", b"dup")], None, "header.extras[0].file_name"),
        ([F("../a.txt", b"a")], None, "header.extras[0].file_name"),
        ([F("a.txt", b"a")], ["nonsense"], "header.extras[0].kind"),
    ],
)
def test_bad_bundle_header(
    registry: RunningServer,
    client: Client,
    extras: list[F],
    kinds: list[str] | None,
    bad_field: str,
) -> None:
    err = bundle_error(
        INVALID, client, bundle_requests(PARENT, F("m.onnx", b"w" * 10), extras, kinds=kinds)
    )
    assert bad_field in err.field_violations, err.field_violations
    assert_clean(registry, client)


def test_bundle_primary_size_required(registry: RunningServer, client: Client) -> None:
    primary = F("m.onnx", b"w" * 10, declare_size=False)
    err = bundle_error(INVALID, client, bundle_requests(PARENT, primary, [F("a.txt", b"a")]))
    assert "header.primary.size_bytes" in err.field_violations
    assert_clean(registry, client)


def test_bundle_header_repeated_and_missing(registry: RunningServer, client: Client) -> None:
    primary, extras = F("m.onnx", b"w" * 10), [F("a.txt", b"a")]
    h = bundle_header(PARENT, primary, extras)
    err = bundle_error(INVALID, client, iter([h, vpb.UploadBundleRequest(chunk=b"w" * 5), h]))
    assert err.reason == "HEADER_REPEATED"
    err = bundle_error(INVALID, client, iter([vpb.UploadBundleRequest(chunk=b"w")]))
    assert err.reason == "HEADER_MISSING"
    assert_clean(registry, client)


def test_bundle_chunks_past_the_last_file(registry: RunningServer, client: Client) -> None:
    primary, extras = F("m.onnx", random_bytes(7 * MiB)), [F("a.txt", b"abc")]

    def requests() -> Iterator[vpb.UploadBundleRequest]:
        yield from bundle_requests(PARENT, primary, extras)
        yield vpb.UploadBundleRequest(chunk=b"surplus")

    err = bundle_error(INVALID, client, requests())
    assert err.reason == "SIZE_MISMATCH"
    assert "header.extras[0].size_bytes" in err.field_violations
    assert_clean(registry, client)


def test_bundle_sidecar_checksum_mismatch(registry: RunningServer, client: Client) -> None:
    primary = F("m.onnx", random_bytes(6 * MiB))
    extras = [F("tokens.txt", b"abc", sha256=sha(b"abd"))]
    err = bundle_error(INVALID, client, bundle_requests(PARENT, primary, extras))
    assert err.reason == "CHECKSUM_MISMATCH"
    assert "header.extras[0].sha256" in err.field_violations
    assert_clean(registry, client)


def test_bundle_ending_early(registry: RunningServer, client: Client) -> None:
    primary, extras = F("m.onnx", b"w" * 100), [F("a.txt", b"abc")]
    upload_id = str(uuid.uuid4())
    h = bundle_header(PARENT, primary, extras, upload_id=upload_id)
    err = bundle_error(INVALID, client, iter([h, vpb.UploadBundleRequest(chunk=b"w" * 100)]))
    assert err.reason == "UPLOAD_INCOMPLETE"
    assert "header.extras[0].size_bytes" in err.field_violations
    assert err.metadata["committed_size"] == "100"
    assert_only_resumable_leftovers(registry, client)
    resp = client.versions.UploadBundle(
        iter(
            [
                bundle_header(PARENT, primary, extras, upload_id=upload_id, write_offset=100),
                vpb.UploadBundleRequest(chunk=b"abc"),
            ]
        )
    )
    assert [r.size_bytes for r in resp.package.resources] == [100, 3]


# --- the per-file size cap -----------------------------------------------------------------

CAP = 3 * MiB


@pytest.fixture(scope="module", params=BACKENDS)
def capped(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tmp: Path = tmp_path_factory.mktemp(f"capped-{request.param}")
    db, store = backend_urls(request, request.param, tmp)
    server = RunningServer(db, store, max_upload_file_bytes=CAP)
    try:
        yield server
    finally:
        server.stop()


def test_declared_size_over_the_cap(capped: RunningServer) -> None:
    c = capped.new_org()
    err = stream_error(INVALID, c, artifact_requests(PARENT, [F("m.onnx", b"x", size=CAP + 1)]))
    assert err.reason == "FILE_TOO_LARGE"
    assert err.metadata["limit_bytes"] == str(CAP)
    assert "file.file.size_bytes" in err.field_violations
    assert_clean(capped, c)


def test_undeclared_size_streaming_past_the_cap(capped: RunningServer) -> None:
    c = capped.new_org()
    data = random_bytes(CAP + 1)
    err = stream_error(
        INVALID,
        c,
        artifact_requests(PARENT, [F("m.onnx", data, declare_size=False, declare_sha=False)]),
    )
    assert err.reason == "FILE_TOO_LARGE"
    assert_clean(capped, c)
    # Exactly at the cap is fine, and bundles apply it per file.
    upload(c, PARENT, F("m.onnx", data[:CAP]))
    resp = c.versions.UploadBundle(
        bundle_requests("models/b/versions/1", F("m.onnx", data[:CAP]), [F("x.bin", data[:CAP])]),
        timeout=60,
    )
    assert len(resp.package.resources) == 2
