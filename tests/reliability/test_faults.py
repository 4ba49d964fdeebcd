"""Fault injection: the server reaches PostgreSQL and MinIO through Toxiproxy.

Cases: the database down during CreateModel, ConfirmUpload and an upload's commit; the object
store down mid-upload and mid-download, and its answer to an upload's completion lost;
latency; connection resets; a client vanishing mid-stream; the server killed with SIGKILL
mid-upload and restarted (tests/reliability/test_kill.py). After each: the client got a
retryable status (UNAVAILABLE or ABORTED) or success, never a wrong success (what it
acknowledged reads back byte for byte); a retry succeeds once the fault clears; no row
points at a missing object; every object without a row is one GC reclaims; no job stays
running (support/invariants.py).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import grpc
import pytest
from reliability.conftest import Faulty, via, via_address

from domain.limits import LimitSettings
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import models_pb2
from modelregistry.v1 import version_service_pb2 as vpb
from support.cutting_proxy import CuttingProxy
from support.invariants import audit
from support.registry import Client, RunningServer
from support.status import rich
from support.uploads import F, MiB, artifact_requests, chunks, download, random_bytes, sha, upload

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
OK = grpc.StatusCode.OK
PART = 8 * MiB


def outcome(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return OK, fn(*args, **kw)
    except grpc.RpcError as err:
        return rich(err).code, err


def retry(fn, *args, attempts: int = 40, **kw):  # type: ignore[no-untyped-def]
    """Call until it stops answering a retryable status (backing off), as a client would."""
    for i in range(attempts):
        code, result = outcome(fn, *args, **kw)
        if code not in RETRYABLE:
            return code, result
        time.sleep(min(0.1 * 2**i, 1.0))
    return code, result


def check_invariants(f: Faulty) -> None:
    result = audit(f.direct_db, f.direct_store)
    assert result.ok(), result


def model_req(model_id: str) -> mpb.CreateModelRequest:
    return mpb.CreateModelRequest(model_id=model_id, model=models_pb2.Model(framework="onnx"))


# --- the database ----------------------------------------------------------------------


def test_database_down_during_create_model(faulty: Faulty) -> None:
    c = faulty.server.new_org()
    with faulty.pg.down():
        code, _ = outcome(c.models.CreateModel, model_req("m1"), timeout=30)
        assert code in RETRYABLE, code
    code, _ = retry(c.models.CreateModel, model_req("m1"), timeout=30)
    assert code == OK
    assert c.models.ListModels(mpb.ListModelsRequest()).total_size == 1
    check_invariants(faulty)


@pytest.mark.parametrize("cut_after", [0.05, 0.15, 0.3])
def test_database_cut_while_create_model_runs(faulty: Faulty, cut_after: float) -> None:
    """The connection drops at some point of the request (latency makes it last): the
    answer is success or retryable; after a retry the model exists exactly once (a commit
    whose acknowledgement was lost answers ALREADY_EXISTS to the retry)."""
    c = faulty.server.new_org()
    with faulty.pg.toxic("latency", latency=100):
        result: list[object] = []
        t = threading.Thread(
            target=lambda: result.append(outcome(c.models.CreateModel, model_req("m"), timeout=30))
        )
        t.start()
        time.sleep(cut_after)
        faulty.pg.disable()
        t.join(60)
        code, _ = result[0]  # type: ignore[misc]
        assert code == OK or code in RETRYABLE, code
    faulty.pg.enable()
    if code != OK:
        again, _ = retry(c.models.CreateModel, model_req("m"), timeout=30)
        assert again in {OK, grpc.StatusCode.ALREADY_EXISTS}, again
    code, models = retry(c.models.ListModels, mpb.ListModelsRequest(), timeout=30)
    assert code == OK and [m.model_id for m in models.models] == ["m"]
    check_invariants(faulty)


@pytest.mark.parametrize("cut_after", [0.2, 0.6, 1.2])
def test_database_cut_during_an_uploads_commit(faulty: Faulty, cut_after: float) -> None:
    """The bytes are in the object store; the database goes away while the upload records
    them. Success means the bytes read back; a retryable answer means a retry of the same
    upload (by its id) succeeds."""
    c = faulty.server.new_org()
    data = random_bytes(2 * MiB + 123)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    with faulty.pg.toxic("latency", latency=150):
        result: list[object] = []
        t = threading.Thread(
            target=lambda: result.append(outcome(upload, c, "models/m/versions/1", f, timeout=60))
        )
        t.start()
        time.sleep(cut_after)
        faulty.pg.disable()
        t.join(90)
        code, resp = result[0]  # type: ignore[misc]
        assert code == OK or code in RETRYABLE, (code, resp)
    faulty.pg.enable()
    if code != OK:
        code, resp = retry(upload, c, "models/m/versions/1", f, timeout=60)
        assert code == OK, (code, resp)
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (len(data), sha(data))
    assert retry(download, c, r.name)[1][1] == data
    check_invariants(faulty)


@pytest.mark.parametrize("cut_after", [0.1, 0.4, 0.9])
def test_database_cut_during_confirm_upload(faulty: Faulty, cut_after: float) -> None:
    """A presigned PUT went through; the database goes away while ConfirmUpload records
    it. Success or retryable; a retry records it, or says it already was
    (FAILED_PRECONDITION UPLOAD_COMMITTED): exactly one resource, its bytes intact."""
    import urllib.request

    c = faulty.server.new_org()
    data = random_bytes(MiB + 17)
    spec = vpb.FileSpec(file_name="model.onnx", size_bytes=len(data), sha256=sha(data))
    got = c.versions.GetUploadUrl(
        vpb.GetUploadUrlRequest(parent="models/m/versions/1", format="onnx", file=spec)
    )
    put = urllib.request.Request(got.url, data=data, method="PUT")
    with urllib.request.urlopen(put, timeout=60) as resp:
        assert resp.status == 200
    req = vpb.ConfirmUploadRequest(
        parent="models/m/versions/1", storage_key=got.storage_key, format="onnx", file=spec
    )
    with faulty.pg.toxic("latency", latency=150):
        result: list[object] = []
        t = threading.Thread(
            target=lambda: result.append(outcome(c.versions.ConfirmUpload, req, timeout=60))
        )
        t.start()
        time.sleep(cut_after)
        faulty.pg.disable()
        t.join(90)
        code, resp = result[0]  # type: ignore[misc]
        assert code == OK or code in RETRYABLE, (code, resp)
    faulty.pg.enable()
    if code != OK:
        code, resp = retry(c.versions.ConfirmUpload, req, timeout=60)
        if code != OK:
            assert code == grpc.StatusCode.FAILED_PRECONDITION, resp
            assert rich(resp).reason == "UPLOAD_COMMITTED", rich(resp)
    code, listed = retry(
        c.models.ListModelArtifactPackages, mpb.ListModelArtifactPackagesRequest(name="models/m")
    )
    assert code == OK, listed
    resources = [r for p in listed.packages for r in p.resources]
    assert len(resources) == 1
    assert download(c, resources[0].name)[1] == data
    check_invariants(faulty)


def test_connection_resets_then_recovery(faulty: Faulty) -> None:
    c = faulty.server.new_org()
    c.models.CreateModel(model_req("before"))
    with faulty.pg.toxic("reset_peer", timeout=0):
        for _ in range(3):
            code, _ = outcome(c.models.ListModels, mpb.ListModelsRequest(), timeout=30)
            assert code == OK or code in RETRYABLE, code
    code, resp = retry(c.models.ListModels, mpb.ListModelsRequest(), timeout=30)
    assert code == OK and resp.total_size == 1
    with faulty.s3.toxic("reset_peer", timeout=0):
        code, _ = outcome(
            upload, c, "models/before/versions/1", F("m.onnx", b"abc" * 100), timeout=60
        )
        assert code in RETRYABLE, code
    code, resp = retry(upload, c, "models/before/versions/1", F("m.onnx", b"abc" * 100))
    assert code == OK
    check_invariants(faulty)


def test_latency_slows_but_does_not_fail(faulty: Faulty) -> None:
    c = faulty.server.new_org()
    data = random_bytes(MiB)
    with (
        faulty.pg.toxic("latency", latency=100, jitter=50),
        faulty.s3.toxic("latency", latency=100, jitter=50),
    ):
        c.models.CreateModel(model_req("slow"), timeout=60)
        resp = upload(c, "models/slow/versions/1", F("m.onnx", data), timeout=120)
        r = resp.packages[0].resources[0]
        assert download(c, r.name)[1] == data
    check_invariants(faulty)


# --- the object store ------------------------------------------------------------------


class Held:
    """An UploadArtifacts stream that sends `first` bytes, then waits for `go`."""

    def __init__(self, c: Client, f: F, first: int, parent: str = "models/m/versions/1") -> None:
        self.go = threading.Event()

        def requests() -> Iterator[vpb.UploadArtifactsRequest]:
            yield from artifact_requests(parent, [])
            yield vpb.UploadArtifactsRequest(
                file=vpb.UploadFileHeader(file=f.spec(), format=f.fmt, upload_id=f.upload_id)
            )
            for piece in chunks(f.data[:first]):
                yield vpb.UploadArtifactsRequest(chunk=piece)
            self.go.wait(60)
            for piece in chunks(f.data[first:]):
                yield vpb.UploadArtifactsRequest(chunk=piece)

        self.call = c.versions.UploadArtifacts.future(requests(), timeout=120)

    def result(self):  # type: ignore[no-untyped-def]
        self.go.set()
        try:
            return OK, self.call.result()
        except grpc.RpcError as err:
            return rich(err).code, err


def committed(c: Client, upload_id: str) -> int:
    try:
        return c.versions.QueryUploadStatus(
            vpb.QueryUploadStatusRequest(upload_id=upload_id), timeout=10
        ).committed_size
    except grpc.RpcError:
        return -1


def wait_committed(c: Client, upload_id: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while committed(c, upload_id) < at_least:
        assert time.monotonic() < deadline, "upload did not commit in time"
        time.sleep(0.05)


def _upload_through_an_object_store_outage(faulty: Faulty, *, resume: bool) -> None:
    c = faulty.server.new_org()
    data = random_bytes(2 * PART + 777)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    held = Held(c, f, first=PART + MiB)
    wait_committed(c, f.upload_id, PART)
    with faulty.s3.down():
        code, err = held.result()
        assert code == grpc.StatusCode.UNAVAILABLE, code
        details = rich(err)
        assert details.retry_delay_s, "UNAVAILABLE carries RetryInfo"
        assert details.metadata["upload_id"] == f.upload_id
        # the second part never reached the store: only the first one counts
        assert details.metadata["committed_size"] == str(PART)
    if resume:
        code, status = retry(
            c.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id=f.upload_id)
        )
        assert code == OK, status
        done = status.committed_size
        assert done == PART and not status.complete
        again = F("model.onnx", data, upload_id=f.upload_id, write_offset=done)
    else:
        again = F("model.onnx", data)
    code, resp = retry(upload, c, "models/m/versions/1", again, timeout=120)
    assert code == OK, resp
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (len(data), sha(data))
    assert download(c, r.name)[1] == data
    check_invariants(faulty)


def test_object_store_down_mid_upload_then_upload_again(faulty: Faulty) -> None:
    _upload_through_an_object_store_outage(faulty, resume=False)


def test_object_store_down_mid_upload_then_resume(faulty: Faulty) -> None:
    _upload_through_an_object_store_outage(faulty, resume=True)


def test_object_store_down_with_a_part_in_flight_then_resume(faulty: Faulty) -> None:
    """The store goes away while the second part is on its way (a slow link): that part
    is lost, so the committed size counts only the first, the part the store confirmed,
    and the upload resumes from there once the store is back."""
    c = faulty.server.new_org()
    data = random_bytes(2 * PART + 777)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    held = Held(c, f, first=PART + MiB)
    wait_committed(c, f.upload_id, PART)
    with faulty.s3.toxic("bandwidth", stream="upstream", rate=1024):  # KB/s: 8 s a part
        held.go.set()
        time.sleep(1.5)  # the second part is in flight now
        with faulty.s3.down():
            code, err = held.result()
    assert code == grpc.StatusCode.UNAVAILABLE, code
    details = rich(err)
    assert details.retry_delay_s and details.metadata["committed_size"] == str(PART)
    code, status = retry(
        c.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id=f.upload_id)
    )
    assert code == OK and status.committed_size == PART, status
    again = F("model.onnx", data, upload_id=f.upload_id, write_offset=PART)
    code, resp = retry(upload, c, "models/m/versions/1", again, timeout=120)
    assert code == OK, resp
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (len(data), sha(data))
    assert download(c, r.name)[1] == data
    check_invariants(faulty)


def test_object_store_down_mid_download_then_resume(faulty: Faulty) -> None:
    c = faulty.server.new_org()
    data = random_bytes(6 * MiB)
    r = upload(c, "models/m/versions/1", F("model.onnx", data)).packages[0].resources[0]
    got = bytearray()
    stream = c.versions.DownloadArtifact(vpb.DownloadArtifactRequest(name=r.name), timeout=60)
    code = OK
    with faulty.s3.down():
        try:
            for i, msg in enumerate(stream):
                got += msg.data
                if i == 0:
                    time.sleep(0.5)  # the proxy is down now; the server's reads fail
        except grpc.RpcError as err:
            code = rich(err).code
    assert code == OK or code in RETRYABLE, code
    if code != OK:
        rest = retry(download, c, r.name, len(got))
        assert rest[0] == OK, rest
        got += rest[1][1]
    assert bytes(got) == data, "the bytes read, resumed at the offset, are the upload's"
    check_invariants(faulty)


# --- the client ------------------------------------------------------------------------


def test_a_vanished_client_frees_its_upload_slot(faulty_backends) -> None:  # type: ignore[no-untyped-def]
    """A client that vanishes mid-stream (cancelled, connection gone) releases its upload
    stream slot; the partial upload stays resumable, nothing is recorded."""
    pg, s3, db, store = faulty_backends
    server = RunningServer(via(db, pg), via(store, s3), limits=LimitSettings(max_upload_streams=2))
    try:
        c = server.new_org()
        for _ in range(4):
            f = F("model.onnx", random_bytes(PART + MiB), upload_id=str(uuid.uuid4()))
            held = Held(c, f, first=PART)
            wait_committed(c, f.upload_id, PART)
            held.call.cancel()
            held.go.set()
        # both slots are free again
        calls = [
            c.versions.UploadArtifacts.future(
                artifact_requests(f"models/m/versions/{i}", [F("m.onnx", b"x" * 10)]), timeout=60
            )
            for i in range(2)
        ]
        for call in calls:
            call.result()
        assert c.models.ListModels(mpb.ListModelsRequest()).total_size == 1
        result = audit(db, store)
        assert result.ok(), result
    finally:
        server.stop()


# The object store's answer to CompleteMultipartUpload (POST <key>?uploadId=...).
COMPLETE = re.compile(rb"POST [^ ]*\?uploadId=")


@pytest.mark.parametrize("size", [2 * MiB + 5, PART + 3 * MiB])
def test_object_store_completes_an_upload_but_its_answer_is_lost(
    pg_server, minio_server, size: int
) -> None:  # type: ignore[no-untyped-def]
    """The object store assembles the uploaded object, but the connection drops before the
    server hears so: the call answers a retryable status and the upload stays resumable.
    Resumed by its id, the server finds the multipart upload gone and the object there,
    reads it back to check its sha256, and records it: the bytes download whole."""
    db, store = pg_server.new_database(), minio_server.new_bucket()
    direct = urlsplit(store).netloc.rsplit("@", 1)[-1]
    with CuttingProxy(direct, lose_reply_to=COMPLETE) as lossy:
        server = RunningServer(db, via_address(store, lossy.address))
        try:
            c = server.new_org()
            data = random_bytes(size)
            f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
            code, err = outcome(upload, c, "models/m/versions/1", f, timeout=60)
            assert lossy.replies_lost == 1
            assert code in RETRYABLE, (code, err)
            code, resp = retry(upload, c, "models/m/versions/1", f, timeout=60)
            assert code == OK, (code, resp)
            r = resp.packages[0].resources[0]
            assert (r.size_bytes, r.sha256) == (size, sha(data))
            assert download(c, r.name)[1] == data
            assert audit(db, store).ok()
        finally:
            server.stop()
