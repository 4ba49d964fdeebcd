"""Object store on any S3-compatible service (MinIO in development), via the minio client."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import MinioException, S3Error
from urllib3.exceptions import HTTPError
from urllib3.response import BaseHTTPResponse

from storage.objectstore.base import (
    CHUNK_SIZE,
    IncompleteUpload,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    StorageUnavailable,
    check_key,
)

log = logging.getLogger(__name__)

# A request header that is never sent: it marks a request whose body goes up with
# x-amz-content-sha256: UNSIGNED-PAYLOAD (see _Minio).
UNSIGNED_PAYLOAD_HEADER = "x-modelregistry-unsigned-payload"
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host:port
    bucket: str
    access_key: str
    secret_key: str
    secure: bool = True
    region: str = "us-east-1"
    # host:port clients reach the store at, when it differs from ours (containers, NAT);
    # presigned URLs are signed for this host.
    public_endpoint: str | None = None
    part_size: int = DEFAULT_PART_SIZE

    @classmethod
    def from_url(cls, url: str) -> S3Settings:
        """Parse s3://ACCESS:SECRET@host:port/bucket?secure=false&region=...&public_endpoint=..."""
        parts = urlsplit(url)
        bucket = parts.path.strip("/")
        if parts.scheme != "s3" or not parts.hostname or not bucket or "/" in bucket:
            raise ValueError("expected s3://ACCESS:SECRET@host:port/bucket[?options]")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"secure", "region", "public_endpoint", "part_size"}
        if unknown:
            raise ValueError(f"unknown s3 URL options: {sorted(unknown)}")
        part_size = int(query.get("part_size", DEFAULT_PART_SIZE))
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE}")
        endpoint = parts.hostname + (f":{parts.port}" if parts.port else "")
        return cls(
            endpoint=endpoint,
            bucket=bucket,
            access_key=unquote(parts.username or ""),
            secret_key=unquote(parts.password or ""),
            secure=query.get("secure", "true").lower() not in ("false", "0", "no"),
            region=query.get("region", "us-east-1"),
            public_endpoint=query.get("public_endpoint"),
            part_size=part_size,
        )


class S3ObjectStore(ObjectStore):
    supports_presign = True

    def __init__(self, settings: S3Settings, *, create_bucket: bool = True) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._client = _client(settings, settings.endpoint, connect=5, read=120, retries=3)
        # Health checks must answer fast and not retry while the service is down.
        self._ping_client = _client(settings, settings.endpoint, connect=2, read=2, retries=0)
        # Signing is local (no request) as long as the region is known, so a client for an
        # endpoint we cannot reach ourselves is fine.
        self._presign_client = (
            _client(settings, settings.public_endpoint, connect=2, read=2, retries=0)
            if settings.public_endpoint
            else self._client
        )
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str, *, create_bucket: bool = True) -> S3ObjectStore:
        return cls(S3Settings.from_url(url), create_bucket=create_bucket)

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.settings.endpoint!r}, bucket={self.bucket!r})"

    def open_writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, check_key(key))

    def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            with _translated():
                obj = self._client.stat_object(self.bucket, key)
        except _NotFoundError:
            return None
        return ObjectInfo(key, obj.size or 0, obj.etag, obj.last_modified)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return iter(())
        try:
            with _translated():
                response = self._client.get_object(
                    self.bucket, key, offset=offset, length=length or 0
                )
        except _NotFoundError:
            raise ObjectNotFound(key) from None
        except _InvalidRangeError:
            return iter(())  # offset at or past the end
        return _stream(response)

    def delete(self, key: str) -> None:
        check_key(key)
        with _translated():
            self._client.remove_object(self.bucket, key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with _translated():
            for obj in self._client.list_objects(
                self.bucket, prefix=prefix or None, recursive=True
            ):
                if obj.object_name and not obj.is_dir:
                    yield ObjectInfo(obj.object_name, obj.size or 0, obj.etag, obj.last_modified)

    def list_incomplete_uploads(self, prefix: str = "") -> Iterator[IncompleteUpload]:
        key_marker: str | None = None
        upload_id_marker: str | None = None
        while True:
            with _translated():
                page = self._client._list_multipart_uploads(
                    self.bucket,
                    prefix=prefix or None,
                    key_marker=key_marker,
                    upload_id_marker=upload_id_marker,
                )
            for upload in page.uploads:
                yield IncompleteUpload(
                    upload.object_name, upload.upload_id or "", upload.initiated_time
                )
            if not page.is_truncated or not page.uploads:
                return
            # minio 7.2 drops NextUploadIdMarker while parsing; the last entry is equivalent.
            key_marker = page.uploads[-1].object_name
            upload_id_marker = page.uploads[-1].upload_id

    def abort_incomplete(self, older_than: timedelta) -> int:
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        for upload in list(self.list_incomplete_uploads()):
            if upload.initiated is not None and upload.initiated < cutoff:
                with _translated():
                    self._client._abort_multipart_upload(self.bucket, upload.key, upload.upload_id)
                aborted += 1
        return aborted

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        check_key(upload.key)
        try:
            with _translated():
                self._client._abort_multipart_upload(self.bucket, upload.key, upload.upload_id)
        except StorageError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, S3Error) and cause.code == "NoSuchUpload"):
                raise

    def copy(self, src: str, dst: str, *, if_etag: str | None = None) -> ObjectInfo:
        """Server-side copy (CopyObject, or UploadPartCopy above 5 GiB); with `if_etag` the
        store itself refuses when `src` changed (x-amz-copy-source-if-match)."""
        from minio.commonconfig import CopySource

        check_key(src)
        check_key(dst)
        try:
            with _translated():
                self._client.copy_object(
                    self.bucket, dst, CopySource(self.bucket, src, match_etag=if_etag)
                )
        except _NotFoundError:
            raise ObjectNotFound(src) from None
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code == "PreconditionFailed":
                raise ObjectChanged(f"{src} changed: its etag is no longer {if_etag}") from exc
            raise
        info = self.stat(dst)
        if info is None:
            raise ObjectNotFound(dst)
        return info

    def presign_put(self, key: str, expires: timedelta) -> str:
        check_key(key)
        with _translated():
            return self._presign_client.presigned_put_object(self.bucket, key, expires=expires)

    def presign_get(self, key: str, expires: timedelta) -> str:
        check_key(key)
        with _translated():
            return self._presign_client.presigned_get_object(self.bucket, key, expires=expires)

    def ping(self) -> bool:
        try:
            return self._ping_client.bucket_exists(self.bucket)
        except Exception:
            return False

    @functools.cached_property
    def is_minio(self) -> bool:
        """Whether the service is MinIO (its `Server` header). MinIO verifies a part's
        x-amz-checksum-crc32 without the algorithm declared when the upload began, which
        lets multipart parts skip the SHA-256 payload signature (S3Multipart.upload_part)."""
        try:
            with _translated():
                response = self._client._execute("HEAD", self.bucket)
        except StorageError:
            return False
        return "minio" in (response.headers.get("Server") or "").lower()

    def _ensure_bucket(self) -> None:
        with _translated():
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self.settings.region)
            except S3Error as exc:
                # Another server instance may have created it between our two calls.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise


