"""Resumable upload sessions: where an upload stands, so a dropped stream can continue.

One UploadSession row per upload id. An UploadArtifacts file is an upload of one file; an
UploadBundle is one upload of N+1 files whose bytes are concatenated. Per file the row
keeps (in its `parts` JSON column, one entry per file, see `FileProgress`) the storage
key, the multipart upload id, the durable parts and whether the object is complete.
`committed_bytes` is the resume offset: the sum over files of bytes in durable parts; it
never decreases.

States: open -> committed (recorded as packages, in the same transaction) | aborted (a bad
upload: its objects are deleted by the server right away) | expired (the garbage collector
found it past `expires_at`; see `objects_to_reclaim`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from domain import names
from domain.artifacts import (
    NewPackage,
    Recorded,
    Target,
    TargetState,
    record_packages,
    storage_key,
)
from domain.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from storage.objectstore.multipart import PartInfo
from storage.orm import Model, UploadSession, utcnow
from storage.repos import versions as repo

UPLOAD_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class FileDecl:
    """A file as the client declared it (name already sanitized)."""

    file_name: str
    kind: str
    size: int | None  # None: not declared
    sha256: str  # "": not declared


@dataclass(frozen=True)
class FileProgress:
    """Where one file of an upload stands."""

    index: int
    decl: FileDecl
    key: str
    multipart_id: str | None
    parts: tuple[PartInfo, ...]
    committed: int  # bytes in durable parts
    done: bool  # the object is complete under `key`
    sha256: str  # computed by the server ("" until known)
    length: int | None  # final size once done

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.decl.file_name,
            "kind": self.decl.kind,
            "size": self.decl.size,
            "sha256": self.decl.sha256,
            "key": self.key,
            "mp": self.multipart_id,
            "parts": [p.to_json() for p in self.parts],
            "committed": self.committed,
            "done": self.done,
            "hash": self.sha256,
            "length": self.length,
        }

    @classmethod
    def from_json(cls, index: int, d: dict[str, Any]) -> FileProgress:
        return cls(
            index=index,
            decl=FileDecl(d["name"], d["kind"], d["size"], d["sha256"]),
            key=d["key"],
            multipart_id=d["mp"],
            parts=tuple(PartInfo.from_json(p) for p in d["parts"]),
            committed=int(d["committed"]),
            done=bool(d["done"]),
            sha256=d["hash"] or "",
            length=d["length"],
        )


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    target: Target
    format: str
    files: tuple[FileProgress, ...]
    committed_bytes: int
    state: str
    expires_at: datetime
    created: bool = False  # this call created the session

    @property
    def name(self) -> str:
        return f"uploads/{self.upload_id}"


def _state(row: UploadSession, created: bool = False) -> UploadState:
    return UploadState(
        upload_id=row.id,
        target=Target(row.model_id, row.version),
        format=row.format,
        files=tuple(FileProgress.from_json(i, d) for i, d in enumerate(row.parts)),
        committed_bytes=row.committed_bytes,
        state=row.state,
        expires_at=row.expires_at,
        created=created,
    )


def parse_upload_id(value: str, field_name: str) -> str:
    if not names.is_uuid(value) or uuid.UUID(value).version != 4:
        raise InvalidArgument.field(field_name, "must be a UUID4 in canonical lowercase form")
    return value


def open_upload(
    session: Session,
    org_id: str,
    upload_id: str | None,
    write_offset: int,
    target: Target,
    fmt: str,
    files: Sequence[FileDecl],
    *,
    field_prefix: str,
    ttl: timedelta = UPLOAD_TTL,
) -> UploadState:
    """Start an upload, or continue one named by `upload_id`.

    A new upload must start at offset 0. Continuing one needs the same target, format and
    files as its first header and `write_offset <= committed_bytes`: the server skips the
    bytes it already has (so a client that resumes from an older QueryUploadStatus answer
    is fine); a larger offset would leave a gap (FAILED_PRECONDITION, with the committed
    size in the message and the `committed_size` metadata).
    """
    if write_offset < 0:
        raise InvalidArgument.field(f"{field_prefix}write_offset", "must not be negative")
    now = utcnow()
    row = repo.upload_session_for_update(session, org_id, upload_id) if upload_id else None
    if row is None:
        if upload_id and repo.upload_session_exists(session, upload_id):
            raise NotFound("upload", f"uploads/{upload_id}")  # another org's id
        if write_offset != 0:
            raise NotFound(
                "upload",
                f"uploads/{upload_id or ''}",
                f"no upload {upload_id!r} to resume at offset {write_offset}; "
                "start a new upload at offset 0",
            )
        return _create(session, org_id, upload_id or str(uuid.uuid4()), target, fmt, files, ttl)
    state = _state(row)
    check_open(state, now)
    if (
        state.target != target
        or state.format != fmt
        or [f.decl for f in state.files] != list(files)
    ):
        raise FailedPrecondition(
            f"upload {row.id} was started for different files or another target; "
            "resume it with the header it was started with, or start a new upload",
            [PreconditionViolation("UPLOAD_MISMATCH", state.name, "the header differs")],
            reason="UPLOAD_MISMATCH",
        )
    if write_offset > state.committed_bytes:
        raise FailedPrecondition(
            f"write_offset {write_offset} is past the committed size {state.committed_bytes} "
            f"of upload {row.id}; resume at {state.committed_bytes}",
            [
                PreconditionViolation(
                    "WRITE_OFFSET",
                    state.name,
                    f"committed_size is {state.committed_bytes}",
                )
            ],
            reason="WRITE_OFFSET_MISMATCH",
            metadata={"committed_size": str(state.committed_bytes)},
        )
    row.expires_at = now + ttl
    return _state(row)


def _create(
    session: Session,
    org_id: str,
    upload_id: str,
    target: Target,
    fmt: str,
    files: Sequence[FileDecl],
    ttl: timedelta,
) -> UploadState:
    entries = [
        FileProgress(
            index=i,
            decl=f,
            key=storage_key(org_id, target.model_id, target.version, upload_id, f.file_name),
            multipart_id=None,
            parts=(),
            committed=0,
            done=False,
            sha256="",
            length=None,
        )
        for i, f in enumerate(files)
    ]
    declared = [f.size for f in files]
    row = UploadSession(
        id=upload_id,
        org_id=org_id,
        model_id=target.model_id,
        version=target.version,
        file_name=files[0].file_name,
        kind=files[0].kind,
        format=fmt,
        declared_size=sum(s for s in declared if s) if all(declared) else None,
        declared_sha256=files[0].sha256 or None,
        storage_key=entries[0].key,
        temp_key=entries[0].key,
        multipart_upload_id=None,
        committed_bytes=0,
        parts=[e.to_json() for e in entries],
        state="open",
        expires_at=utcnow() + ttl,
    )
    session.add(row)
    session.flush()
    return _state(row, created=True)


def check_open(state: UploadState, now: datetime) -> None:
    if state.state == "open" and state.expires_at > now:
        return
    status = "expired" if state.state in ("open", "expired") else state.state
    detail = {
        "committed": "it is complete and recorded",
        "aborted": "it failed and was discarded",
        "expired": "it expired and its partial bytes are being removed",
    }[status]
    raise FailedPrecondition(
        f"upload {state.upload_id} cannot continue: {detail}; start a new upload",
        [PreconditionViolation("UPLOAD_STATE", state.name, f"the upload is {status}")],
        reason=f"UPLOAD_{status.upper()}",
    )


def _locked(session: Session, org_id: str, upload_id: str) -> UploadSession:
    row = repo.upload_session_for_update(session, org_id, upload_id)
    if row is None:
        raise NotFound("upload", f"uploads/{upload_id}")
    if row.state != "open":
        raise Aborted(
            f"upload {upload_id} was {row.state} by another request",
            reason="UPLOAD_SUPERSEDED",
        )
    return row


def _replace_file(row: UploadSession, entry: FileProgress) -> None:
    parts = [dict(p) for p in row.parts]
    parts[entry.index] = entry.to_json()
    row.parts = parts  # a new list: JSON columns do not track in-place changes
    row.committed_bytes = sum(int(p["committed"]) for p in parts)
    row.temp_key = entry.key
    row.multipart_upload_id = entry.multipart_id


def record_part(
    session: Session,
    org_id: str,
    upload_id: str,
    index: int,
    multipart_id: str,
    part: PartInfo,
    offset: int,
    *,
    model_uid: str | None = None,
    ttl: timedelta = UPLOAD_TTL,
) -> int:
    """Record a durable part of file `index` that starts at byte `offset` of that file.

    Aborted when the session moved on (another stream took it over, it was aborted) or
    when `model_uid` (the model the upload started on) is gone. Returns committed_bytes.
    """
    row = _locked(session, org_id, upload_id)
    entry = FileProgress.from_json(index, row.parts[index])
    if entry.done or entry.committed != offset or entry.multipart_id not in (None, multipart_id):
        raise Aborted(
            f"upload {upload_id} was continued by another stream", reason="UPLOAD_SUPERSEDED"
        )
    if model_uid is not None and session.get(Model, model_uid) is None:
        raise Aborted(
            f"model {names.model_name(row.model_id)!r} was deleted during the upload; "
            "nothing was recorded",
            reason="TARGET_DELETED",
            metadata={"resource_name": names.model_name(row.model_id)},
        )
    entry = FileProgress(
        index=index,
        decl=entry.decl,
        key=entry.key,
        multipart_id=multipart_id,
        parts=(*entry.parts, part),
        committed=entry.committed + part.size,
        done=False,
        sha256="",
        length=None,
    )
    _replace_file(row, entry)
    row.expires_at = utcnow() + ttl
    return row.committed_bytes


def mark_done(
    session: Session, org_id: str, upload_id: str, index: int, length: int, sha256: str
) -> None:
    """File `index` is complete under its key (verified: `length` bytes, `sha256`)."""
    row = _locked(session, org_id, upload_id)
    entry = FileProgress.from_json(index, row.parts[index])
    _replace_file(
        row,
        FileProgress(
            index=index,
            decl=entry.decl,
            key=entry.key,
            multipart_id=None,
            parts=entry.parts,
            committed=length,
            done=True,
            sha256=sha256,
            length=length,
        ),
    )


def commit_uploads(session: Session, org_id: str, upload_ids: Sequence[str]) -> None:
    """Mark uploads recorded; call in the transaction that records their packages."""
    for upload_id in upload_ids:
        row = _locked(session, org_id, upload_id)
        if not all(d["done"] for d in row.parts):
            raise Aborted(f"upload {upload_id} is not complete", reason="UPLOAD_INCOMPLETE")
        row.state = "committed"
        row.multipart_upload_id = None


@dataclass(frozen=True)
class ObjectRefs:
    """What an unfinished upload holds in the object store."""

    completed_keys: list[str] = field(default_factory=list)
    multipart: list[tuple[str, str]] = field(default_factory=list)  # (key, multipart id)


def objects_of(row: UploadSession) -> ObjectRefs:
    refs = ObjectRefs()
    for index, d in enumerate(row.parts):
        entry = FileProgress.from_json(index, d)
        if entry.done:
            refs.completed_keys.append(entry.key)
        elif entry.multipart_id:
            refs.multipart.append((entry.key, entry.multipart_id))
    return refs


def abort_upload(session: Session, org_id: str, upload_id: str) -> ObjectRefs:
    """Give up an open upload: mark it aborted and return its objects for deletion.

    Committed uploads are never touched (their objects are referenced by resources).
    """
    row = repo.upload_session_for_update(session, org_id, upload_id)
    if row is None or row.state == "committed":
        return ObjectRefs()
    refs = objects_of(row)
    row.state = "aborted"
    row.multipart_upload_id = None
    return refs


def expire_uploads(session: Session, now: datetime | None = None) -> list[ObjectRefs]:
    """For the garbage collector: mark open uploads past `expires_at` expired and return
    their objects (delete the completed keys, abort the multipart uploads)."""
    from sqlalchemy import select

    now = now or utcnow()
    rows = session.scalars(
        select(UploadSession)
        .where(UploadSession.state == "open", UploadSession.expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    out = []
    for row in rows:
        out.append(objects_of(row))
        row.state = "expired"
        row.multipart_upload_id = None
    return out


def get_status(session: Session, org_id: str, upload_id: str) -> UploadState:
    parse_upload_id(upload_id, "upload_id")
    row = repo.upload_session(session, org_id, upload_id)
    if row is None:
        raise NotFound("upload", f"uploads/{upload_id}")
    return _state(row)


def record_upload(
    session: Session,
    org_id: str,
    target: Target,
    packages: Sequence[NewPackage],
    expect: TargetState,
    upload_ids: Sequence[str],
) -> Recorded:
    """Record finished uploads as packages and mark them committed, in one transaction."""
    recorded = record_packages(session, org_id, target, packages, expect=expect)
    commit_uploads(session, org_id, upload_ids)
    return recorded
