"""The one place artifacts are recorded: upload targets, storage keys, file names, and
the transaction that turns stored objects into catalog rows.

Every way bytes enter the registry (UploadArtifacts, UploadBundle, ConfirmUpload,
UploadAndConvert, conversions) ends in `record_packages`, which in ONE transaction:

1. locks the org row (bumping its revision, the manifest etag), which also serialises
   concurrent uploads to the same org so get-or-create below cannot race;
2. resolves or auto-creates the org's Model (slug-shaped ids only; framework derived from
   the primary file's extension or the package format);
3. resolves or creates the draft ModelVersion (plan gate: `model_versions_monthly`);
4. resolves or creates the org's own override CatalogVariant named after the model (its
   metadata copied from the blessed variant of that name, if any) and the CatalogVersion
   with the same version string, linked to the ModelVersion (so deletes cascade);
5. inserts one ArtifactPackage per `NewPackage` with its resources.

Objects must already be stored (and verified) under keys from `storage_key`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import names, versions
from domain.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Violations,
)
from domain.validation import FRAMEWORK_RE
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    Model,
    ModelVersion,
    utcnow,
)
from storage.repos import models as models_repo
from storage.repos import tenancy
from storage.repos import versions as repo

# format -> (framework of an auto-created model, default runtime)
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "onnxruntime"),
    "onnx-fp16": ("onnx", "onnxruntime"),
    "onnx-int8": ("onnx", "onnxruntime"),
    "ort": ("onnx", "onnxruntime-mobile"),
    "tflite": ("tflite", "tflite"),
    "coreml": ("coreml", "coreml"),
    "pt": ("pytorch", "pytorch"),
    "gguf": ("gguf", "llama.cpp"),
    "safetensors": ("safetensors", ""),
    "bin": ("", ""),
}
# file extension -> framework (wins over the format's)
EXTENSION_FRAMEWORKS = {
    ".onnx": "onnx",
    ".ort": "onnx",
    ".tflite": "tflite",
    ".lite": "tflite",
    ".mlmodel": "coreml",
    ".mlpackage": "coreml",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".ptl": "pytorch",
    ".gguf": "gguf",
    ".safetensors": "safetensors",
    ".pb": "tensorflow",
    ".h5": "tensorflow",
    ".keras": "tensorflow",
}
QUANTIZATIONS = ("none", "fp16", "int8", "int4", "mixed")
KINDS = ("weights", "tokenizer", "config", "sidecar", "operators-config", "vocab", "data")
RUNTIME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_NAME = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- names and keys -----------------------------------------------------------------------


def sanitize_file_name(raw: str, field_name: str) -> str:
    """A file name safe inside a storage key: directories stripped, only [A-Za-z0-9._-].

    Rejects (InvalidArgument) empty names, control characters and any `..` component;
    other characters become '_' and leading dots are dropped (no hidden files).
    """
    if not raw:
        raise InvalidArgument.field(field_name, "is required")
    if _CONTROL.search(raw):
        raise InvalidArgument.field(field_name, "must not contain control characters")
    parts = re.split(r"[/\\]", raw)
    if ".." in parts:
        raise InvalidArgument.field(field_name, "must not contain '..' path components")
    name = _UNSAFE.sub("_", parts[-1]).lstrip(".")
    if not name:
        raise InvalidArgument.field(
            field_name, f"{raw!r} has no usable file name (after removing directories)"
        )
    if len(name) > MAX_FILE_NAME:
        stem, dot, ext = name.rpartition(".")
        keep = ext[:16] if dot and stem else ""
        name = name[: MAX_FILE_NAME - len(keep) - 1] + "." + keep if keep else name[:MAX_FILE_NAME]
    return name


def storage_key(org_id: str, model_id: str, version: str, upload_uid: str, file_name: str) -> str:
    """`orgs/{org}/models/{model}/versions/{version}/{upload}/{file}`; all parts validated."""
    if names.model_id_problem(model_id) or names.version_id_problem(version):
        raise ValueError(f"bad model/version for a storage key: {model_id!r}/{version!r}")
    if not names.is_uuid(org_id) or not re.fullmatch(r"[0-9a-f-]{32,36}", upload_uid):
        raise ValueError("bad org or upload id for a storage key")
    if sanitize_file_name(file_name, "file_name") != file_name:
        raise ValueError(f"unsanitized file name {file_name!r}")
    return f"orgs/{org_id}/models/{model_id}/versions/{version}/{upload_uid}/{file_name}"


def framework_for(file_name: str, fmt: str) -> str:
    """The framework of an auto-created model: from the extension, else the format."""
    _, dot, ext = file_name.lower().rpartition(".")
    framework = EXTENSION_FRAMEWORKS.get(f".{ext}", "") if dot else ""
    framework = framework or FORMATS.get(fmt, ("", ""))[0] or fmt or "unknown"
    return framework if FRAMEWORK_RE.match(framework) else "unknown"


@dataclass(frozen=True)
class Target:
    """Where an upload goes: `models/{model_id}/versions/{version}` of the caller's org."""

    model_id: str
    version: str

    @property
    def name(self) -> str:
        return names.version_name(self.model_id, self.version)


