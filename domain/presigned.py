"""Presigned transfers: GetUploadUrl + ConfirmUpload, and GetArtifactDownloadUrl.

The presigned upload flow, and why it is safe:

1. `begin_upload` (GetUploadUrl) validates the request, fails fast on the plan gate and a
   published version, opens an upload session (domain.uploads; one file, nothing stored
   yet) and presigns a PUT for the session's key,
   `orgs/{org}/models/{model}/versions/{version}/{upload}/{file}` (domain.artifacts'
   key scheme; the file name gets the format's extension when it has none, S26). While the
   session is open its key counts as referenced, so the garbage collector leaves the PUT
   object alone.
2. The client PUTs the bytes straight to the object store.
3. ConfirmUpload: `parse_confirm` checks the request and that the key is one of the
   caller's; `check_confirm` that its session is open and matches; `verify_object` reads
   the object back through the store (size, sha256 against what was declared) and then
   copies it server-side, on condition that its etag is still the one just read, to a
   fresh key that no URL can write to: a client re-using the PUT URL after the confirm
   cannot change recorded bytes. `record_confirmed` records the copy through
   `domain.artifacts.record_packages` (the path streamed uploads take: model auto-created
   for a slug-shaped id, framework from the extension, plan gate, draft check) and, under
   the org lock that transaction takes, checks the copy is still there: the garbage
   collector only deletes an org's objects while holding that lock and after re-checking
   references, so a recorded resource never points at a deleted object.

Bad input raises before anything is written; a missing or mismatching object leaves no
rows and deletes nothing (the client may PUT again and re-confirm while the session is
open); objects left behind (a PUT never confirmed) are the garbage collector's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from domain import artifacts, names, uploads
from domain.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Violations,
)
from storage.objectstore import ObjectChanged, ObjectInfo, ObjectNotFound, ObjectStore
from storage.orm import ArtifactResource, utcnow
from storage.repos import models as models_repo
from storage.repos import objects as objects_repo

PUT_URL_TTL = timedelta(hours=1)
DOWNLOAD_URL_TTL = timedelta(seconds=3600)
# S3 takes at most 5 GiB in one PUT; larger files go through UploadArtifacts (multipart).
MAX_PRESIGNED_PUT_BYTES = 5 * 1024**3
PACKAGE_PATTERN = ("variants", "versions", "packages")

# format -> the extension a storage key gets when the file name has none
FORMAT_EXTENSIONS = {
    "onnx": ".onnx",
    "onnx-fp16": ".onnx",
    "onnx-int8": ".onnx",
    "ort": ".ort",
    "tflite": ".tflite",
    "coreml": ".mlmodel",
    "pt": ".pt",
    "gguf": ".gguf",
    "safetensors": ".safetensors",
    "bin": ".bin",
}

Presign = Callable[[str, timedelta], str]


@dataclass(frozen=True)
class FileInput:
    """A FileSpec as received (unvalidated)."""

    file_name: str
    kind: str = ""
    size_bytes: int = 0
    sha256: str = ""


def require_presign(store: ObjectStore, rpc: str) -> None:
    """FAILED_PRECONDITION on a store that cannot presign (the embedded local directory)."""
    if store.supports_presign:
        return
    streaming = (
        "DownloadArtifact"
        if rpc == "GetArtifactDownloadUrl"
        else "UploadArtifacts or UploadBundle (streamed, resumable)"
    )
    raise FailedPrecondition(
        f"{rpc} needs an object store that can presign URLs; this server stores objects in "
        f"a local directory: use VersionService.{streaming} instead",
        [PreconditionViolation("PRESIGN_UNSUPPORTED", "objectStore", "a local directory")],
        reason="PRESIGN_UNSUPPORTED",
        metadata={"use": streaming.split(" ")[0]},
    )


def key_file_name(raw: str, fmt: str, field_name: str) -> str:
    """The sanitized file name, with the format's extension when it has none."""
    name = artifacts.sanitize_file_name(raw, field_name)
    ext = FORMAT_EXTENSIONS.get(fmt, "")
    stem, dot, suffix = name.rpartition(".")
    if ext and not (dot and stem and suffix):
        name = name[: artifacts.MAX_FILE_NAME - len(ext)] + ext
    return name


def _file_decl(
    v: Violations, prefix: str, spec: FileInput, fmt: str, *, name_required: bool = True
) -> uploads.FileDecl | None:
    name = ""
    if spec.file_name or name_required:
        try:
            name = key_file_name(spec.file_name, fmt, f"{prefix}.file_name")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
    kind = artifacts.check_kind(v, f"{prefix}.kind", spec.kind)
    if spec.size_bytes < 0:
        v.add(f"{prefix}.size_bytes", "must not be negative (0: not declared)")
    sha = artifacts.check_sha256(v, f"{prefix}.sha256", spec.sha256)
    return uploads.FileDecl(name, kind, spec.size_bytes or None, sha)


def _check_size(size: int | None, field_name: str, max_file_bytes: int) -> None:
    limit = min(max_file_bytes, MAX_PRESIGNED_PUT_BYTES)
    if size is not None and size > limit:
        raise InvalidArgument(
            f"{field_name}: {size} bytes is over the limit of {limit} bytes for a presigned "
            "upload; stream larger files with UploadArtifacts",
            [FieldViolation(field_name, f"must be at most {limit}")],
            reason="FILE_TOO_LARGE",
            metadata={"limit_bytes": str(limit)},
        )


# --- GetUploadUrl ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadUrl:
    url: str
    storage_key: str
    expire_time: datetime
    upload_id: str


def begin_upload(
    session: Session,
    org_id: str,
    parent: str,
    fmt: str,
    spec: FileInput,
    presign: Presign,
    *,
    max_file_bytes: int,
    ttl: timedelta = PUT_URL_TTL,
) -> UploadUrl:
    """Validate, check the target, open an upload session and presign a PUT for its key."""
    v = Violations()
    target = None
    try:
        target = artifacts.parse_target(parent, "parent")
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
    artifacts.check_package_fields(v, "", fmt, "", "")
    decl = _file_decl(v, "file", spec, fmt)
    v.raise_if_any()
    assert target is not None and decl is not None
    _check_size(decl.size, "file.size_bytes", max_file_bytes)
    artifacts.check_target(session, org_id, target)
    state = uploads.open_upload(session, org_id, None, 0, target, fmt, [decl], field_prefix="file.")
    key = state.files[0].key
    url = presign(key, ttl)
    return UploadUrl(url, key, utcnow() + ttl, state.upload_id)


# --- ConfirmUpload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirm:
    """A validated ConfirmUpload request."""

    target: artifacts.Target
    storage_key: str
    upload_id: str
    fields: artifacts.PackageFields
    file_name: str
    kind: str
    size: int
    sha256: str  # "" when not declared


@dataclass(frozen=True)
class ConfirmPlan:
    """What the upload session and the target allow, read before verifying the object."""

    expect: artifacts.TargetState
    size: int
    sha256: str  # declared to GetUploadUrl or ConfirmUpload, "" when neither


@dataclass(frozen=True)
class Verified:
    """The PUT object as read back, and its copy under a key no URL can write to."""

    size: int
    sha256: str
    final_key: str
    final_etag: str | None


def parse_confirm(
    org_id: str,
    parent: str,
    storage_key: str,
    fmt: str,
    quantization: str,
    runtime: str,
    spec: FileInput,
    *,
    max_file_bytes: int,
) -> Confirm:
    v = Violations()
    target = None
    try:
        target = artifacts.parse_target(parent, "parent")
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
    fields = artifacts.check_package_fields(v, "", fmt, quantization, runtime)
    decl = _file_decl(v, "file", spec, fmt, name_required=False)
    assert decl is not None
    if decl.size is None and spec.size_bytes == 0:
        v.add("file.size_bytes", "is required: the size in bytes of the uploaded object")
    key = _parse_key(v, storage_key)
    v.raise_if_any()
    assert target is not None and key is not None
    key_org, key_model, key_version, upload_id, key_name = key
    if key_org != org_id:
        raise NotFound("upload", storage_key, f"no upload with storage_key {storage_key!r}")
    if (key_model, key_version) != (target.model_id, target.version):
        raise InvalidArgument.field(
            "storage_key",
            f"was issued for {names.version_name(key_model, key_version)}, not {parent}",
        )
    if decl.file_name and decl.file_name != key_name:
        raise InvalidArgument.field(
            "file.file_name",
            f"{spec.file_name!r} is not the file the storage key was issued for ({key_name!r})",
        )
    assert decl.size is not None
    _check_size(decl.size, "file.size_bytes", max_file_bytes)
    return Confirm(
        target, storage_key, upload_id, fields, key_name, decl.kind, decl.size, decl.sha256
    )


