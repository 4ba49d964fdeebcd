"""A conversion attempt's files between object storage and the worker's disk: fetching the
source (with the other files of its package) and the calibration inputs, and storing the
outputs in the background while the sandbox still verifies them.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from domain import artifacts
from domain.conversion_task import Failed, Task, Transient
from domain.conversions import delete_objects
from storage.db import transaction
from storage.objectstore import LocalObjectStore, ObjectNotFound, ObjectStore
from storage.repos import conversions as repo


def fetch(
    sessions: sessionmaker[Session], store: ObjectStore, task: Task, work: Path
) -> tuple[Path, list[Path]]:
    """Download the source, the other files of its package (external data lives next
    to the model) and the calibration inputs."""
    if task.source_resource_id is None:
        raise Failed("the source resource was deleted before the conversion ran")
    with transaction(sessions, readonly=True) as s:
        found = repo.resource_with_parents(s, task.source_resource_id)
        if found is None:
            raise Failed("the source resource was deleted before the conversion ran")
        resource = found[0]
        siblings = [
            (r.id, r.file_name, r.storage_key)
            for r in repo.package_resources(s, resource.package_id)
        ]
        source_id = resource.id
    src_dir = work / "source"
    src_dir.mkdir(parents=True, exist_ok=True)
    source: Path | None = None
    for rid, file_name, key in siblings:
        if key is None:
            continue
        safe = Path(file_name).name
        if not safe or safe in (".", ".."):
            continue
        path = src_dir / safe
        try:
            _download(store, key, path)
        except ObjectNotFound:
            if rid == source_id:
                raise Failed("the source's bytes are missing from object storage") from None
            continue
        if rid == source_id:
            source = path
    if source is None:
        raise Failed("the source resource has no stored bytes")
    calibration = []
    for i, key in enumerate(task.options.get("calibration_keys", [])):
        path = work / "calibration" / f"calibration-{i:02d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(store, str(key), path)
        except ObjectNotFound:
            raise Failed(f"calibration input #{i} is missing from object storage") from None
        calibration.append(path)
    return source, calibration


def _download(store: ObjectStore, key: str, path: Path) -> None:
    if isinstance(store, LocalObjectStore):
        # Same machine: let the kernel copy (copy_file_range) instead of Python chunks.
        try:
            shutil.copyfile(store.path_for(key), path)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        return
    try:
        with path.open("wb") as f:
            for chunk in store.get(key):
                f.write(chunk)
    except ObjectNotFound:
        raise
    except Exception as exc:
        raise Transient(f"could not read {key} from object storage: {exc}") from None


class Uploader:
    """Stores a job's outputs in the background while the sandbox verifies them; whatever
    is not kept (recorded) is deleted on close."""

    def __init__(self, store: ObjectStore, task: Task) -> None:
        self.store = store
        self.task = task
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[list[artifacts.StoredFile]]] = {}
        self._kept: set[str] = set()

    def started(self, target: str) -> bool:
        return target in self._futures

    def start(self, target: str, files: list[dict[str, Any]]) -> None:
        if target in self._futures:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"store-{self.task.id[:8]}")
        self._futures[target] = self._pool.submit(self._put, files)

    def wait(self, target: str) -> list[artifacts.StoredFile]:
        return self._futures[target].result()

    def keep(self, targets: Iterable[str]) -> None:
        self._kept.update(targets)

    def close(self, keep: set[str] | None = None) -> None:
        """Wait for uploads and delete those not kept (nor in `keep`, which stay pending
        for a later keep() or close())."""
        keep = keep or set()
        for target, future in list(self._futures.items()):
            if target in keep:
                continue
            del self._futures[target]
            try:
                files = future.result()
            except Exception:
                continue  # _put removed what it had stored
            if target not in self._kept:
                delete_objects(self.store, [f.storage_key for f in files])
        if not self._futures and self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _put(self, files: list[dict[str, Any]]) -> list[artifacts.StoredFile]:
        t = self.task
        upload_uid = str(uuid.uuid4())
        stored: list[artifacts.StoredFile] = []
        try:
            for f in files:
                path = Path(str(f["path"]))
                file_name = artifacts.sanitize_file_name(path.name, "file_name")
                key = artifacts.storage_key(t.org_id, t.model_id, t.version, upload_uid, file_name)
                size, sha256 = self.store.put(key, _chunks(path))
                stored.append(
                    artifacts.StoredFile(
                        file_name=file_name,
                        kind=str(f.get("kind", "weights")),
                        storage_key=key,
                        size_bytes=size,
                        sha256=sha256,
                        required=bool(f.get("required", True)),
                    )
                )
        except BaseException:
            delete_objects(self.store, [f.storage_key for f in stored])
            raise
        return stored


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk
