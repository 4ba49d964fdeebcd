"""Resumable (multipart) writes: the lower-level API under streamed, resumable uploads.

`ObjectStore.open_writer` streams one object in one go; when the writer goes away (a
dropped client, a restarted process) everything written so far is lost. The API here
splits an object into numbered parts that are durable once `upload_part` returns, so a
caller that records each returned `PartInfo` (the server keeps them in the database) can
continue after an interruption and finally `complete` the object from its parts::

    mp = multipart_for(store)
    upload_id = mp.begin(key)
    parts = [mp.upload_part(key, upload_id, n, data) for n, data in enumerate(chunks, 1)]
    mp.complete(key, upload_id, parts)  # or mp.abort(key, upload_id)

Rules (those of S3, which the local backend follows too):
- every part except the last must be at least `min_part_size` bytes (5 MiB on S3);
  `part_size` is the size callers should buffer per part;
- part numbers are 1-10000; uploading a number again replaces that part;
- `complete` takes the parts in ascending order; nothing is visible under `key` before it;
- an upload that is neither completed nor aborted keeps its parts: they are listed by
  `ObjectStore.list_incomplete_uploads` and removed by `ObjectStore.abort_incomplete`
  (the garbage collector), or explicitly with `abort`.

On S3/MinIO this is the multipart upload API. On a local directory each part is a hidden
`.{name}.{upload_id}_{part:05d}.mr-partial` file next to the target (the local store's
partial-file convention, so its incomplete-upload sweep finds them) and `complete`
concatenates them into the target with one atomic rename.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.objectstore.base import ObjectStore, StorageError, check_key
from storage.objectstore.local import PARTIAL_SUFFIX, LocalObjectStore

MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * 1024 * 1024
S3_MIN_PART_SIZE = 5 * 1024 * 1024

_LOCAL_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Keep part file names within 255 bytes: "." + stem + "." + 32 hex + "_" + 5 digits + suffix.
_LOCAL_MAX_STEM = 255 - 1 - 1 - 32 - 1 - 5 - len(PARTIAL_SUFFIX)


@dataclass(frozen=True)
class PartInfo:
    """One durable part: what `complete` needs, and what a caller persists to resume."""

    number: int
    etag: str
    size: int

    def to_json(self) -> list[int | str]:
        return [self.number, self.etag, self.size]

    @classmethod
    def from_json(cls, value: Sequence[int | str]) -> PartInfo:
        number, etag, size = value
        return cls(int(number), str(etag), int(size))


class UploadNotFound(StorageError):
    """The multipart upload does not exist (aborted, completed, or swept by the GC)."""


class Multipart(ABC):
    """Resumable writes of one store. Every method is blocking; call from a worker thread."""

    #: The size callers should buffer before uploading a part.
    part_size: int = DEFAULT_PART_SIZE
    #: The smallest size a part other than the last may have.
    min_part_size: int = 1

    @abstractmethod
    def begin(self, key: str) -> str:
        """Start a multipart upload to `key`; returns its upload id."""

    @abstractmethod
    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        """Store part `number` (1-based); durable when this returns."""

    @abstractmethod
    def complete(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """Assemble the object from `parts` (ascending numbers) and make it visible.

        With no parts the object is empty. The upload id is invalid afterwards.
        """

    @abstractmethod
    def abort(self, key: str, upload_id: str) -> None:
        """Discard the upload's parts; aborting an unknown or finished upload is a no-op."""

    def _check_part(self, number: int) -> None:
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number must be 1-{MAX_PARTS}, got {number}")


def multipart_for(store: ObjectStore) -> Multipart:
    """The resumable-write API of `store` (local directory or S3/MinIO)."""
    if isinstance(store, LocalObjectStore):
        return LocalMultipart(store)
    from storage.objectstore.s3 import S3ObjectStore  # keeps minio off the local path

    if isinstance(store, S3ObjectStore):
        return S3Multipart(store)
    raise TypeError(f"{type(store).__name__} has no multipart support")


# --- local directory ---------------------------------------------------------------------