def _parse_key(v: Violations, key: str) -> tuple[str, str, str, str, str] | None:
    """`orgs/{org}/models/{model}/versions/{version}/{upload}/{file}` -> its ids."""
    parts = key.split("/")
    shape = "orgs/{org}/models/{model}/versions/{version}/{upload}/{file}"
    if not key:
        v.add("storage_key", "is required: the storage_key returned by GetUploadUrl")
        return None
    if (
        len(parts) != 8
        or (parts[0], parts[2], parts[4]) != ("orgs", "models", "versions")
        or not names.is_uuid(parts[1])
        or not names.is_uuid(parts[6])
        or names.model_id_problem(parts[3])
        or names.version_id_problem(parts[5])
    ):
        v.add("storage_key", f"must be a storage_key returned by GetUploadUrl ({shape})")
        return None
    try:
        clean = artifacts.sanitize_file_name(parts[7], "storage_key")
    except InvalidArgument:
        clean = ""
    if clean != parts[7]:
        v.add("storage_key", f"must be a storage_key returned by GetUploadUrl ({shape})")
        return None
    return parts[1], parts[3], parts[5], parts[6], parts[7]


def check_confirm(session: Session, org_id: str, c: Confirm) -> ConfirmPlan:
    """The upload session must be open and match; the target must still take uploads."""
    state = uploads.get_status(session, org_id, c.upload_id)
    if state.state == "committed":
        raise FailedPrecondition(
            f"{c.storage_key} was already confirmed; call GetUploadUrl for another upload",
            [PreconditionViolation("UPLOAD_STATE", state.name, "the upload is committed")],
            reason="UPLOAD_COMMITTED",
        )
    uploads.check_open(state, utcnow())
    if len(state.files) != 1 or state.files[0].key != c.storage_key:
        raise NotFound("upload", c.storage_key, f"no upload with storage_key {c.storage_key!r}")
    v = Violations()
    if state.format != c.fields.format:
        v.add("format", f"must be the format given to GetUploadUrl ({state.format!r})")
    declared = state.files[0].decl
    if declared.size is not None and declared.size != c.size:
        v.add("file.size_bytes", f"GetUploadUrl declared {declared.size}, this says {c.size}")
    if declared.sha256 and c.sha256 and declared.sha256 != c.sha256:
        v.add("file.sha256", "differs from the sha256 declared to GetUploadUrl")
    v.raise_if_any()
    expect = artifacts.check_target(session, org_id, c.target)
    return ConfirmPlan(expect, c.size, c.sha256 or declared.sha256)


def verify_object(store: ObjectStore, c: Confirm, plan: ConfirmPlan) -> Verified:
    """Read the PUT object back (size, sha256), then copy it, unchanged, to a fresh key."""
    info = store.stat(c.storage_key)
    if info is None:
        raise _missing(c.storage_key)
    if info.size != plan.size:
        raise InvalidArgument(
            f"file.size_bytes: declared {plan.size} bytes, the uploaded object has {info.size}",
            [FieldViolation("file.size_bytes", f"declared {plan.size}, stored {info.size}")],
            reason="SIZE_MISMATCH",
            metadata={"stored_size": str(info.size)},
        )
    digest = hashlib.sha256()
    read = 0
    try:
        for chunk in store.get(c.storage_key):
            digest.update(chunk)
            read += len(chunk)
    except ObjectNotFound:
        raise _missing(c.storage_key) from None
    if read != info.size:
        raise _changed(c.storage_key)
    sha = digest.hexdigest()
    if plan.sha256 and sha != plan.sha256:
        raise InvalidArgument(
            f"file.sha256: sha256 mismatch: declared {plan.sha256}, stored {sha}",
            [FieldViolation("file.sha256", f"declared {plan.sha256}, stored {sha}")],
            reason="CHECKSUM_MISMATCH",
            metadata={"declared_sha256": plan.sha256, "actual_sha256": sha},
        )
    final_key = artifacts.storage_key(
        c.storage_key.split("/")[1],
        c.target.model_id,
        c.target.version,
        str(uuid.uuid4()),
        c.file_name,
    )
    try:
        copied = store.copy(c.storage_key, final_key, if_etag=info.etag)
    except (ObjectChanged, ObjectNotFound):
        raise _changed(c.storage_key) from None
    if copied.size != info.size:
        store.delete(final_key)
        raise _changed(c.storage_key)
    return Verified(info.size, sha, final_key, copied.etag)


def record_confirmed(
    session: Session,
    org_id: str,
    c: Confirm,
    plan: ConfirmPlan,
    verified: Verified,
    stat: Callable[[str], ObjectInfo | None],
) -> artifacts.Recorded:
    """Record the verified copy as a package (record_packages) and close the session."""
    recorded = artifacts.record_packages(
        session,
        org_id,
        c.target,
        [
            artifacts.NewPackage(
                c.fields,
                [
                    artifacts.StoredFile(
                        file_name=c.file_name,
                        kind=c.kind,
                        storage_key=verified.final_key,
                        size_bytes=verified.size,
                        sha256=verified.sha256,
                    )
                ],
            )
        ],
        expect=plan.expect,
    )
    # The org row is locked now (record_packages): the garbage collector cannot delete the
    # copy between this check and the commit.
    info = stat(verified.final_key)
    if info is None or info.size != verified.size or info.etag != verified.final_etag:
        raise _changed(c.storage_key)
    uploads.mark_done(session, org_id, c.upload_id, 0, verified.size, verified.sha256)
    uploads.commit_uploads(session, org_id, [c.upload_id])
    return recorded


def _missing(key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"no object at {key}: PUT the file to the URL from GetUploadUrl, then confirm",
        [PreconditionViolation("OBJECT_MISSING", key, "nothing was uploaded to the key")],
        reason="OBJECT_MISSING",
    )


def _changed(key: str) -> Aborted:
    return Aborted(
        f"the object at {key} changed or disappeared while it was being confirmed; "
        "nothing was recorded: confirm again",
        reason="OBJECT_CHANGED",
        metadata={"storage_key": key},
    )


# --- GetArtifactDownloadUrl -----------------------------------------------------------------


@dataclass(frozen=True)
class DownloadUrl:
    url: str
    expire_time: datetime
    resource: ArtifactResource
    variant_uid: str
    catalog_version_uid: str


def download_url(
    session: Session,
    org_id: str,
    name: str,
    package: str,
    store: ObjectStore,
    *,
    ttl: timedelta = DOWNLOAD_URL_TTL,
) -> DownloadUrl:
    """A presigned GET of the primary weights of `package`, a package of model `name`.

    The model is checked first (org scope: another org's model is NOT_FOUND); a disabled
    model is FAILED_PRECONDITION; the package must belong to the model's catalog variant
    (the org's own or the blessed one of the same name).
    """
    model_id = names.parse_model_name(name, "name")
    if not package:
        raise InvalidArgument.field("package", "is required: the package's resource name")
    model = models_repo.get(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    if not model.enabled:
        raise FailedPrecondition(
            f"model {model_id!r} is disabled; enable it to download its artifacts",
            [PreconditionViolation("MODEL_DISABLED", names.model_name(model_id), "disabled")],
            reason="MODEL_DISABLED",
            metadata={"resource_name": names.model_name(model_id)},
        )
    variant_uid, cv_uid, package_uid = names.parse_uid_name(package, "package", PACKAGE_PATTERN)
    assert package_uid is not None
    found = objects_repo.package_in_scope(session, org_id, package_uid)
    if (
        found is None
        or found[2].name != model_id
        or variant_uid not in (None, found[2].id)
        or cv_uid not in (None, found[1].id)
    ):
        raise NotFound("artifact package", package)
    pkg, cv, variant = found
    full = names.package_name(variant.id, cv.id, pkg.id)
    weights = sorted(
        (r for r in pkg.resources if r.kind == "weights"), key=lambda r: (r.load_order, r.id)
    )
    if not weights:
        raise FailedPrecondition(
            f"{full} has no weights resource to download",
            [PreconditionViolation("NO_WEIGHTS", full, "no resource of kind weights")],
            reason="NO_WEIGHTS",
        )
    resource = weights[0]
    resource_name = names.resource_name(variant.id, cv.id, pkg.id, resource.id)
    if resource.storage_key is None:
        raise FailedPrecondition(
            f"{resource_name} has no stored bytes (a catalog record without a file)",
            [PreconditionViolation("NOT_STORED", resource_name, "no object")],
            reason="NOT_STORED",
        )
    require_presign(store, "GetArtifactDownloadUrl")
    url = store.presign_get(resource.storage_key, ttl)
    return DownloadUrl(url, utcnow() + ttl, resource, variant.id, cv.id)
