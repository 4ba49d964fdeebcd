"""Storage invariants checked after faults, races and load, straight from the backends:

- every resource row with a storage key points at an object that exists, of its size;
- every object no row references is one the garbage collector reclaims (a dry run of
  `modelregistry gc` with no grace, dated after every open upload session expired, lists
  it), and so is every incomplete multipart upload;
- no conversion job stays running.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from domain import gc
from storage.db import create_engine_for, session_factory, transaction
from storage.objectstore import open_store
from storage.orm import ArtifactResource, ConversionJob, utcnow


@dataclass
class Audit:
    resources: int = 0
    objects: int = 0
    missing: list[str] = field(default_factory=list)  # rows whose object is gone
    wrong_size: list[str] = field(default_factory=list)
    unreclaimable: list[str] = field(default_factory=list)  # orphans GC would keep
    running_jobs: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (self.missing or self.wrong_size or self.unreclaimable or self.running_jobs)


def audit(database_url: str, object_store: str, *, jobs_settle: float = 60.0) -> Audit:
    engine = create_engine_for(database_url, pool_size=2)
    sessions = session_factory(engine)
    store = open_store(object_store)
    out = Audit()
    try:
        deadline = time.monotonic() + jobs_settle
        while True:
            with transaction(sessions, readonly=True) as s:
                running = list(
                    s.scalars(select(ConversionJob.id).where(ConversionJob.state.in_(["running"])))
                )
            if not running or time.monotonic() > deadline:
                out.running_jobs = running
                break
            time.sleep(0.5)
        with transaction(sessions, readonly=True) as s:
            rows = s.execute(
                select(ArtifactResource.storage_key, ArtifactResource.size_bytes).where(
                    ArtifactResource.storage_key.is_not(None)
                )
            ).all()
        keys = {k: size for k, size in rows}
        out.resources = len(keys)
        for key, size in keys.items():
            info = store.stat(key)
            if info is None:
                out.missing.append(key)
            elif size and info.size != size:
                out.wrong_size.append(f"{key}: row {size}, object {info.size}")
        objects = [o.key for o in store.list("") if not o.key.startswith(gc.MARK_PREFIX)]
        out.objects = len(objects)
        orphans = {k for k in objects if k not in keys}
        if orphans or any(True for _ in store.list_incomplete_uploads("")):
            report = gc.collect(
                sessions, store, grace=timedelta(0), dry_run=True,
                now=utcnow() + timedelta(days=2),
            )  # fmt: skip
            reclaimed = {o.key for o in report.deleted}
            out.unreclaimable = sorted(orphans - reclaimed)
    finally:
        engine.dispose()
    return out
