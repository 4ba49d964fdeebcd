"""The object store interface shared by the local-directory and S3 implementations."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

CHUNK_SIZE = 1024 * 1024  # read granularity of get(); big enough to amortise syscalls


class StorageError(Exception):
    """Base class of errors raised by object stores."""


class StorageUnavailable(StorageError):
    """The store did not answer (connection refused, reset or cut) or said it is
    overloaded or starting: retryable."""


class ObjectNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ObjectChanged(StorageError):
    """A conditional operation found the object replaced since it was read (etag differs)."""


class PresignUnsupported(StorageError):
    """The store cannot hand out URLs; stream the bytes through the server instead."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None
    last_modified: datetime | None


@dataclass(frozen=True)
class IncompleteUpload:
    """A write that was started and neither committed nor aborted (crash, lost client)."""

    key: str
    upload_id: str
    initiated: datetime | None


def check_key(key: str) -> str:
    """Validate an object key: relative, '/'-separated, no '.'/'..' or empty segments.

    Keys are built from user-supplied slugs and file names, so this is the one place that
    guarantees none of them can address something outside the store.
    """
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectWriter(ABC):
    """Streams one object into the store; nothing is visible under `key` before commit().

    Use as a context manager: leaving the block without commit() (an exception, an early
    return) aborts, so no half-written object or stray temp data survives.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._closed = False

    @property
    def bytes_written(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise StorageError(f"writer for {self.key} is already closed")
        if not chunk:
            return
        self._sha256.update(chunk)
        self._size += len(chunk)
        self._write(chunk)

    def commit(self) -> tuple[int, str]:
        """Publish the object atomically; returns (size in bytes, sha256 hex digest)."""
        if self._closed:
            raise StorageError(f"writer for {self.key} is already closed")
        self._closed = True
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise
        return self._size, self._sha256.hexdigest()

    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._abort()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    @abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...


class ObjectStore(ABC):
    supports_presign: bool = False

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """Start streaming a new object to `key` (replacing any existing one on commit)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, etag and modification time, or None when there is no such object."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The object's bytes from `offset`, at most `length` of them, in chunks.

        Raises ObjectNotFound right away (not on first iteration) when the key is missing.
        An offset at or past the end yields nothing. Close the iterator when stopping early
        to release the file or connection promptly.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every committed object whose key starts with `prefix`, in no particular order."""

    @abstractmethod
    def list_incomplete_uploads(self, prefix: str = "") -> Iterator[IncompleteUpload]: ...

    @abstractmethod
    def abort_incomplete(self, older_than: timedelta) -> int:
        """Discard incomplete uploads started more than `older_than` ago; returns how many.

        Pick a generous age: an upload still in progress for longer than that is lost too.
        """

    @abstractmethod
    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        """Discard one upload listed by `list_incomplete_uploads`; gone already is fine."""

    def copy(self, src: str, dst: str, *, if_etag: str | None = None) -> ObjectInfo:
        """Copy object `src` to `dst` (server-side where the store can); returns the copy's
        info. With `if_etag`, only while `src` still has that etag (ObjectChanged if not).
        ObjectNotFound when `src` is missing.

        This generic version streams the bytes through this process and checks the etag
        before and after reading: stores that can copy atomically override it.
        """
        before = self.stat(src)
        if before is None:
            raise ObjectNotFound(src)
        if if_etag is not None and before.etag != if_etag:
            raise ObjectChanged(f"{src} changed: etag {before.etag}, expected {if_etag}")
        self.put(dst, self.get(src))
        after = self.stat(src)
        if after is None or after.etag != before.etag:
            self.delete(dst)
            raise ObjectChanged(f"{src} changed while it was being copied")
        info = self.stat(dst)
        if info is None:
            raise ObjectNotFound(dst)
        return info

    def presign_put(self, key: str, expires: timedelta) -> str:
        raise PresignUnsupported(f"{type(self).__name__} cannot presign URLs")

    def presign_get(self, key: str, expires: timedelta) -> str:
        raise PresignUnsupported(f"{type(self).__name__} cannot presign URLs")

    @abstractmethod
    def ping(self) -> bool:
        """True when the store is reachable and usable; quick and never raises."""

    def put(self, key: str, data: bytes | Iterable[bytes]) -> tuple[int, str]:
        """Store a whole object; returns (size, sha256 hex). Convenience over open_writer."""
        with self.open_writer(key) as writer:
            for chunk in [data] if isinstance(data, bytes) else data:
                writer.write(chunk)
            return writer.commit()

    def read(self, key: str) -> bytes:
        """The whole object in memory: for small objects (configs, sidecars) only."""
        return b"".join(self.get(key))
