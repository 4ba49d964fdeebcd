"""Blob storage for artifact bytes: one interface, a local-directory and an S3 backend.

Example::

    store = open_store("./var/blobs")  # or "s3://key:secret@host:9000/bucket?secure=false"
    with store.open_writer("org/model/1.0/model.onnx") as w:
        for chunk in stream:
            w.write(chunk)
        size, sha256 = w.commit()
"""

from storage.objectstore.base import (
    IncompleteUpload,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    PresignUnsupported,
    StorageError,
    StorageUnavailable,
    check_key,
)
from storage.objectstore.factory import open_store
from storage.objectstore.local import LocalObjectStore

__all__ = [
    "IncompleteUpload",
    "LocalObjectStore",
    "ObjectChanged",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "PresignUnsupported",
    "StorageError",
    "StorageUnavailable",
    "check_key",
    "open_store",
]
