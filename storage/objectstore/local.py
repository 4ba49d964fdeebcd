"""Object store in a local directory: the embedded default, one file per key."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from storage.objectstore.base import (
    CHUNK_SIZE,
    IncompleteUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    check_key,
)

# In-progress writes live next to their target as ".<name>.<token>.mr-partial": same
# directory means same filesystem, so the final rename is atomic.
PARTIAL_SUFFIX = ".mr-partial"
_MAX_NAME = 255


class LocalObjectStore(ObjectStore):
    supports_presign = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """The file holding `key`. Raises ValueError for keys that would leave the root."""
        check_key(key)
        if key.endswith(PARTIAL_SUFFIX):
            raise ValueError(f"invalid object key {key!r}: reserved suffix")
        path = self.root.joinpath(*key.split("/"))
        # check_key already rejects '..'; this also catches a symlink pointing outside.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"object key {key!r} escapes the store root")
        return path

    def open_writer(self, key: str) -> ObjectWriter:
        return _LocalWriter(key, self.path_for(key))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_for(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(st.st_mode):
            return None
        return _info(key, st)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        try:
            f = self.path_for(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        return _read_range(f, offset, length)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.path_for(key).unlink()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key, path in self._walk(prefix):
            if key.startswith(prefix):
                try:
                    yield _info(key, path.stat())
                except FileNotFoundError:
                    continue  # deleted while we walked

    def list_incomplete_uploads(self, prefix: str = "") -> Iterator[IncompleteUpload]:
        for key, path in self._walk(prefix, partial=True):
            target = _target_name(path.name)
            if target is None:
                continue
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            parent = key.rpartition("/")[0]
            target_key = f"{parent}/{target}" if parent else target
            if target_key.startswith(prefix):
                yield IncompleteUpload(
                    key=target_key,
                    upload_id=key,
                    initiated=datetime.fromtimestamp(mtime, UTC),
                )

    def abort_incomplete(self, older_than: timedelta) -> int:
        # mtime moves with every write, so an upload still receiving bytes is never "old".
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        for upload in list(self.list_incomplete_uploads()):
            if upload.initiated is not None and upload.initiated < cutoff:
                (self.root / upload.upload_id).unlink(missing_ok=True)
                aborted += 1
        return aborted

    def abort_incomplete_upload(self, upload: IncompleteUpload) -> None:
        # upload_id is the partial file's path relative to the root (list_incomplete_uploads)
        rel = upload.upload_id
        check_key(rel)
        if not rel.endswith(PARTIAL_SUFFIX):
            raise ValueError(f"not a partial file: {rel!r}")
        path = self.root.joinpath(*rel.split("/"))
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"partial file {rel!r} escapes the store root")
        path.unlink(missing_ok=True)

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)

    def _walk(self, prefix: str, *, partial: bool = False) -> Iterator[tuple[str, Path]]:
        """(key, path) of every file, or every partial file, under `prefix`'s directory."""
        directory, _, _ = prefix.rpartition("/")
        if directory:
            check_key(directory)
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            base = Path(dirpath)
            rel = base.relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.endswith(PARTIAL_SUFFIX) != partial:
                    continue
                yield (name if rel == "." else f"{rel}/{name}"), base / name


class _LocalWriter(ObjectWriter):
    def __init__(self, key: str, path: Path) -> None:
        super().__init__(key)
        self._path = path
        token = uuid.uuid4().hex[:16]
        stem = path.name[: _MAX_NAME - len(token) - len(PARTIAL_SUFFIX) - 3]
        self._temp = path.with_name(f".{stem}.{token}{PARTIAL_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(f"cannot write {key!r}: {exc}") from exc
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def _commit(self) -> None:
        self._file.flush()
        # Data must be on disk before the rename makes it visible, or a crash could leave
        # a committed key (already recorded in the database) pointing at a truncated file.
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, self._path)
        _fsync_dir(self._path.parent)

    def _abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


def _read_range(f: BinaryIO, offset: int, length: int | None) -> Iterator[bytes]:
    with f:
        if offset:
            f.seek(offset)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = f.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _target_name(partial_name: str) -> str | None:
    """'.<name>.<token>.mr-partial' -> '<name>' (possibly truncated), else None."""
    if not partial_name.startswith("."):
        return None
    stem, dot, _token = partial_name[1 : -len(PARTIAL_SUFFIX)].rpartition(".")
    return stem if dot and stem else None


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=st.st_size,
        # Not a content hash (that would mean reading the file); changes whenever the file
        # is replaced, which is what conditional reads need.
        etag=f"{st.st_size:x}-{st.st_mtime_ns:x}",
        last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
