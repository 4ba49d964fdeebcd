"""Pick an object store implementation from a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from storage.objectstore.base import ObjectStore
from storage.objectstore.local import LocalObjectStore


def open_store(url: str, *, create_bucket: bool = True) -> ObjectStore:
    """`file:///abs/path` or a plain path -> local directory; `s3://...` -> S3/MinIO.

    For S3 the bucket is created when missing (unless create_bucket=False), which needs
    the service to be up; see storage.objectstore.s3.S3Settings for the URL options.
    """
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        from storage.objectstore.s3 import S3ObjectStore  # keeps minio off the local path

        return S3ObjectStore.from_url(url, create_bucket=create_bucket)
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must be local: {url!r}")
        return LocalObjectStore(unquote(parts.path))
    if scheme and len(scheme) > 1:  # a Windows drive letter is not a scheme
        raise ValueError(f"unsupported object store URL scheme {scheme!r}")
    return LocalObjectStore(Path(url))
