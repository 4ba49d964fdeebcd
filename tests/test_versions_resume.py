"""Resumable uploads (ByteStream QueryWriteStatus semantics) over a real server, on both
backends: a client cancels mid-stream, asks how much is committed and continues; the
final object is the whole file, verified by sha256."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import update

from domain import uploads as domain_uploads
from modelregistry.v1 import version_service_pb2 as vpb
from storage.db import transaction
from storage.objectstore.multipart import multipart_for
from storage.orm import UploadSession
from support.registry import Client, RunningServer
from support.status import expect_error
from support.uploads import (
    F,
    MiB,
    artifact_requests,
    assert_nothing_stored,
    bundle_header,
    chunks,
    download,
    incomplete,
    objects,
    random_bytes,
    row_counts,
    sha,
    store_of,
    upload,
    upload_states,
)

PARENT = "models/res/versions/1"
PART = 8 * MiB  # the part size of both stores in tests


def status(c: Client, upload_id: str) -> vpb.QueryUploadStatusResponse:
    return c.versions.QueryUploadStatus(vpb.QueryUploadStatusRequest(upload_id=upload_id))


def wait_committed(c: Client, upload_id: str, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed = status(c, upload_id).committed_size
            if committed >= at_least:
                return committed
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        time.sleep(0.05)
    raise AssertionError(f"upload {upload_id} did not commit {at_least} bytes in time")


class Interrupted:
    """An UploadArtifacts call that sends `first` bytes of `f`, then blocks until
    cancelled (as a client whose connection drops)."""

    def __init__(self, c: Client, f: F, first: int, parent: str = PARENT) -> None:
        self.release = threading.Event()
        self.sent = 0

        def requests() -> Iterator[vpb.UploadArtifactsRequest]:
            yield vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
            yield vpb.UploadArtifactsRequest(
                file=vpb.UploadFileHeader(
                    file=f.spec(), format=f.fmt, upload_id=f.upload_id, write_offset=0
                )
            )
            for piece in chunks(f.data[:first]):
                self.sent += len(piece)
                yield vpb.UploadArtifactsRequest(chunk=piece)
            self.release.wait(60)
            for piece in chunks(f.data[first:]):
                yield vpb.UploadArtifactsRequest(chunk=piece)

        self.call = c.versions.UploadArtifacts.future(requests(), timeout=120)

    def cancel(self) -> None:
        self.call.cancel()
        self.release.set()
        with pytest.raises(grpc.FutureCancelledError):
            self.call.result()


def test_resume_after_cancel_with_a_client_chosen_id(
    registry: RunningServer, client: Client
) -> None:
    data = random_bytes(3 * PART + 12345)
    f = F("model.onnx", data, upload_id=str(uuid.uuid4()))
    first = Interrupted(client, f, first=2 * PART + 3 * MiB)
    wait_committed(client, f.upload_id, 2 * PART)
    first.cancel()
    s1 = status(client, f.upload_id)
    # Durable parts survive; the buffered tail (3 MiB, less than a part) was lost.
    assert s1.committed_size == 2 * PART
    assert not s1.complete
    expires = s1.expire_time.ToDatetime(tzinfo=UTC)
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24, minutes=1)
    assert objects(registry, client) == []  # nothing visible yet
    resumed = F("model.onnx", data, upload_id=f.upload_id, write_offset=s1.committed_size)
    resp = upload(client, PARENT, resumed)
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (len(data), sha(data))
    assert resp.files[0].upload_id == f.upload_id
    assert download(client, r.name)[1] == data
    s2 = status(client, f.upload_id)
    assert s2.complete and s2.committed_size == len(data) >= s1.committed_size
    assert incomplete(registry, client) == []


def test_resume_with_the_server_issued_id_from_the_response_header(client: Client) -> None:
    data = random_bytes(PART + 5 * MiB)
    first = Interrupted(client, F("m.onnx", data), first=PART + 2 * MiB)
    metadata = dict(first.call.initial_metadata())
    upload_id = metadata["x-upload-id"]
    assert str(uuid.UUID(upload_id)) == upload_id
    committed = wait_committed(client, upload_id, PART)
    first.cancel()
    assert status(client, upload_id).committed_size == committed == PART
    resp = upload(client, PARENT, F("m.onnx", data, upload_id=upload_id, write_offset=PART))
    assert resp.packages[0].resources[0].sha256 == sha(data)


def test_resuming_from_an_older_offset_skips_what_the_server_has(client: Client) -> None:
    data = random_bytes(2 * PART + 1)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()), declare_sha=False)
    first = Interrupted(client, f, first=PART + MiB)
    wait_committed(client, f.upload_id, PART)
    first.cancel()
    # The client lost track and starts over from 0: the committed bytes are skipped.
    resp = upload(client, PARENT, F("m.onnx", data, upload_id=f.upload_id, declare_sha=False))
    r = resp.packages[0].resources[0]
    assert (r.size_bytes, r.sha256) == (len(data), sha(data))


def test_resume_past_the_committed_size_is_refused_and_the_upload_survives(
    client: Client,
) -> None:
    data = random_bytes(PART + MiB)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()))
    first = Interrupted(client, f, first=PART + MiB // 2)
    wait_committed(client, f.upload_id, PART)
    first.cancel()
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        upload,
        client,
        PARENT,
        F("m.onnx", data, upload_id=f.upload_id, write_offset=PART + 10),
    )
    assert err.reason == "WRITE_OFFSET_MISMATCH"
    assert err.metadata["committed_size"] == str(PART)
    assert str(PART) in err.message
    # A different file under the same id is refused too.
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        upload,
        client,
        PARENT,
        F("other.onnx", data, upload_id=f.upload_id, write_offset=PART),
    )
    assert err.reason == "UPLOAD_MISMATCH"
    assert status(client, f.upload_id).committed_size == PART
    resp = upload(client, PARENT, F("m.onnx", data, upload_id=f.upload_id, write_offset=PART))
    assert resp.packages[0].resources[0].sha256 == sha(data)


def test_resumed_bytes_that_do_not_match_the_declared_sha256_are_deleted(
    registry: RunningServer, client: Client
) -> None:
    data = random_bytes(PART + MiB)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()))
    first = Interrupted(client, f, first=PART + 1)
    wait_committed(client, f.upload_id, PART)
    first.cancel()
    corrupted = data[:PART] + bytes(b ^ 0xFF for b in data[PART : PART + 10]) + data[PART + 10 :]
    resumed = F("m.onnx", corrupted, upload_id=f.upload_id, write_offset=PART, sha256=sha(data))
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, upload, client, PARENT, resumed)
    assert err.reason == "CHECKSUM_MISMATCH"
    assert err.metadata["actual_sha256"] == sha(corrupted)
    assert_nothing_stored(registry, client)
    assert upload_states(registry, client) == {f.upload_id: "aborted"}
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, status, client, f.upload_id)
    assert err.reason == "UPLOAD_ABORTED"


def test_a_newer_stream_takes_an_upload_over(client: Client) -> None:
    data = random_bytes(2 * PART + MiB)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()))
    first = Interrupted(client, f, first=PART + MiB)  # still connected, just stalled
    wait_committed(client, f.upload_id, PART)
    resp = upload(client, PARENT, F("m.onnx", data, upload_id=f.upload_id, write_offset=PART))
    assert resp.packages[0].resources[0].sha256 == sha(data)
    first.release.set()  # the old stream wakes up and is refused
    with pytest.raises(grpc.RpcError) as info:
        first.call.result()
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert status(client, f.upload_id).complete


def test_resume_a_bundle_across_files(registry: RunningServer, client: Client) -> None:
    primary = F("model.onnx", random_bytes(PART + 2 * MiB))
    extras = [F("voices.bin", random_bytes(PART + 3 * MiB)), F("config.json", b'{"a": 1}')]
    upload_id = str(uuid.uuid4())
    whole = primary.data + b"".join(e.data for e in extras)
    release = threading.Event()
    stop_at = len(primary.data) + PART + MiB

    def requests(offset: int, stop: int | None) -> Iterator[vpb.UploadBundleRequest]:
        yield bundle_header(PARENT, primary, extras, upload_id=upload_id, write_offset=offset)
        for piece in chunks(whole[offset:stop]):
            yield vpb.UploadBundleRequest(chunk=piece)
        if stop is not None:
            release.wait(60)

    call = client.versions.UploadBundle.future(requests(0, stop_at), timeout=120)
    # The primary is complete and one part of the sidecar is durable.
    committed = wait_committed(client, upload_id, len(primary.data) + PART)
    call.cancel()
    release.set()
    assert committed == status(client, upload_id).committed_size == len(primary.data) + PART
    resp = client.versions.UploadBundle(requests(committed, None), timeout=120)
    assert resp.upload_id == upload_id
    for f, r in zip([primary, *extras], resp.package.resources, strict=True):
        assert (r.file_name, r.size_bytes, r.sha256) == (f.name, len(f.data), sha(f.data))
        assert download(client, r.name)[1] == f.data
    assert status(client, upload_id).committed_size == len(whole)


def test_expired_uploads_cannot_continue_and_their_parts_are_reclaimable(
    registry: RunningServer, client: Client
) -> None:
    data = random_bytes(PART + MiB)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()))
    first = Interrupted(client, f, first=PART + 1)
    wait_committed(client, f.upload_id, PART)
    first.cancel()
    with transaction(registry._sessions) as s:
        s.execute(
            update(UploadSession)
            .where(UploadSession.id == f.upload_id)
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, status, client, f.upload_id)
    assert err.reason == "UPLOAD_EXPIRED"
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        upload,
        client,
        PARENT,
        F("m.onnx", data, upload_id=f.upload_id, write_offset=PART),
    )
    assert err.reason == "UPLOAD_EXPIRED"
    assert len(incomplete(registry, client)) == 1
    # What the garbage collector does with them.
    with transaction(registry._sessions) as s:
        refs = domain_uploads.expire_uploads(s)
    store = store_of(registry)
    mp = multipart_for(store)
    mine = [r for r in refs if any(f.upload_id in k for k, _ in r.multipart)]
    assert len(mine) == 1 and mine[0].completed_keys == []
    for key, mp_id in mine[0].multipart:
        mp.abort(key, mp_id)
    assert incomplete(registry, client) == []
    assert upload_states(registry, client) == {f.upload_id: "expired"}


def test_query_upload_status_of_a_finished_upload(client: Client) -> None:
    resp = upload(client, PARENT, F("m.onnx", b"abc"), F("n.onnx", b"defg"))
    for f, size in zip(resp.files, (3, 4), strict=True):
        s = status(client, f.upload_id)
        assert s.complete and s.committed_size == size


def test_uploads_of_many_files_resume_file_by_file(client: Client) -> None:
    a = F("a.onnx", random_bytes(2 * MiB), upload_id=str(uuid.uuid4()))
    b = F("b.onnx", random_bytes(PART + 2 * MiB), upload_id=str(uuid.uuid4()))
    release = threading.Event()

    def requests() -> Iterator[vpb.UploadArtifactsRequest]:
        reqs = artifact_requests(PARENT, [a, b])
        sent_b = 0
        for r in reqs:
            yield r
            if r.WhichOneof("payload") == "file" and r.file.file.file_name == "b.onnx":
                sent_b = 1
            elif sent_b and r.WhichOneof("payload") == "chunk":
                sent_b += len(r.chunk)
                if sent_b > PART + MiB:
                    release.wait(60)

    call = client.versions.UploadArtifacts.future(requests(), timeout=120)
    wait_committed(client, b.upload_id, PART)
    call.cancel()
    release.set()
    assert status(client, a.upload_id).committed_size == len(a.data)  # complete, unrecorded
    assert not status(client, a.upload_id).complete
    resp = upload(
        client,
        PARENT,
        F("a.onnx", a.data, upload_id=a.upload_id, write_offset=len(a.data)),
        F("b.onnx", b.data, upload_id=b.upload_id, write_offset=PART),
    )
    assert [r.resources[0].sha256 for r in resp.packages] == [sha(a.data), sha(b.data)]
    assert status(client, a.upload_id).complete and status(client, b.upload_id).complete


def test_a_cancelled_upload_of_undeclared_size_is_not_recorded(
    registry: RunningServer, client: Client
) -> None:
    """The end of a cancelled stream looks like a half-close to the server; a file of
    undeclared size must not be taken as complete (and truncated) then."""
    data = random_bytes(PART + 2 * MiB)
    f = F("m.onnx", data, upload_id=str(uuid.uuid4()), declare_size=False, declare_sha=False)
    first = Interrupted(client, f, first=PART + MiB)
    wait_committed(client, f.upload_id, PART)
    first.cancel()
    time.sleep(0.3)
    s = status(client, f.upload_id)
    assert not s.complete and s.committed_size == PART
    assert row_counts(registry, client)["resources"] == 0
    resp = upload(
        client,
        PARENT,
        F(
            "m.onnx",
            data,
            upload_id=f.upload_id,
            write_offset=PART,
            declare_size=False,
            declare_sha=False,
        ),
    )
    assert resp.packages[0].resources[0].sha256 == sha(data)