class _S3Writer(ObjectWriter):
    """Buffers up to one part in memory, then uploads it as a multipart part.

    Objects smaller than a part go up in a single PUT on commit, so the common small file
    (configs, tokenizers) costs one request and leaves no multipart state behind.
    """

    def __init__(self, store: S3ObjectStore, key: str) -> None:
        super().__init__(key)
        self._store = store
        self._part_size = store.settings.part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Part] = []

    def _write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= self._part_size:
            view = memoryview(self._buffer)
            full = len(self._buffer) - len(self._buffer) % self._part_size
            for start in range(0, full, self._part_size):
                self._upload_part(bytes(view[start : start + self._part_size]))
            view.release()
            del self._buffer[:full]

    def _upload_part(self, data: bytes) -> None:
        client, bucket = self._store._client, self._store.bucket
        with _translated():
            if self._upload_id is None:
                self._upload_id = client._create_multipart_upload(
                    bucket, self.key, {"Content-Type": "application/octet-stream"}
                )
            number = len(self._parts) + 1
            etag = client._upload_part(bucket, self.key, data, None, self._upload_id, number)
        self._parts.append(Part(number, etag))

    def _commit(self) -> None:
        client, bucket = self._store._client, self._store.bucket
        if self._upload_id is None:
            with _translated():
                client._put_object(
                    bucket,
                    self.key,
                    bytes(self._buffer),
                    {"Content-Type": "application/octet-stream"},
                )
            return
        if self._buffer:
            self._upload_part(bytes(self._buffer))  # the last part may be short
        self._buffer.clear()
        with _translated():
            client._complete_multipart_upload(bucket, self.key, self._upload_id, self._parts)

    def _abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is None:
            return
        try:
            self._store._client._abort_multipart_upload(
                self._store.bucket, self.key, self._upload_id
            )
        except (MinioException, HTTPError):
            # Often called while another error propagates: don't mask it. The upload stays
            # listed by list_incomplete_uploads until abort_incomplete sweeps it.
            log.warning("could not abort multipart upload of %s", self.key, exc_info=True)


class _NotFoundError(StorageError):
    pass


class _InvalidRangeError(StorageError):
    pass


@contextmanager
def _translated() -> Iterator[None]:
    """Re-raise client and transport errors as StorageError, so callers catch one type."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _NOT_FOUND:
            raise _NotFoundError(str(exc)) from exc
        if exc.code == "InvalidRange":
            raise _InvalidRangeError(str(exc)) from exc
        if exc.code in _RETRYABLE:
            raise StorageUnavailable(f"object store busy: {exc.code}: {exc.message}") from exc
        raise StorageError(f"object store error: {exc.code}: {exc.message}") from exc
    except (MinioException, HTTPError) as exc:
        raise StorageUnavailable(f"object store unavailable: {exc}") from exc


# S3 error codes that mean "try again" (overload, a server starting or failing over).
_RETRYABLE = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "XMinioServerNotInitialized",
    }
)


def _stream(response: BaseHTTPResponse) -> Iterator[bytes]:
    try:
        with _translated():
            yield from response.stream(CHUNK_SIZE)
    finally:
        response.close()
        response.release_conn()


class _Minio(Minio):
    """minio.Minio that sends a request marked with UNSIGNED_PAYLOAD_HEADER unsigned.

    Over plain HTTP minio-py signs every request with the SHA-256 of its body: for an
    upload part that is a second full SHA-256 pass over the bytes (the server already
    hashes the file) and a third one in MinIO, which verifies it. Marked requests carry
    x-amz-content-sha256: UNSIGNED-PAYLOAD instead; their caller adds a cheap
    x-amz-checksum-crc32 that the store verifies. Mirrors Minio._build_headers of the
    pinned minio 7.2 for marked requests only; everything else is minio-py's own.
    """

    def _build_headers(
        self,
        host: str,
        headers: dict[str, Any] | None = None,
        body: bytes | None = None,
        creds: Any = None,
    ) -> tuple[dict[str, Any], datetime]:
        if headers is None or headers.pop(UNSIGNED_PAYLOAD_HEADER, None) is None or not creds:
            built: tuple[dict[str, Any], datetime] = super()._build_headers(
                host, headers, body, creds
            )
            return built
        from minio import time as minio_time

        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if body:
            headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
        if creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        date = minio_time.utcnow()
        headers["x-amz-date"] = minio_time.to_amz_date(date)
        return headers, date


def _client(
    settings: S3Settings, endpoint: str | None, *, connect: float, read: float, retries: int
) -> Minio:
    assert endpoint is not None
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect, read=read),
        # One connection per server worker thread that may talk to the store at once.
        maxsize=32,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        )
        if retries
        else False,
    )
    return _Minio(
        endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )
