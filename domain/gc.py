"""Garbage collection of the object store (`modelregistry gc`).

Deleting a model or version removes rows only; its bytes stay so that an accidental delete
can be recovered (by re-recording rows that point at the keys) within the grace window,
7 days by default (S6). The collector, in order:

1. expires open upload sessions past their `expires_at` (domain.uploads.expire_uploads),
   aborting their multipart uploads and deleting the objects they completed but never
   recorded (after the same reference check as below);
2. aborts incomplete multipart uploads / partial files started more than `grace` ago that
   no open upload session still resumes;
3. deletes objects that no row references, once they have been unreferenced for `grace`.

What counts as a reference: an ArtifactResource's storage_key (any org, or the blessed
catalog); every key of an open upload session (streamed uploads in flight and presigned
PUTs not yet confirmed); calibration files of queued or running conversion jobs; and any
key under the `orgs/{org}/models/{model}/versions/{version}/` prefix a queued or running
conversion job writes its outputs to.

"Unreferenced for `grace`" needs a clock that starts when the last reference went away,
not when the object was written (an old object of a model deleted today must survive
another `grace`). Rows are deleted outright, so the collector keeps that clock itself: the
first run that finds an object unreferenced writes a small marker object
`_gc/unreferenced/{sha256(key)}`; a later run deletes the object once the marker is
`grace` old (an object that is referenced again loses its marker). Only objects that are
themselves older than `grace` are considered, so bytes of an upload that has not been
recorded yet are never marked. With `--grace 0` unreferenced objects go at once.

Never deleting a referenced object, even one being confirmed at that moment: the check
and the delete of an org's objects (`orgs/{org}/...`) run in one transaction that holds
the org row's lock, the lock every upload's recording transaction takes
(domain.artifacts.record_packages). A recording that commits first makes the collector
see its rows; one that comes after re-checks that its object still exists under that lock
(ConfirmUpload) or references keys of a session that was open all along (streamed
uploads). Objects outside `orgs/` (catalog imports, conversion calibration files) rely on
the reference check and the grace window.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from domain import names, uploads
from storage.db import SQLITE_BEGIN_OPTION
from storage.objectstore import IncompleteUpload, ObjectInfo, ObjectStore
from storage.objectstore.multipart import multipart_for
from storage.orm import UploadSession, utcnow
from storage.repos import objects as repo
from storage.repos import tenancy

log = logging.getLogger("modelregistry.gc")

DEFAULT_GRACE = timedelta(days=7)
MARK_PREFIX = "_gc/unreferenced/"
BATCH = 200  # objects checked and deleted per transaction


@dataclass
class Report:
    """What a run did (or, with dry_run, would do)."""

    dry_run: bool
    grace: timedelta
    expired_sessions: list[str] = field(default_factory=list)
    aborted: list[IncompleteUpload] = field(default_factory=list)
    deleted: list[ObjectInfo] = field(default_factory=list)
    pending: list[tuple[ObjectInfo, datetime]] = field(default_factory=list)  # (object, due)
    kept_referenced: int = 0
    kept_young: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def deleted_bytes(self) -> int:
        return sum(o.size for o in self.deleted)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"gc{' (dry run)' if self.dry_run else ''}: {verb} {len(self.deleted)} objects "
            f"({self.deleted_bytes} bytes), {'would abort' if self.dry_run else 'aborted'} "
            f"{len(self.aborted)} incomplete uploads, "
            f"{'would expire' if self.dry_run else 'expired'} {len(self.expired_sessions)} "
            f"upload sessions; kept {self.kept_referenced} referenced objects, "
            f"{self.kept_young} younger than the grace of {format_duration(self.grace)}, "
            f"{len(self.pending)} unreferenced waiting out the grace"
            + (f"; {len(self.errors)} errors" if self.errors else "")
        )


Emit = Callable[[str], None]


def collect(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    *,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    now: datetime | None = None,
    emit: Emit | None = None,
) -> Report:
    """One garbage collection run; `emit` gets one line per action."""
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    now = now or utcnow()
    out: Emit = emit or (lambda _line: None)
    report = Report(dry_run=dry_run, grace=grace)
    expired_keys = _expire_sessions(sessions, store, now, report, out)
    _abort_incomplete(sessions, store, now, report, out)
    _sweep(sessions, store, now, report, out, forced=expired_keys)
    return report


# --- 1. expired upload sessions -------------------------------------------------------------


def _expire_sessions(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    now: datetime,
    report: Report,
    out: Emit,
) -> list[str]:
    """Mark expired sessions; abort their multipart uploads. Returns the keys of objects
    they completed (deleted by the sweep regardless of age, after the reference check)."""
    with _transaction(sessions, commit=not report.dry_run) as session:
        rows = session.scalars(
            select(UploadSession)
            .where(UploadSession.state == "open", UploadSession.expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        described = {r.id: f"{names.version_name(r.model_id, r.version)}" for r in rows}
        if report.dry_run:
            refs = [uploads.objects_of(r) for r in rows]
        else:
            refs = uploads.expire_uploads(session, now)
    for upload_id, target in described.items():
        report.expired_sessions.append(upload_id)
        verb = "would expire" if report.dry_run else "expired"
        out(f"{verb} upload session {upload_id} ({target})")
    keys: list[str] = []
    multipart = multipart_for(store)
    for ref in refs:
        keys.extend(ref.completed_keys)
        for key, upload_id in ref.multipart:
            incomplete = IncompleteUpload(key, upload_id, None)
            report.aborted.append(incomplete)
            if report.dry_run:
                out(f"would abort incomplete upload {key} (expired session)")
                continue
            try:
                multipart.abort(key, upload_id)
                out(f"aborted incomplete upload {key} (expired session)")
            except Exception as exc:
                _error(report, out, f"could not abort the multipart upload of {key}: {exc}")
    return keys


# --- 2. stale incomplete uploads ------------------------------------------------------------


def _abort_incomplete(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    now: datetime,
    report: Report,
    out: Emit,
) -> None:
    cutoff = now - report.grace
    stale = [
        u
        for u in store.list_incomplete_uploads()
        if u.initiated is not None and u.initiated <= cutoff
    ]
    if not stale:
        return
    with _transaction(sessions, commit=False) as session:
        resumable = _session_keys(repo.open_upload_sessions(session))
    if report.dry_run:
        resumable -= _expiring_keys(sessions, now)
    for u in stale:
        if u.key in resumable:
            continue  # an open session may still continue it
        report.aborted.append(u)
        started = u.initiated.isoformat(timespec="seconds") if u.initiated else "?"
        if report.dry_run:
            out(f"would abort incomplete upload {u.key} (started {started})")
            continue
        try:
            store.abort_incomplete_upload(u)
            out(f"aborted incomplete upload {u.key} (started {started})")
        except Exception as exc:
            _error(report, out, f"could not abort the incomplete upload of {u.key}: {exc}")


# --- 3. unreferenced objects ----------------------------------------------------------------


def mark_key(key: str) -> str:
    return MARK_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def _sweep(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    now: datetime,
    report: Report,
    out: Emit,
    *,
    forced: Sequence[str],
) -> None:
    cutoff = now - report.grace
    marks: dict[str, ObjectInfo] = {m.key: m for m in store.list(MARK_PREFIX)}
    forced_set = set(forced)
    candidates: list[ObjectInfo] = []
    live_marks: set[str] = set()
    for info in store.list():
        if info.key.startswith(MARK_PREFIX):
            continue
        live_marks.add(mark_key(info.key))
        old = info.last_modified is not None and info.last_modified <= cutoff
        if old or info.key in forced_set:
            candidates.append(info)
        else:
            report.kept_young += 1
    dry_expiring = _expiring_keys(sessions, now) if report.dry_run else set()
    by_org: dict[str | None, list[ObjectInfo]] = {}
    for info in candidates:
        by_org.setdefault(_org_of(info.key), []).append(info)
    for org_id, infos in sorted(by_org.items(), key=lambda kv: kv[0] or ""):
        for start in range(0, len(infos), BATCH):
            chunk = infos[start : start + BATCH]
            try:
                _sweep_batch(
                    sessions, store, now, report, out, org_id, chunk, marks,
                    forced_set, dry_expiring,
                )  # fmt: skip
            except Exception as exc:
                _error(report, out, f"could not sweep {len(chunk)} objects: {exc}")
    # Markers of objects that are gone (deleted above, or by someone else).
    for key in sorted(set(marks) - live_marks):
        if not report.dry_run:
            try:
                store.delete(key)
            except Exception as exc:
                _error(report, out, f"could not delete the stale marker {key}: {exc}")


def _sweep_batch(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    now: datetime,
    report: Report,
    out: Emit,
    org_id: str | None,
    chunk: Sequence[ObjectInfo],
    marks: dict[str, ObjectInfo],
    forced: set[str],
    dry_expiring: set[str],
) -> None:
    dry = report.dry_run
    # The check and the deletes under the org's lock: see the module docstring.
    with _transaction(sessions, commit=not dry) as session:
        if org_id is not None:
            tenancy.lock_org(session, org_id)
        referenced = _referenced(session, org_id, [i.key for i in chunk]) - dry_expiring
        for info in chunk:
            marker = marks.get(mark_key(info.key))
            if info.key in referenced:
                report.kept_referenced += 1
                if marker is not None and not dry:
                    store.delete(marker.key)  # referenced again: its clock restarts
                continue
            since = (marker.last_modified if marker else None) or now
            due = since + report.grace
            if info.key not in forced and due > now:
                report.pending.append((info, due))
                if marker is None and not dry:
                    new_mark = mark_key(info.key)
                    store.put(new_mark, info.key.encode())
                    marks[new_mark] = ObjectInfo(new_mark, 0, None, now)
                out(
                    f"{'would keep' if dry else 'kept'} {info.key}: unreferenced, "
                    f"deletable after {due.isoformat(timespec='seconds')}"
                )
                continue
            if not dry:
                store.delete(info.key)
                if marker is not None:
                    store.delete(marker.key)
            report.deleted.append(info)
            age = _age(now, info.last_modified)
            out(f"{'would delete' if dry else 'deleted'} {info.key} ({info.size} bytes, {age})")


def _referenced(session: Session, org_id: str | None, keys: Sequence[str]) -> set[str]:
    found = repo.keys_referenced_by_resources(session, keys)
    in_flight = _session_keys(repo.open_upload_sessions(session, org_id))
    found.update(k for k in keys if k in in_flight)
    prefixes: list[str] = []
    for job in repo.active_conversion_jobs(session, org_id):
        found.update(k for k in job.options.get("calibration_keys", []) if k in keys)
        prefixes.append(f"orgs/{job.org_id}/models/{job.model_id}/versions/{job.version}/")
    if prefixes:
        found.update(k for k in keys if k.startswith(tuple(prefixes)))
    return found


def _session_keys(rows: Sequence[UploadSession]) -> set[str]:
    keys: set[str] = set()
    for row in rows:
        keys.update(k for k in (row.storage_key, row.temp_key) if k)
        for i, entry in enumerate(row.parts or []):
            keys.add(uploads.FileProgress.from_json(i, entry).key)
    return keys


def _expiring_keys(sessions: sessionmaker[Session], now: datetime) -> set[str]:
    """Keys of open sessions past their expiry (a dry run does not mark them expired)."""
    with _transaction(sessions, commit=False) as session:
        rows = [r for r in repo.open_upload_sessions(session) if r.expires_at < now]
        return _session_keys(rows)


def _org_of(key: str) -> str | None:
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[0] == "orgs" and names.is_uuid(parts[1]):
        return parts[1]
    return None


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "age unknown"
    return f"{format_duration(now - then)} old"


def _error(report: Report, out: Emit, message: str) -> None:
    log.warning("%s", message)
    report.errors.append(message)
    out(f"error: {message}")


@contextmanager
def _transaction(factory: sessionmaker[Session], *, commit: bool) -> Iterator[Session]:
    """A read-write transaction (BEGIN IMMEDIATE on SQLite) committed only if `commit`."""
    with factory() as session:
        session.begin()
        session.connection(execution_options={SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        if commit:
            session.commit()
        else:
            session.rollback()


# --- durations ------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s`, `2w`, `1d12h` or a number of seconds; ValueError if not."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if text.isdigit():
        return timedelta(seconds=int(text))
    total = 0
    number = ""
    for ch in text:
        if ch.isdigit():
            number += ch
        elif ch in _UNITS and number:
            total += int(number) * _UNITS[ch]
            number = ""
        else:
            raise ValueError(f"bad duration {text!r}: use e.g. 7d, 12h, 30m, 90s")
    if number:
        raise ValueError(f"bad duration {text!r}: a number needs a unit (s, m, h, d, w)")
    return timedelta(seconds=total)


def format_duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])
