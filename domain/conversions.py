"""Conversion jobs as the RPCs see them: validating a request, resolving its source,
creating the job with its first event, reading, watching and cancelling it.

The work itself happens in the conversion workers (`domain.conversion_worker` and the
`domain.conversion_*` modules it names); the two meet only through the `conversion_jobs`
and `conversion_events` rows, so any server can answer for a job any worker is running.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from conversion.samples import npz_problem
from conversion.spec import TARGETS, source_kind, spec_problems, torch_available
from domain import artifacts, names
from domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Violations,
)
from storage.objectstore import ObjectStore
from storage.orm import ArtifactPackage, ArtifactResource, ConversionEvent, ConversionJob
from storage.repos import conversions as repo

TERMINAL = repo.TERMINAL_STATES
# Stage of an event -> the job's state after it; every other stage means running.
_STAGE_STATES = {
    "queued": "queued",
    "done": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
_RESOURCE_PATTERN = ("variants", "versions", "packages", "resources")
_PACKAGE_PATTERN = ("variants", "versions", "packages")
_QUANTIZED_TARGETS = ("onnx-fp16", "onnx-int8")
CALIBRATION_PREFIX = "conversions"


def event_state(stage: str) -> str:
    return _STAGE_STATES.get(stage, "running")


@dataclass(frozen=True)
class SpecFields:
    """A ConversionSpec as plain data."""

    targets: tuple[str, ...]
    tolerance: float = 0.0
    calibration_inputs: tuple[bytes, ...] = ()
    fp16_keep_io_types_fp16: bool = False


def check_spec(spec: SpecFields, prefix: str = "spec.") -> None:
    """InvalidArgument listing every bad field of the spec."""
    v = Violations()
    for field_name, problem in spec_problems(
        list(spec.targets), spec.tolerance, len(spec.calibration_inputs)
    ):
        v.add(prefix + field_name, problem)
    for i, blob in enumerate(spec.calibration_inputs[:16]):
        bad = npz_problem(blob)
        if bad:
            v.add(f"{prefix}calibration_inputs[{i}]", bad)
    v.raise_if_any("the conversion spec is invalid")


@dataclass(frozen=True)
class Source:
    """A resolved source resource and where its outputs go."""

    resource_id: str
    resource_name: str
    package_id: str
    file_name: str
    kind: str  # `onnx` or `torchscript`
    target: artifacts.Target
    # The model and version as they were when the job was created: outputs are not
    # recorded into a re-created model or version of the same name.
    expect: artifacts.TargetState


def parse_source_name(name: str, field_name: str = "source") -> tuple[str, list[str | None]]:
    """('resource' | 'package', ids) of a source resource name."""
    if not name:
        raise InvalidArgument.field(field_name, "is required: a resource or package name")
    depth = len(name.split("/"))
    if depth == 2 * len(_RESOURCE_PATTERN):
        return "resource", names.parse_uid_name(name, field_name, _RESOURCE_PATTERN)
    if depth == 2 * len(_PACKAGE_PATTERN):
        return "package", names.parse_uid_name(name, field_name, _PACKAGE_PATTERN)
    raise InvalidArgument.field(
        field_name,
        "must be a resource name (variants/{variant}/versions/{version}/packages/{package}"
        "/resources/{resource}, parents may be '-') or a package name",
    )


def resolve_source(
    session: Session, org_id: str, source_name: str, spec: SpecFields, field_name: str = "source"
) -> Source:
    """The org's stored source for `source_name`, checked to be convertible to every
    target of `spec` (NotFound, or FailedPrecondition saying what stands in the way)."""
    what, ids = parse_source_name(source_name, field_name)
    if what == "resource":
        variant_id, version_id, package_id, resource_id = ids
        assert resource_id is not None
        found = repo.resource_with_parents(session, resource_id)
        if found is None:
            raise NotFound("artifact resource", source_name)
        resource, package, cv, variant = found
    else:
        variant_id, version_id, package_id = ids
        assert package_id is not None
        pkg = repo.package_with_parents(session, package_id)
        if pkg is None:
            raise NotFound("artifact package", source_name)
        package, cv, variant = pkg
        resource = _primary(session, package, source_name)
    if (
        (variant_id is not None and variant_id != variant.id)
        or (version_id is not None and version_id != cv.id)
        or (what == "resource" and package_id is not None and package_id != package.id)
        or (variant.org_id is not None and variant.org_id != org_id)
    ):
        raise NotFound(
            "artifact resource" if what == "resource" else "artifact package", source_name
        )
    name = names.resource_name(variant.id, cv.id, package.id, resource.id)
    if variant.org_id is None:
        raise _precondition(
            "SOURCE_NOT_OWNED",
            name,
            "the source belongs to a blessed catalog variant; conversions record their "
            "outputs next to the source, so convert a copy uploaded to your own model",
        )
    if resource.kind != "weights":
        raise _precondition(
            "SOURCE_NOT_WEIGHTS", name, f"the resource is a {resource.kind!r} file, not weights"
        )
    if resource.storage_key is None:
        raise _precondition("SOURCE_NOT_STORED", name, "the resource has no stored bytes")
    kind = source_kind(resource.file_name)
    if kind is None:
        raise _precondition(
            "SOURCE_NOT_CONVERTIBLE",
            name,
            f"{resource.file_name!r} ({package.format}) cannot be converted: conversions "
            "read ONNX (.onnx) and TorchScript (.pt) models",
        )
    if kind == "torchscript" and not torch_available():
        raise _precondition(
            "TORCH_UNAVAILABLE",
            name,
            "converting TorchScript (.pt) models needs the server's optional `torch` extra, "
            "which is not installed; export the model to ONNX and convert the .onnx file",
        )
    if package.quantization not in ("", "none"):
        unreachable = [t for t in spec.targets if t in _QUANTIZED_TARGETS]
        if unreachable:
            raise _precondition(
                "TARGET_UNREACHABLE",
                name,
                f"the source is already quantized ({package.quantization}); "
                f"{', '.join(unreachable)} cannot be made from it (onnx and ort can)",
            )
    if names.model_id_problem(variant.name) or names.version_id_problem(cv.version):
        raise _precondition(
            "TARGET_UNREACHABLE",
            name,
            f"outputs are recorded as packages of models/{variant.name}/versions/{cv.version}, "
            "which is not a valid model version name",
        )
    target = artifacts.Target(variant.name, cv.version)
    expect = artifacts.check_target(session, org_id, target)
    return Source(resource.id, name, package.id, resource.file_name, kind, target, expect)


def _primary(session: Session, package: ArtifactPackage, name: str) -> ArtifactResource:
    for r in repo.package_resources(session, package.id):
        if r.kind == "weights":
            return r
    raise _precondition("SOURCE_NOT_WEIGHTS", name, "the package has no weights resource")


def _precondition(reason: str, subject: str, description: str) -> FailedPrecondition:
    return FailedPrecondition(
        description, [PreconditionViolation(reason, subject, description)], reason=reason
    )


# --- creating jobs --------------------------------------------------------------------------


def new_job_id() -> str:
    return str(uuid.uuid4())


def stage_calibration(store: ObjectStore, job_id: str, blobs: Sequence[bytes]) -> list[str]:
    """Store calibration archives for the worker; returns their keys."""
    keys = []
    for i, blob in enumerate(blobs):
        key = f"{CALIBRATION_PREFIX}/{job_id}/calibration-{i:02d}.npz"
        store.put(key, blob)
        keys.append(key)
    return keys


def delete_objects(store: ObjectStore, keys: Sequence[str]) -> None:
    for key in keys:
        # Best effort: the garbage collector catches leftovers.
        with contextlib.suppress(Exception):
            store.delete(key)


def create_job(
    session: Session,
    org_id: str,
    job_id: str,
    source_name: str,
    spec: SpecFields,
    calibration_keys: Sequence[str],
    *,
    max_attempts: int = 3,
) -> JobView:
    """Insert a queued job with its first event (`queued`, sequence 1)."""
    source = resolve_source(session, org_id, source_name, spec)
    job = ConversionJob(
        id=job_id,
        org_id=org_id,
        source_resource_id=source.resource_id,
        model_id=source.target.model_id,
        version=source.target.version,
        targets=list(spec.targets),
        options={
            "tolerance": spec.tolerance,
            "fp16_keep_io_types_fp16": spec.fp16_keep_io_types_fp16,
            "calibration_keys": list(calibration_keys),
            "source_name": source.resource_name,
            "source_file": source.file_name,
            "source_kind": source.kind,
            "model_uid": source.expect.model_uid,
            "version_uid": source.expect.version_uid,
        },
        state="queued",
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    repo.append_event(
        session,
        job.id,
        "queued",
        0.0,
        f"queued: {', '.join(spec.targets)} from {source.file_name}; waiting for a worker",
    )
    return JobView(job, {})


# --- reading, watching, cancelling ------------------------------------------------------------


@dataclass(frozen=True)
class TargetOutcome:
    target: str
    succeeded: bool
    error: str
    package_id: str | None
    size_bytes: int
    max_abs_error: float
    mean_cosine_similarity: float
    median_latency_ms: float


@dataclass(frozen=True)
class JobView:
    job: ConversionJob
    # package id -> (package with resources, its variant id) for succeeded targets
    packages: dict[str, tuple[ArtifactPackage, str]]

    @property
    def name(self) -> str:
        return names.conversion_job_name(self.job.id)

    @property
    def source_name(self) -> str:
        return str(self.job.options.get("source_name", ""))

    @property
    def model_version_name(self) -> str:
        return names.version_name(self.job.model_id, self.job.version)

    @property
    def calibration_count(self) -> int:
        return len(self.job.options.get("calibration_keys", []))

    def outcomes(self) -> list[TargetOutcome]:
        out = []
        for r in self.job.result.get("targets", []):
            out.append(
                TargetOutcome(
                    target=str(r.get("target", "")),
                    succeeded=bool(r.get("succeeded")),
                    error=str(r.get("error", "")),
                    package_id=r.get("package_id"),
                    size_bytes=int(r.get("size_bytes", 0)),
                    max_abs_error=float(r.get("max_abs_error", 0.0)),
                    mean_cosine_similarity=float(r.get("mean_cosine_similarity", 0.0)),
                    median_latency_ms=float(r.get("median_latency_ms", 0.0)),
                )
            )
        return out


def _view(session: Session, job: ConversionJob) -> JobView:
    ids = [r["package_id"] for r in job.result.get("targets", []) if r.get("package_id")]
    return JobView(job, repo.packages_by_id(session, ids))


def _get(session: Session, org_id: str, job_id: str) -> ConversionJob:
    job = repo.get(session, org_id, job_id)
    if job is None:
        raise NotFound("conversion job", names.conversion_job_name(job_id))
    return job


def get_job(session: Session, org_id: str, job_id: str) -> JobView:
    return _view(session, _get(session, org_id, job_id))


@dataclass(frozen=True)
class EventPage:
    events: list[ConversionEvent]
    state: str


def events_after(session: Session, org_id: str, job_id: str, after_seq: int) -> EventPage:
    """The job's events with a sequence above `after_seq`, and its current state."""
    if after_seq < 0:
        raise InvalidArgument.field("after_sequence", "must not be negative")
    job = _get(session, org_id, job_id)
    return EventPage(list(repo.events_after(session, job.id, after_seq)), job.state)


