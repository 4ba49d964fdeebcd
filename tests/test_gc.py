"""Garbage collection (domain/gc.py, `modelregistry gc`) on both backends, each on a fresh
server of its own (a collection sweeps the whole store): unreferenced objects go, referenced
ones stay (also while uploads are in flight or being confirmed), the grace window counts
from when an object lost its last reference, incomplete uploads and expired upload
sessions are cleaned up, and --dry-run changes nothing."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest

from domain import gc
from modelregistry.v1 import version_service_pb2 as vpb
from storage.objectstore import ObjectStore
from storage.objectstore.multipart import multipart_for
from storage.orm import utcnow
from support.fixtures import BACKENDS, backend_urls
from support.registry import Client, RunningServer
from support.serve import run_cli
from support.status import expect_error
from support.uploads import (
    F,
    MiB,
    chunks,
    download,
    incomplete,
    objects,
    org_id,
    random_bytes,
    sha,
    store_of,
    upload,
)

PART = 8 * MiB


@pytest.fixture(scope="module", params=BACKENDS)
def reg(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    db, store = backend_urls(request, request.param, tmp_path_factory.mktemp(f"gc-{request.param}"))
    server = RunningServer(db, store)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def c(reg: RunningServer) -> Client:
    return reg.new_org()


def run(reg: RunningServer, **kw: object) -> tuple[gc.Report, list[str]]:
    lines: list[str] = []
    report = gc.collect(reg._sessions, store_of(reg), emit=lines.append, **kw)  # type: ignore[arg-type]
    assert not report.errors, report.errors
    return report, lines


def deleted(report: gc.Report) -> set[str]:
    return {o.key for o in report.deleted}


def stray(store: ObjectStore, oid: str, name: str = "stray.onnx") -> str:
    key = f"orgs/{oid}/models/x/versions/1/{uuid.uuid4()}/{name}"
    store.put(key, b"stray bytes")
    return key


def test_deletes_only_unreferenced_objects(reg: RunningServer, c: Client) -> None:
    kept = upload(c, "models/m/versions/1", F("model.onnx", random_bytes(1000)))
    gone = upload(c, "models/m/versions/2", F("model.onnx", b"deleted version"))
    c.versions.DeleteVersion(vpb.DeleteVersionRequest(name="models/m/versions/2"))
    store = store_of(reg)
    oid = org_id(reg, c)
    loose = [stray(store, oid), f"catalog/{uuid.uuid4()}/leftover.bin"]
    store.put(loose[1], b"x")
    all_keys = set(objects(reg, c))
    assert len(all_keys) == 3

    # Dry run: reports, changes nothing.
    report, lines = run(reg, grace=timedelta(0), dry_run=True)
    expected = (all_keys - {_key_of(reg, c, kept)}) | {loose[1]}
    assert expected <= deleted(report)
    assert _key_of(reg, c, kept) not in deleted(report)
    assert any(line.startswith("would delete ") for line in lines)
    assert set(objects(reg, c)) == all_keys and store.stat(loose[1]) is not None

    report, lines = run(reg, grace=timedelta(0))
    assert expected <= deleted(report)
    assert set(objects(reg, c)) == {_key_of(reg, c, kept)}
    assert store.stat(loose[1]) is None
    assert any(line.startswith(f"deleted {loose[0]} (11 bytes, ") for line in lines)
    # The referenced object is intact and downloadable; the version can be published.
    r = kept.packages[0].resources[0]
    assert download(c, r.name)[1] is not None
    c.versions.PublishVersion(vpb.PublishVersionRequest(name="models/m/versions/1"))
    assert gone.files  # (its bytes were the garbage)


def _key_of(reg: RunningServer, c: Client, resp: vpb.UploadArtifactsResponse) -> str:
    upload_id = resp.files[0].upload_id
    (key,) = [k for k in objects(reg, c) if f"/{upload_id}/" in k]
    return key


def test_young_objects_stay(reg: RunningServer, c: Client) -> None:
    store = store_of(reg)
    key = stray(store, org_id(reg, c))
    report, _ = run(reg, grace=timedelta(days=7))
    assert key not in deleted(report) and report.kept_young >= 1
    assert store.stat(key) is not None


def test_grace_counts_from_losing_the_last_reference(reg: RunningServer, c: Client) -> None:
    """An object older than the grace whose version is deleted now is kept for another
    grace: the first run marks it, a run a grace later deletes it."""
    grace = timedelta(seconds=3)
    resp = upload(c, "models/g/versions/1", F("model.onnx", b"old bytes"))
    key = _key_of(reg, c, resp)
    time.sleep(3.5)  # the object is now older than the grace...
    c.versions.DeleteVersion(vpb.DeleteVersionRequest(name="models/g/versions/1"))
    report, lines = run(reg, grace=grace)  # ...but has only just lost its reference
    assert key not in deleted(report)
    assert any(info.key == key for info, _due in report.pending)
    assert any(line.startswith(f"kept {key}: unreferenced, deletable after") for line in lines)
    report, _ = run(reg, grace=grace)
    assert key not in deleted(report)
    time.sleep(3.5)
    report, _ = run(reg, grace=grace)
    assert key in deleted(report)
    assert key not in objects(reg, c)
    # Its marker went with it.
    assert gc.mark_key(key) not in {o.key for o in store_of(reg).list(gc.MARK_PREFIX)}


class Interrupted:
    """An UploadArtifacts call that sends the first `first` bytes of each file, then waits
    to be cancelled (a client whose connection dropped)."""

    def __init__(self, c: Client, parent: str, files: list[F], first: int) -> None:
        self.release = threading.Event()

        def requests() -> Iterator[vpb.UploadArtifactsRequest]:
            yield vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
            for i, f in enumerate(files):
                yield vpb.UploadArtifactsRequest(
                    file=vpb.UploadFileHeader(file=f.spec(), format=f.fmt, upload_id=f.upload_id)
                )
                data = f.data if i < len(files) - 1 else f.data[:first]
                yield from (vpb.UploadArtifactsRequest(chunk=p) for p in chunks(data))
            self.release.wait(60)

        self.call = c.versions.UploadArtifacts.future(requests(), timeout=120)

    def cancel(self) -> None:
        self.call.cancel()
        self.release.set()


def committed(c: Client, upload_id: str) -> int:
    try:
        return c.versions.QueryUploadStatus(
            vpb.QueryUploadStatusRequest(upload_id=upload_id)
        ).committed_size
    except grpc.RpcError:
        return -1


def wait_for(cond: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_uploads_in_flight_are_referenced_then_expire(reg: RunningServer, c: Client) -> None:
    done = F("a.onnx", random_bytes(1000), upload_id=str(uuid.uuid4()))
    partial = F("b.onnx", random_bytes(2 * PART + 5), upload_id=str(uuid.uuid4()))
    call = Interrupted(c, "models/f/versions/1", [done, partial], first=PART + MiB)
    wait_for(lambda: committed(c, partial.upload_id) >= PART)
    call.cancel()
    wait_for(lambda: incomplete(reg, c) != [])
    completed_keys = objects(reg, c)  # a.onnx, complete but not recorded
    assert len(completed_keys) == 1

    # Open sessions reference their keys: nothing is touched, even with no grace.
    report, _ = run(reg, grace=timedelta(0))
    assert objects(reg, c) == completed_keys
    assert incomplete(reg, c) != []
    assert not set(completed_keys) & deleted(report)

    # A day later the sessions have expired: their objects and parts are removed.
    report, lines = run(reg, grace=timedelta(days=7), now=utcnow() + timedelta(hours=25))
    assert {done.upload_id, partial.upload_id} <= set(report.expired_sessions)
    assert any(f"expired upload session {partial.upload_id}" in line for line in lines)
    assert objects(reg, c) == []
    assert incomplete(reg, c) == []
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        c.versions.QueryUploadStatus,
        vpb.QueryUploadStatusRequest(upload_id=partial.upload_id),
    )
    assert err.reason == "UPLOAD_EXPIRED"


def test_resumable_upload_survives_gc(reg: RunningServer, c: Client) -> None:
    data = random_bytes(2 * PART + 77)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    call = Interrupted(c, "models/r/versions/1", [f], first=PART + 1)
    wait_for(lambda: committed(c, f.upload_id) >= PART)
    call.cancel()
    run(reg, grace=timedelta(0))
    at = committed(c, f.upload_id)
    assert at == PART
    resp = upload(
        c, "models/r/versions/1", F("model.onnx", data, upload_id=f.upload_id, write_offset=at)
    )
    assert resp.packages[0].resources[0].sha256 == sha(data)


def test_stale_orphan_multipart_is_aborted(reg: RunningServer, c: Client) -> None:
    store = store_of(reg)
    key = f"orgs/{org_id(reg, c)}/models/o/versions/1/{uuid.uuid4()}/orphan.onnx"
    mp = multipart_for(store)
    upload_id = mp.begin(key)
    mp.upload_part(key, upload_id, 1, b"z" * 1024)
    assert incomplete(reg, c) == [key]
    run(reg, grace=timedelta(days=1))
    assert incomplete(reg, c) == [key]  # young
    _, lines = run(reg, grace=timedelta(days=1), now=utcnow() + timedelta(days=2))
    assert incomplete(reg, c) == []
    assert any(line.startswith(f"aborted incomplete upload {key}") for line in lines)


def test_presigned_put_is_referenced_until_its_session_expires(
    reg: RunningServer, c: Client
) -> None:
    if not reg.object_store.startswith("s3://"):
        pytest.skip("presigned URLs need the S3/MinIO store")
    got = c.versions.GetUploadUrl(
        vpb.GetUploadUrlRequest(
            parent="models/p/versions/1", format="onnx", file=vpb.FileSpec(file_name="m.onnx")
        )
    )
    req = urllib.request.Request(got.url, data=b"put bytes", method="PUT")
    urllib.request.urlopen(req, timeout=30).close()
    run(reg, grace=timedelta(0))
    assert objects(reg, c) == [got.storage_key]
    report, _ = run(reg, grace=timedelta(0), now=utcnow() + timedelta(hours=25))
    assert got.storage_key in deleted(report)
    assert objects(reg, c) == []


def test_gc_racing_uploads_and_confirms_never_deletes_a_referenced_object(
    reg: RunningServer, c: Client
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def collector() -> None:
        while not stop.is_set():
            try:
                run(reg, grace=timedelta(0))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    presign = reg.object_store.startswith("s3://")
    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    recorded: list[tuple[str, bytes]] = []
    try:
        for i in range(6):
            data = random_bytes(50_000 + i)
            resp = upload(c, f"models/race/versions/{i}", F("model.onnx", data))
            recorded.append((resp.packages[0].resources[0].name, data))
            if presign:
                got = c.versions.GetUploadUrl(
                    vpb.GetUploadUrlRequest(
                        parent=f"models/race/versions/{i}",
                        format="onnx",
                        file=vpb.FileSpec(file_name="p.onnx", size_bytes=len(data)),
                    )
                )
                urllib.request.urlopen(
                    urllib.request.Request(got.url, data=data, method="PUT"), timeout=30
                ).close()
                conf = confirm_retrying(c, f"models/race/versions/{i}", got.storage_key, data)
                recorded.append((conf.package.resources[0].name, data))
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    run(reg, grace=timedelta(0))
    for name, data in recorded:
        assert download(c, name)[1] == data


def confirm_retrying(c: Client, parent: str, key: str, data: bytes) -> vpb.ConfirmUploadResponse:
    """ConfirmUpload, retried on ABORTED: with no grace at all the collector may take the
    confirm's fresh copy before it is recorded; the confirm then refuses (and may be
    retried) rather than record a missing object."""
    for _attempt in range(20):
        try:
            return c.versions.ConfirmUpload(
                vpb.ConfirmUploadRequest(
                    parent=parent,
                    storage_key=key,
                    format="onnx",
                    file=vpb.FileSpec(file_name="p.onnx", size_bytes=len(data)),
                )
            )
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ABORTED:  # type: ignore[attr-defined]
                raise
    raise AssertionError("ConfirmUpload kept being aborted")


def test_cli(reg: RunningServer, c: Client, tmp_path: object) -> None:
    store = store_of(reg)
    key = stray(store, org_id(reg, c), "cli.onnx")
    base = ["--database-url", reg.database_url, "--object-store", reg.object_store]
    out = run_cli(tmp_path, "gc", "--grace", "0", "--dry-run", *base)  # type: ignore[arg-type]
    assert f"would delete {key} (11 bytes, " in out
    assert "gc (dry run): would delete" in out.splitlines()[-1]
    assert store.stat(key) is not None
    out = run_cli(tmp_path, "gc", "--grace", "7d", *base)  # type: ignore[arg-type]
    assert key not in out and "younger than the grace of 7d" in out
    out = run_cli(tmp_path, "gc", "--grace", "0s", *base)  # type: ignore[arg-type]
    assert f"deleted {key} (11 bytes, " in out
    assert out.splitlines()[-1].startswith("gc: deleted ")
    assert store.stat(key) is None


def test_cli_bad_grace(tmp_path: object) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "gc", "--grace", "soon"],
        cwd=tmp_path,  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("modelregistry gc: --grace: bad duration 'soon'")
    assert "Traceback" not in done.stderr


def test_parse_duration() -> None:
    assert gc.parse_duration("7d") == timedelta(days=7)
    assert gc.parse_duration("1d12h") == timedelta(hours=36)
    assert gc.parse_duration("0") == timedelta(0)
    assert gc.parse_duration("90s") == timedelta(seconds=90)
    for bad in ("", "7", "d", "7x", "-1d"):
        if bad == "7":
            assert gc.parse_duration(bad) == timedelta(seconds=7)
            continue
        with pytest.raises(ValueError):
            gc.parse_duration(bad)
    assert gc.format_duration(timedelta(days=7)) == "7d"
