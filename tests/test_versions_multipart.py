"""The resumable (multipart) write API under streamed uploads, on both object stores."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest

from storage.objectstore import ObjectStore, open_store
from storage.objectstore.multipart import PartInfo, UploadNotFound, multipart_for

MiB = 1024 * 1024


@pytest.fixture(params=["local", pytest.param("minio", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "blobs"))
    return open_store(request.getfixturevalue("minio_server").new_bucket())


def test_parts_survive_a_new_handle_and_complete_into_one_object(store: ObjectStore) -> None:
    mp = multipart_for(store)
    key = "orgs/o/models/m/versions/1/u/model.onnx"
    data = os.urandom(2 * mp.min_part_size + 123)
    upload_id = mp.begin(key)
    half = len(data) // 2
    first = mp.upload_part(key, upload_id, 1, data[:half])
    assert store.stat(key) is None  # nothing visible before complete
    # A "new process": only the recorded PartInfo survives, as JSON.
    saved = first.to_json()
    mp2 = multipart_for(store)
    second = mp2.upload_part(key, upload_id, 2, data[half:])
    mp2.complete(key, upload_id, [PartInfo.from_json(saved), second])
    assert store.read(key) == data
    assert hashlib.sha256(store.read(key)).hexdigest() == hashlib.sha256(data).hexdigest()
    assert list(store.list_incomplete_uploads()) == []


def test_reuploading_a_part_replaces_it(store: ObjectStore) -> None:
    mp = multipart_for(store)
    key = "a/b.bin"
    upload_id = mp.begin(key)
    mp.upload_part(key, upload_id, 1, b"x" * 10)
    part = mp.upload_part(key, upload_id, 1, b"hello")
    mp.complete(key, upload_id, [part])
    assert store.read(key) == b"hello"


def test_empty_object(store: ObjectStore) -> None:
    mp = multipart_for(store)
    upload_id = mp.begin("e/empty.txt")
    mp.complete("e/empty.txt", upload_id, [])
    info = store.stat("e/empty.txt")
    assert info is not None and info.size == 0


def test_abort_leaves_nothing_and_is_idempotent(store: ObjectStore) -> None:
    mp = multipart_for(store)
    key = "x/y/z.bin"
    upload_id = mp.begin(key)
    mp.upload_part(key, upload_id, 1, os.urandom(1000))
    assert [u.key for u in store.list_incomplete_uploads()] == [key]
    mp.abort(key, upload_id)
    mp.abort(key, upload_id)
    assert list(store.list_incomplete_uploads()) == []
    assert list(store.list("x/")) == []
    with pytest.raises(UploadNotFound):
        mp.complete(key, upload_id, [PartInfo(1, "e", 1000)])


def test_abandoned_parts_are_swept_by_abort_incomplete(store: ObjectStore) -> None:
    mp = multipart_for(store)
    upload_id = mp.begin("s/w.bin")
    mp.upload_part("s/w.bin", upload_id, 1, b"abc")
    assert store.abort_incomplete(timedelta(0)) >= 1
    assert list(store.list_incomplete_uploads()) == []


def test_bad_part_numbers_are_refused(store: ObjectStore) -> None:
    mp = multipart_for(store)
    upload_id = mp.begin("p/q.bin")
    for number in (0, 10_001):
        with pytest.raises(ValueError):
            mp.upload_part("p/q.bin", upload_id, number, b"x")
    mp.abort("p/q.bin", upload_id)
