"""Multipart parts on MinIO go up unsigned with a CRC32 the store verifies
(storage/objectstore/s3.py _Minio, multipart.S3Multipart.upload_part); plus
ObjectStore.copy and abort_incomplete_upload on both stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.objectstore import ObjectChanged, ObjectNotFound, StorageError, open_store
from storage.objectstore import multipart as multipart_module
from storage.objectstore.multipart import multipart_for
from storage.objectstore.s3 import S3ObjectStore

MiB = 1024 * 1024


@pytest.fixture
def s3(minio_server) -> S3ObjectStore:  # type: ignore[no-untyped-def]
    store = open_store(minio_server.new_bucket())
    assert isinstance(store, S3ObjectStore)
    return store


@pytest.mark.postgres
def test_unsigned_parts_round_trip(s3: S3ObjectStore) -> None:
    assert s3.is_minio
    mp = multipart_for(s3)
    data = [os.urandom(5 * MiB), os.urandom(1234)]
    upload_id = mp.begin("k/model.onnx")
    parts = [mp.upload_part("k/model.onnx", upload_id, i + 1, d) for i, d in enumerate(data)]
    mp.complete("k/model.onnx", upload_id, parts)
    assert s3.read("k/model.onnx") == b"".join(data)


@pytest.mark.postgres
def test_a_part_that_does_not_match_its_crc_is_refused(
    s3: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    mp = multipart_for(s3)
    upload_id = mp.begin("k/bad.onnx")
    monkeypatch.setattr(multipart_module.zlib, "crc32", lambda data: 12345)
    with pytest.raises(StorageError):
        mp.upload_part("k/bad.onnx", upload_id, 1, b"some bytes")
    mp.abort("k/bad.onnx", upload_id)


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.postgres)])
def test_copy_and_abort_one_incomplete_upload(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = (
        open_store(str(tmp_path / "blobs"))
        if backend == "local"
        else open_store(request.getfixturevalue("minio_server").new_bucket())
    )
    store.put("a/src.bin", b"source bytes")
    info = store.stat("a/src.bin")
    assert info is not None
    copied = store.copy("a/src.bin", "b/dst.bin", if_etag=info.etag)
    assert copied.size == 12 and store.read("b/dst.bin") == b"source bytes"
    with pytest.raises(ObjectChanged):
        store.copy("a/src.bin", "c/x.bin", if_etag="not-the-etag")
    assert store.stat("c/x.bin") is None
    with pytest.raises(ObjectNotFound):
        store.copy("a/missing.bin", "c/y.bin")
    mp = multipart_for(store)
    upload_id = mp.begin("d/partial.bin")
    mp.upload_part("d/partial.bin", upload_id, 1, b"x" * 100)
    (incomplete,) = [u for u in store.list_incomplete_uploads() if u.key == "d/partial.bin"]
    store.abort_incomplete_upload(incomplete)
    assert [u for u in store.list_incomplete_uploads() if u.key == "d/partial.bin"] == []
    store.abort_incomplete_upload(incomplete)  # gone already: fine