@dataclass(frozen=True)
class Cancelled:
    view: JobView
    # Objects to remove now that the job will never run (calibration inputs).
    garbage: list[str]


def cancel_job(session: Session, org_id: str, job_id: str) -> Cancelled:
    """A queued job is cancelled at once; a running one is flagged and its worker stops it
    within about a second. Cancelling a cancelled job is a no-op; a finished one is
    FAILED_PRECONDITION."""
    job = _get(session, org_id, job_id)
    job = repo.lock(session, job.id) or job
    name = names.conversion_job_name(job.id)
    if job.state == "cancelled":
        return Cancelled(_view(session, job), [])
    if job.state in TERMINAL:
        raise FailedPrecondition(
            f"conversion job {name} already {job.state}; only queued or running jobs can be "
            "cancelled",
            [PreconditionViolation("STATE", name, f"the job is {job.state}")],
            reason="JOB_FINISHED",
        )
    job.cancel_requested = True
    garbage: list[str] = []
    if job.state == "queued":
        job.state = "cancelled"
        job.error = "cancelled by request"
        repo.append_event(
            session,
            job.id,
            "cancelled",
            repo.last_fraction(session, job.id),
            "cancelled by request",
        )
        garbage = list(job.options.get("calibration_keys", []))
    session.flush()
    return Cancelled(_view(session, job), garbage)


def target_info(target: str) -> dict[str, Any]:
    t = TARGETS[target]
    return {"format": t.format, "quantization": t.quantization, "runtime": t.runtime}