def parse_target(parent: str, field_name: str) -> Target:
    ref = names.parse_version_name(parent, field_name, allow_uid=False)
    assert ref.model_id is not None and ref.version_id is not None
    return Target(ref.model_id, ref.version_id)


@dataclass(frozen=True)
class PackageFields:
    format: str
    quantization: str = "none"
    runtime: str = ""


def check_package_fields(
    v: Violations, prefix: str, fmt: str, quantization: str, runtime: str
) -> PackageFields:
    """Validated package fields; quantization defaults to `none`, runtime to the format's."""
    if not fmt:
        v.add(f"{prefix}format", f"is required; one of {', '.join(FORMATS)}")
    elif fmt not in FORMATS:
        v.add(f"{prefix}format", f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    quantization = quantization or "none"
    if quantization not in QUANTIZATIONS:
        v.add(f"{prefix}quantization", f"must be one of {', '.join(QUANTIZATIONS)}")
    runtime = runtime or FORMATS.get(fmt, ("", ""))[1]
    if runtime and not RUNTIME_RE.match(runtime):
        v.add(f"{prefix}runtime", "must be 1-64 lowercase letters, digits, '.', '_', '+' or '-'")
    return PackageFields(fmt, quantization, runtime)


def check_kind(v: Violations, field_name: str, kind: str) -> str:
    kind = kind or "weights"
    if kind not in KINDS:
        v.add(field_name, f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    return kind


def check_sha256(v: Violations, field_name: str, value: str) -> str:
    value = value.lower()
    if value and not SHA256_RE.match(value):
        v.add(field_name, "must be 64 hex digits (a SHA-256)")
    return value


# --- the upload target --------------------------------------------------------------------


@dataclass(frozen=True)
class TargetState:
    """What existed when an upload started; a change by the time it is recorded (the model
    or version deleted meanwhile) aborts the upload instead of resurrecting them."""

    model_uid: str | None
    version_uid: str | None


def check_target(session: Session, org_id: str, target: Target) -> TargetState:
    """Fail fast, before any byte is accepted: published versions take no more artifacts
    and a new version must fit the plan. Re-checked when the upload is recorded."""
    model = models_repo.get(session, org_id, target.model_id)
    mv = repo.get(session, org_id, target.model_id, target.version) if model else None
    if mv is not None:
        _check_draft(mv, target)
    else:
        versions.check_version_quota(session, org_id)
    return TargetState(model.id if model else None, mv.id if mv else None)


def _check_draft(mv: ModelVersion, target: Target) -> None:
    if mv.lifecycle_status != "draft":
        raise FailedPrecondition(
            f"{target.name} is {mv.lifecycle_status}; artifacts can only be added to drafts "
            "(upload to a new version instead)",
            [PreconditionViolation("STATE", target.name, f"the version is {mv.lifecycle_status}")],
            reason="VERSION_NOT_DRAFT",
        )


# --- recording ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One verified object, ready to become an ArtifactResource."""

    file_name: str
    kind: str
    storage_key: str
    size_bytes: int
    sha256: str
    required: bool = True


@dataclass(frozen=True)
class NewPackage:
    fields: PackageFields
    files: Sequence[StoredFile]
    source: str = "upload"
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """The rows `record_packages` wrote (resources loaded), for building responses."""

    packages: list[ArtifactPackage]
    catalog_version: CatalogVersion
    variant_uid: str
    total_size_bytes: int
    model_created: bool
    version: versions.ModelVersionView

    @property
    def model_version_name(self) -> str:
        return names.version_name(self.version.model_id, self.version.version.version)


def record_packages(
    session: Session,
    org_id: str,
    target: Target,
    packages: Sequence[NewPackage],
    *,
    expect: TargetState | None = None,
) -> Recorded:
    """Record stored objects as packages of `target` (see the module docstring)."""
    if not packages or any(not p.files for p in packages):
        raise InvalidArgument("an upload must contain at least one file")
    # 1. Lock the org: serialises get-or-create and the quota count across uploads.
    tenancy.bump_org_revision(session, org_id)
    # 2. The model.
    model = models_repo.get(session, org_id, target.model_id)
    model_created = False
    if model is not None and expect is not None and expect.model_uid not in (None, model.id):
        model = None  # deleted and re-created meanwhile: not the model the upload began on
    if model is None:
        if expect is not None and expect.model_uid is not None:
            raise _deleted("model", names.model_name(target.model_id))
        primary = packages[0].files[0]
        model = Model(
            org_id=org_id,
            model_id=target.model_id,
            framework=framework_for(primary.file_name, packages[0].fields.format),
        )
        model.created_at = model.updated_at = utcnow()
        session.add(model)
        session.flush()
        model_created = True
    # 3. The version.
    mv = repo.get(session, org_id, target.model_id, target.version)
    if mv is not None and expect is not None and expect.version_uid not in (None, mv.id):
        raise _deleted("model version", target.name)
    if mv is None:
        if expect is not None and expect.version_uid is not None:
            raise _deleted("model version", target.name)
        mv = versions.new_version(session, org_id, model, target.version, versions.VersionFields())
    else:
        mv = repo.lock(session, mv)
        _check_draft(mv, target)
    # 4. The org's own variant and its catalog version.
    variant = repo.org_variant(session, org_id, target.model_id)
    if variant is None:
        variant = _new_override(session, org_id, target.model_id)
    cv = repo.catalog_version(session, variant.id, target.version)
    if cv is None:
        cv = CatalogVersion(variant_id=variant.id, version=target.version, model_version_id=mv.id)
        session.add(cv)
        session.flush()
    elif cv.model_version_id != mv.id:
        cv.model_version_id = mv.id  # a catalog version made by hand: link it now
    # 5. Packages and resources.
    rows: list[ArtifactPackage] = []
    for spec in packages:
        package = ArtifactPackage(
            catalog_version_id=cv.id,
            format=spec.fields.format,
            quantization=spec.fields.quantization,
            runtime=spec.fields.runtime,
            source=spec.source,
            metrics=dict(spec.metrics),
        )
        package.resources = [
            ArtifactResource(
                kind=f.kind,
                file_name=f.file_name,
                storage_key=f.storage_key,
                size_bytes=f.size_bytes,
                sha256=f.sha256,
                required=f.required,
                load_order=i,
            )
            for i, f in enumerate(spec.files)
        ]
        session.add(package)
        rows.append(package)
    versions.touch(mv)
    session.flush()
    return Recorded(
        packages=rows,
        catalog_version=cv,
        variant_uid=variant.id,
        total_size_bytes=repo.total_size(session, cv.id),
        model_created=model_created,
        version=versions.ModelVersionView(mv, target.model_id, variant.id, cv.id),
    )


def _deleted(kind: str, name: str) -> Aborted:
    return Aborted(
        f"{kind} {name!r} was deleted while the upload was in progress; nothing was recorded",
        reason="TARGET_DELETED",
        metadata={"resource_name": name},
    )


def _new_override(session: Session, org_id: str, name: str) -> CatalogVariant:
    """The org's override variant for `name`, seeded from the blessed one (if any) so the
    override does not hide the blessed variant's capabilities from the org."""
    blessed = repo.blessed_variant(session, name)
    variant = CatalogVariant(
        org_id=org_id,
        name=name,
        family=blessed.family if blessed else "",
        task_taxonomy=list(blessed.task_taxonomy) if blessed else [],
        parameter_count=blessed.parameter_count if blessed else None,
        license=blessed.license if blessed else "",
        description=blessed.description if blessed else "",
    )
    session.add(variant)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        # Only possible without the org lock (callers outside record_packages).
        found = repo.org_variant(session, org_id, name)
        if found is None:
            raise
        return found
    return variant


# --- downloads ------------------------------------------------------------------------------

RESOURCE_PATTERN = ("variants", "versions", "packages", "resources")


@dataclass(frozen=True)
class Download:
    resource: ArtifactResource
    variant_uid: str
    catalog_version_uid: str
    storage_key: str
    offset: int
    length: int  # bytes to send


def open_download(
    session: Session, org_id: str, name: str, read_offset: int, read_limit: int
) -> Download:
    """The resource `name` if the org may read it: its own or a blessed variant's, stored,
    and not of a disabled model; plus the byte range to send."""
    v = Violations()
    if read_offset < 0:
        v.add("read_offset", "must not be negative")
    if read_limit < 0:
        v.add("read_limit", "must not be negative (0 means to the end)")
    v.raise_if_any()
    variant_uid, cv_uid, package_uid, uid = names.parse_uid_name(name, "name", RESOURCE_PATTERN)
    assert uid is not None
    found = repo.resource_in_scope(session, org_id, uid)
    if found is None:
        raise NotFound("artifact resource", name)
    resource, package, cv, variant = found
    if (
        (variant_uid not in (None, variant.id))
        or (cv_uid not in (None, cv.id))
        or (package_uid not in (None, package.id))
    ):
        raise NotFound("artifact resource", name)
    full = names.resource_name(variant.id, cv.id, package.id, resource.id)
    model = models_repo.get(session, org_id, variant.name)
    if model is not None and not model.enabled:
        raise FailedPrecondition(
            f"model {model.model_id!r} is disabled; its artifacts cannot be downloaded",
            [PreconditionViolation("MODEL_DISABLED", names.model_name(model.model_id), "disabled")],
            reason="MODEL_DISABLED",
        )
    if resource.storage_key is None:
        raise FailedPrecondition(
            f"{full} has no stored bytes (a catalog record without a file)",
            [PreconditionViolation("NOT_STORED", full, "no object")],
            reason="NOT_STORED",
        )
    size = resource.size_bytes
    if read_offset > size:
        raise InvalidArgument.field("read_offset", f"must be at most the size {size}")
    remaining = size - read_offset
    length = min(remaining, read_limit) if read_limit else remaining
    return Download(resource, variant.id, cv.id, resource.storage_key, read_offset, length)