class LocalMultipart(Multipart):
    def __init__(self, store: LocalObjectStore, part_size: int = DEFAULT_PART_SIZE) -> None:
        self.store = store
        self.part_size = part_size

    def _part_path(self, key: str, upload_id: str, number: int) -> Path:
        if not _LOCAL_UPLOAD_ID_RE.match(upload_id):
            raise UploadNotFound(f"not a local upload id: {upload_id!r}")
        path = self.store.path_for(key)
        stem = path.name[:_LOCAL_MAX_STEM]
        return path.with_name(f".{stem}.{upload_id}_{number:05d}{PARTIAL_SUFFIX}")

    def begin(self, key: str) -> str:
        path = self.store.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        return uuid.uuid4().hex

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        self._check_part(number)
        path = self._part_path(key, upload_id, number)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            # "Durable when this returns": the caller records the part as committed next.
            os.fsync(fd)
        finally:
            os.close(fd)
        return PartInfo(number, f"{len(data):x}", len(data))

    def complete(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        numbers = [p.number for p in parts]
        if numbers != sorted(set(numbers)):
            raise ValueError("parts must have ascending, distinct numbers")
        target = self.store.path_for(key)
        paths = [self._part_path(key, upload_id, p.number) for p in parts]
        for part, path in zip(parts, paths, strict=True):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise UploadNotFound(f"part {part.number} of {key!r} is missing") from None
            if size != part.size:
                raise StorageError(
                    f"part {part.number} of {key!r} has {size} bytes, expected {part.size}"
                )
        temp = target.with_name(f".{target.name[:_LOCAL_MAX_STEM]}.{upload_id}{PARTIAL_SUFFIX}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(temp, "wb") as out:
                for path in paths:
                    with open(path, "rb") as src:
                        _copy(src.fileno(), out.fileno())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        for path in paths:
            path.unlink(missing_ok=True)
        self._remove_parts(key, upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        if not _LOCAL_UPLOAD_ID_RE.match(upload_id):
            return
        self._remove_parts(key, upload_id)

    def _remove_parts(self, key: str, upload_id: str) -> None:
        first = self._part_path(key, upload_id, 1)
        prefix = first.name[: -len(f"00001{PARTIAL_SUFFIX}")]
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(first.parent):
                if entry.name.startswith(prefix) and entry.name.endswith(PARTIAL_SUFFIX):
                    Path(entry.path).unlink(missing_ok=True)


def _copy(src: int, dst: int) -> None:
    """Append all of file `src` to `dst`, in the kernel where possible."""
    size = os.fstat(src).st_size
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, size - offset)
            if n == 0:
                break
            offset += n
    except OSError:
        pass  # not supported here (or cross-device): fall back to plain reads
    if offset < size:
        os.lseek(src, offset, os.SEEK_SET)
        while chunk := os.read(src, 1024 * 1024):
            os.write(dst, chunk)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- S3 / MinIO ----------------------------------------------------------------------------


class S3Multipart(Multipart):
    min_part_size = S3_MIN_PART_SIZE

    def __init__(self, store: object) -> None:
        from storage.objectstore.s3 import S3ObjectStore

        assert isinstance(store, S3ObjectStore)
        self.store = store
        self.part_size = store.settings.part_size

    def begin(self, key: str) -> str:
        check_key(key)
        with _s3_errors():
            upload_id: str = self.store._client._create_multipart_upload(
                self.store.bucket, key, {"Content-Type": "application/octet-stream"}
            )
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> PartInfo:
        from storage.objectstore.s3 import UNSIGNED_PAYLOAD_HEADER

        self._check_part(number)
        check_key(key)
        headers: dict[str, Any] | None = None
        if self.store.is_minio:
            # A CRC32 the store verifies instead of a SHA-256 payload signature: one pass
            # over the part at memory speed instead of two SHA-256 passes (here and in
            # MinIO); the file's own sha256 is computed and checked by the server anyway.
            crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
            headers = {UNSIGNED_PAYLOAD_HEADER: "1", "x-amz-checksum-crc32": crc}
        with _s3_errors():
            etag: str = self.store._client._upload_part(
                self.store.bucket, key, data, headers, upload_id, number
            )
        return PartInfo(number, etag, len(data))

    def complete(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> None:
        from minio.datatypes import Part

        check_key(key)
        numbers = [p.number for p in parts]
        if numbers != sorted(set(numbers)):
            raise ValueError("parts must have ascending, distinct numbers")
        if not parts:
            # S3 refuses to complete an upload without parts: store an empty object.
            self.abort(key, upload_id)
            self.store.put(key, b"")
            return
        with _s3_errors():
            self.store._client._complete_multipart_upload(
                self.store.bucket, key, upload_id, [Part(p.number, p.etag) for p in parts]
            )

    def abort(self, key: str, upload_id: str) -> None:
        check_key(key)
        with contextlib.suppress(UploadNotFound), _s3_errors():
            self.store._client._abort_multipart_upload(self.store.bucket, key, upload_id)


@contextlib.contextmanager
def _s3_errors() -> Iterator[None]:
    """The S3 store's error translation, plus NoSuchUpload -> UploadNotFound."""
    from minio.error import S3Error

    from storage.objectstore.s3 import _translated

    try:
        with _translated():
            yield
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, S3Error) and cause.code == "NoSuchUpload":
            raise UploadNotFound(f"no such multipart upload: {cause.message}") from exc
        raise
