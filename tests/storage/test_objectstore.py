"""Object stores against a real directory and a real MinIO: same behaviour from both."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from storage.objectstore import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    PresignUnsupported,
    open_store,
)
from storage.objectstore.s3 import S3ObjectStore, S3Settings

MiB = 1024 * 1024


def test_put_stat_get_list_delete(store: ObjectStore) -> None:
    size, digest = store.put("org/m/1.0/model.onnx", b"hello world")
    assert (size, digest) == (11, hashlib.sha256(b"hello world").hexdigest())
    info = store.stat("org/m/1.0/model.onnx")
    assert info is not None
    assert (info.key, info.size) == ("org/m/1.0/model.onnx", 11)
    assert info.etag and info.last_modified and info.last_modified.tzinfo is not None
    assert store.exists("org/m/1.0/model.onnx")
    assert store.read("org/m/1.0/model.onnx") == b"hello world"

    store.put("org/m/1.0/tokenizer.json", b"{}")
    store.put("org/m/1.1/model.onnx", b"x")
    store.put("other/m/model.onnx", b"y")
    assert sorted(o.key for o in store.list("org/m/1.0/")) == [
        "org/m/1.0/model.onnx",
        "org/m/1.0/tokenizer.json",
    ]
    assert sorted(o.key for o in store.list("org/m/1.")) == [
        "org/m/1.0/model.onnx",
        "org/m/1.0/tokenizer.json",
        "org/m/1.1/model.onnx",
    ]
    assert len(list(store.list())) == 4

    store.delete("org/m/1.0/model.onnx")
    store.delete("org/m/1.0/model.onnx")  # idempotent
    assert store.stat("org/m/1.0/model.onnx") is None
    assert not store.exists("org/m/1.0/model.onnx")
    with pytest.raises(ObjectNotFound):
        store.get("org/m/1.0/model.onnx")


def test_put_replaces_an_existing_object(store: ObjectStore) -> None:
    store.put("a/b", b"first version")
    store.put("a/b", b"second")
    assert store.read("a/b") == b"second"
    assert [o.size for o in store.list("a/")] == [6]


def test_empty_object(store: ObjectStore) -> None:
    assert store.put("empty", b"") == (0, hashlib.sha256(b"").hexdigest())
    assert store.read("empty") == b""
    info = store.stat("empty")
    assert info is not None and info.size == 0


def test_streaming_a_multipart_object_in_small_chunks(store: ObjectStore) -> None:
    """~20 MiB in 64 KiB chunks: several S3 parts, never more than one part in memory."""
    chunk_count, chunk_size = 321, 64 * 1024 + 7  # odd size: parts don't align with chunks
    expected = hashlib.sha256()
    with store.open_writer("big/model.bin") as writer:
        for i in range(chunk_count):
            chunk = _pattern(i, chunk_size)
            expected.update(chunk)
            writer.write(chunk)
            if isinstance(store, S3ObjectStore):
                assert len(writer._buffer) < store.settings.part_size  # type: ignore[attr-defined]
        assert store.stat("big/model.bin") is None  # invisible until commit
        size, digest = writer.commit()
    assert size == chunk_count * chunk_size > 20 * MiB
    assert digest == expected.hexdigest()
    info = store.stat("big/model.bin")
    assert info is not None and info.size == size

    read_back = hashlib.sha256()
    for piece in store.get("big/model.bin"):
        read_back.update(piece)
    assert read_back.hexdigest() == digest
    assert list(store.list_incomplete_uploads()) == []


def test_abort_leaves_nothing_behind(store: ObjectStore) -> None:
    with store.open_writer("aborted/model.bin") as writer:
        for i in range(20):
            writer.write(_pattern(i, MiB))  # past one S3 part: a multipart upload exists
        writer.abort()
    assert list(store.list()) == []
    assert list(store.list_incomplete_uploads()) == []
    assert store.stat("aborted/model.bin") is None


def test_an_exception_in_the_writer_block_aborts(store: ObjectStore) -> None:
    store.put("keep/model.bin", b"old bytes")
    with pytest.raises(RuntimeError), store.open_writer("keep/model.bin") as writer:
        writer.write(b"x" * (9 * MiB))
        raise RuntimeError("client went away")
    assert store.read("keep/model.bin") == b"old bytes"  # the previous object is untouched
    assert list(store.list_incomplete_uploads()) == []


def test_ranged_get(store: ObjectStore) -> None:
    data = os.urandom(3 * MiB + 123)
    store.put("r", data)
    assert b"".join(store.get("r", offset=10, length=20)) == data[10:30]
    assert b"".join(store.get("r", offset=MiB - 5, length=MiB + 10)) == data[MiB - 5 : 2 * MiB + 5]
    assert b"".join(store.get("r", offset=3 * MiB)) == data[3 * MiB :]
    assert b"".join(store.get("r", offset=len(data) - 1, length=100)) == data[-1:]
    assert b"".join(store.get("r", offset=len(data))) == b""
    assert b"".join(store.get("r", offset=len(data) + 10)) == b""
    assert b"".join(store.get("r", offset=5, length=0)) == b""
    assert all(len(piece) <= MiB for piece in store.get("r"))
    with pytest.raises(ValueError):
        store.get("r", offset=-1)


def test_stopping_a_read_early_releases_it(store: ObjectStore) -> None:
    store.put("s", os.urandom(4 * MiB))
    for _ in range(50):  # would exhaust file handles or the HTTP pool if not released
        stream = store.get("s")
        next(stream)
        stream.close()  # type: ignore[attr-defined]


def test_incomplete_uploads_are_listed_and_swept(store: ObjectStore) -> None:
    writer = store.open_writer("stale/model.bin")
    writer.write(b"z" * (9 * MiB))  # S3: one part uploaded, multipart upload open
    try:
        listed = list(store.list_incomplete_uploads())
        assert [u.key for u in listed] == ["stale/model.bin"]
        assert list(store.list_incomplete_uploads("other/")) == []
        assert list(store.list()) == []  # not an object yet
        assert store.abort_incomplete(timedelta(hours=1)) == 0  # too young to sweep
        time.sleep(1.1)
        assert store.abort_incomplete(timedelta(seconds=1)) == 1
        assert list(store.list_incomplete_uploads()) == []
    finally:
        writer.abort()


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "a\\b", "x\x00"]
)
def test_keys_that_could_escape_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.open_writer(key)
    with pytest.raises(ValueError):
        store.stat(key)
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.delete(key)


def test_local_store_refuses_symlinks_out_of_its_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = LocalObjectStore(tmp_path / "blobs")
    (store.root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes"):
        store.get("link/secret")
    with pytest.raises(ValueError, match="escapes"):
        store.open_writer("link/new")
    assert not (outside / "new").exists()


def test_local_store_writes_atomically_next_to_the_target(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    with store.open_writer("d/file.bin") as writer:
        writer.write(b"partial")
        files = [p.name for p in (tmp_path / "d").iterdir()]
        assert len(files) == 1 and files[0].startswith(".file.bin.")
        assert not (tmp_path / "d" / "file.bin").exists()
        writer.commit()
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["file.bin"]


def test_local_store_cannot_presign(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    assert isinstance(store, LocalObjectStore)
    assert store.root == tmp_path.resolve()
    assert store.supports_presign is False
    with pytest.raises(PresignUnsupported):
        store.presign_get("a", timedelta(hours=1))
    with pytest.raises(PresignUnsupported):
        store.presign_put("a", timedelta(hours=1))


def test_ping(store: ObjectStore) -> None:
    assert store.ping() is True


def test_open_store_urls(tmp_path: Path) -> None:
    plain = open_store(str(tmp_path / "plain"))
    assert isinstance(plain, LocalObjectStore) and (tmp_path / "plain").is_dir()
    with pytest.raises(ValueError):
        open_store("ftp://host/x")
    settings = S3Settings.from_url(
        "s3://AK%2F1:S%40cret@minio.local:9000/models?secure=false&region=eu-west-1"
    )
    assert settings == S3Settings(
        endpoint="minio.local:9000",
        bucket="models",
        access_key="AK/1",
        secret_key="S@cret",
        secure=False,
        region="eu-west-1",
    )
    assert S3Settings.from_url("s3://a:b@s3.example.com/bkt").secure is True
    for bad in ("s3://a:b@host:9000", "s3://a:b@host/x/y", "s3://a:b@h/b?colour=red"):
        with pytest.raises(ValueError):
            S3Settings.from_url(bad)


@pytest.mark.postgres
def test_minio_presigned_urls_work_over_plain_http(minio_server: Any) -> None:
    store = open_store(minio_server.new_bucket())
    assert store.supports_presign
    payload = os.urandom(100_000)

    put_url = store.presign_put("org/m/1/model.onnx", timedelta(minutes=5))
    request = urllib.request.Request(put_url, data=payload, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert store.read("org/m/1/model.onnx") == payload

    get_url = store.presign_get("org/m/1/model.onnx", timedelta(minutes=5))
    assert get_url.startswith("http://")
    with urllib.request.urlopen(get_url, timeout=10) as response:
        assert response.read() == payload


@pytest.mark.postgres
def test_minio_bucket_is_created_when_missing(minio_server: Any) -> None:
    url = minio_server.new_bucket()
    fresh = url.replace("/t-", "/fresh-t-", 1)
    store = open_store(fresh)
    store.put("k", b"v")
    assert open_store(fresh).read("k") == b"v"  # second open: bucket already there


@pytest.mark.postgres
def test_minio_ping_is_false_and_fast_when_down(minio_server: Any) -> None:
    if not minio_server.can_restart:
        pytest.skip("external S3 cannot be stopped")
    store = open_store(minio_server.new_bucket())
    with minio_server.down():
        started = time.monotonic()
        assert store.ping() is False
        assert time.monotonic() - started < 5
    assert store.ping() is True


def _pattern(seed: int, size: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest()
    return (block * (size // len(block) + 1))[:size]
