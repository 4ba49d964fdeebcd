"""Device compatibility (CheckCompatibility) and optimization plans (GetOptimizationPlan).

Both start from the same snapshot: the model's latest ACTIVE catalog version, found
through the variant that resolves for the model's name (domain/resolver.py), and its
packages with their sizes (sum of their resources), container formats, quantizations,
runtimes and the measurements a conversion recorded in `metrics`.

Estimates, when nothing was measured, follow fixed rules stated in every answer:
- size: fp32 size x SIZE_RATIO[quantization] (int8 ~ 0.27 x fp32: one byte per weight plus
  scales, zero points and the operators left in float);
- accuracy: the conversion service's acceptance bound for the form (a conversion whose
  output drifts more is rejected, so a produced form drifts at most that much);
- latency: a measured latency of another form of the same version scaled by
  SPEED_FACTOR, else 0.25 ms per MB of fp32 weights on the server; either way multiplied by
  the profile's compute factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from domain import device_profiles, models, names, resolver
from domain.device_profiles import DeviceProfile, container_format
from domain.errors import FailedPrecondition, InvalidArgument, PreconditionViolation, Violations
from storage.repos import latest_versions

# Expected size relative to the fp32 weights.
SIZE_RATIO = {"none": 1.0, "fp16": 0.5, "mixed": 0.4, "int8": 0.27, "int4": 0.15}
# Expected max abs error when not measured: the conversion's acceptance bound per form
# (conversion/spec.py TARGETS), and registry assumptions for forms it does not produce.
ERROR_BOUND = {"none": 1e-4, "fp16": 1e-2, "int8": 0.5, "mixed": 0.5, "int4": 1.0}
_ERROR_RULE = {
    "none": "<= 1e-4, the conversion's acceptance bound for fp32 onnx/ort forms",
    "fp16": "<= 1e-2, the conversion's acceptance bound for onnx-fp16",
    "int8": "<= 0.5, the conversion's acceptance bound for onnx-int8",
    "mixed": "<= 0.5, assumed equal to the int8 bound",
    "int4": "<= 1.0, assumed twice the int8 bound (no int4 conversion to measure it)",
}
# Expected latency relative to fp32 on a CPU (fp16 gains nothing on CPU execution providers).
SPEED_FACTOR = {"none": 1.0, "fp16": 1.0, "mixed": 0.8, "int8": 0.6, "int4": 0.5}
MS_PER_FP32_MB = 0.25
# Most accurate first (CheckCompatibility delivers the most accurate package that runs).
PRECISION_RANK = {"none": 0, "fp16": 1, "mixed": 2, "int8": 3, "int4": 4}

# What ConvertArtifact can produce from an fp32 ONNX package (mirrors conversion/spec.py
# TARGETS; tests/test_compatibility_units.py checks they agree):
# target/format -> (quantization, runtime).
CONVERSION_TARGETS = {
    "onnx": ("none", "onnxruntime"),
    "onnx-fp16": ("fp16", "onnxruntime"),
    "onnx-int8": ("int8", "onnxruntime"),
    "ort": ("none", "onnxruntime-mobile"),
}
MAX_PROFILES_PER_REQUEST = 100
MAX_SIZE_BUDGET = 1 << 50

TOO_LARGE = "TOO_LARGE"
NO_RUNNABLE_FORMAT = "NO_RUNNABLE_FORMAT"
UNSUPPORTED_QUANTIZATION = "UNSUPPORTED_QUANTIZATION"
UNSUPPORTED_RUNTIME = "UNSUPPORTED_RUNTIME"
INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"


def human_bytes(n: float) -> str:
    """Decimal units, three significant digits: 112 MB, 2.15 GB."""
    if n < 1000:
        return f"{int(n)} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        value = n / scale
        if value < 999.5 or unit == "TB":
            return f"{value:.3g} {unit}"
    raise AssertionError("unreachable")


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


# ---------------------------------------------------------------------------------------
# the snapshot


@dataclass(frozen=True)
class Package:
    name: str
    format: str
    container: str
    quantization: str
    runtime: str
    source: str
    size_bytes: int
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        """How the package is called in messages: `onnx-int8`, `tflite-int8`, `onnx`."""
        q = self.quantization
        if q == "none" or self.format.endswith(f"-{q}"):
            return self.format
        return f"{self.format}-{q}"


def _effective_quantization(fmt: str, quantization: str) -> str:
    q = quantization or "none"
    if q == "none" and fmt.startswith("onnx-"):
        suffix = fmt.split("-", 1)[1]
        if suffix in SIZE_RATIO:
            return suffix
    return q


@dataclass(frozen=True)
class Snapshot:
    model_id: str
    framework: str
    catalog_version: str
    packages: tuple[Package, ...]

    @property
    def source(self) -> Package:
        """The reference weights: an fp32 package (ONNX and uploads first), else the
        largest package."""
        fp32 = [p for p in self.packages if p.quantization == "none"]
        if fp32:
            return min(
                fp32,
                key=lambda p: (p.container != "onnx", p.source != "upload", -p.size_bytes),
            )
        return max(self.packages, key=lambda p: p.size_bytes)

    @property
    def fp32_size(self) -> float:
        src = self.source
        return src.size_bytes / SIZE_RATIO.get(src.quantization, 1.0)

    @property
    def convertible(self) -> Package | None:
        """The fp32 ONNX package ConvertArtifact can start from, if any."""
        src = self.source
        return src if src.container == "onnx" and src.quantization == "none" else None


def _no_catalog(model_id: str, what: str) -> FailedPrecondition:
    subject = names.model_name(model_id)
    todo = (
        "upload the model's weights first: VersionService.UploadArtifacts with a file in a "
        "device format (.onnx, .ort, .tflite, .mlmodel/.mlpackage, .gguf, .pt), or "
        "UploadAndConvert with an .onnx file to also produce onnx-fp16, onnx-int8 and ort "
        "forms; then ask again"
    )
    return FailedPrecondition(
        f"model {subject!r} {what}: {todo}",
        [PreconditionViolation("CATALOG_VERSION", subject, f"{what}; {todo}")],
        reason="NO_CATALOG_VERSION",
        metadata={"model": subject},
    )


def load_snapshot(session: Session, org_id: str, model_id: str) -> Snapshot:
    model = models.get_model(session, org_id, model_id)
    variant = resolver.resolve_variant(session, org_id, model_id)
    if variant is None:
        raise _no_catalog(model_id, "has no catalog version yet")
    cv = latest_versions.latest_active(session, variant.id)
    if cv is None:
        if latest_versions.version_count(session, variant.id):
            raise _no_catalog(model_id, "has no active catalog version (all are deprecated)")
        raise _no_catalog(model_id, "has no catalog version yet")
    rows = latest_versions.packages_with_resources(session, cv.id)
    if not rows:
        raise _no_catalog(model_id, f"has no packages in its latest catalog version {cv.version!r}")
    packages = []
    for p in rows:
        size = sum(r.size_bytes for r in p.resources)
        measured = _metric(p.metrics or {}, "size_bytes")
        if size == 0 and measured is not None:
            size = int(measured)
        packages.append(
            Package(
                name=names.package_name(variant.id, cv.id, p.id),
                format=p.format,
                container=container_format(p.format),
                quantization=_effective_quantization(p.format, p.quantization),
                runtime=p.runtime or "",
                source=p.source,
                size_bytes=size,
                metrics=dict(p.metrics or {}),
            )
        )
    return Snapshot(
        model_id=model_id,
        framework=model.framework,
        catalog_version=names.catalog_version_name(variant.id, cv.id),
        packages=tuple(packages),
    )


# ---------------------------------------------------------------------------------------
# what a profile can run


# A runtime that also runs packages built for another: the full onnxruntime loads the ORT
# format produced for onnxruntime-mobile.
RUNTIME_ALSO_RUNS = {"onnxruntime": ("onnxruntime-mobile",)}


def runs_runtime(profile: DeviceProfile, runtime: str) -> bool:
    return runtime in profile.runtimes or any(
        runtime in RUNTIME_ALSO_RUNS.get(r, ()) for r in profile.runtimes
    )


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


def problems(
    profile: DeviceProfile, label: str, container: str, quantization: str, runtime: str, size: int
) -> list[Problem]:
    """Every reason `profile` cannot run a form, in a fixed order."""
    out: list[Problem] = []
    if runtime and not runs_runtime(profile, runtime):
        out.append(
            Problem(
                UNSUPPORTED_RUNTIME,
                f"{label} targets the {runtime} runtime; {profile.name} has "
                f"{', '.join(profile.runtimes)}",
            )
        )
    if container not in profile.formats:
        out.append(
            Problem(
                NO_RUNNABLE_FORMAT,
                f"{profile.name} cannot load {container} files; it runs "
                f"{', '.join(profile.formats)}",
            )
        )
    if quantization not in profile.quantizations:
        out.append(
            Problem(
                UNSUPPORTED_QUANTIZATION,
                f"{profile.name} does not execute {quantization} weights; it supports "
                f"{', '.join(profile.quantizations)}",
            )
        )
    if size > profile.weights_budget_bytes:
        out.append(
            Problem(
                TOO_LARGE,
                f"{label} is {human_bytes(size)}, over {profile.name}'s memory budget for "
                f"weights of {human_bytes(profile.weights_budget_bytes)} "
                f"({human_bytes(profile.ram_bytes)} RAM)",
            )
        )
    if size > profile.storage_budget_bytes:
        out.append(
            Problem(
                INSUFFICIENT_STORAGE,
                f"{label} is {human_bytes(size)}, over {profile.name}'s storage budget for "
                f"models of {human_bytes(profile.storage_budget_bytes)}",
            )
        )
    return out


def _package_problems(profile: DeviceProfile, p: Package) -> list[Problem]:
    return problems(profile, p.label, p.container, p.quantization, p.runtime, p.size_bytes)


# ---------------------------------------------------------------------------------------
# CheckCompatibility


@dataclass(frozen=True)
class Reason:
    code: str
    package: str
    message: str
    suggested_fix: str


@dataclass(frozen=True)
class DeviceResult:
    device_profile: str
    compatible: bool
    recommended_package: str
    reasons: list[Reason]


@dataclass(frozen=True)
class CompatibilityResult:
    catalog_version: str
    framework: str
    results: list[DeviceResult]


def _check_profile_names(requested: list[str]) -> None:
    if len(requested) > MAX_PROFILES_PER_REQUEST:
        raise InvalidArgument.field(
            "device_profiles", f"at most {MAX_PROFILES_PER_REQUEST} profiles per request"
        )


def check_compatibility(
    session: Session, org_id: str, model_id: str, requested: list[str]
) -> CompatibilityResult:
    _check_profile_names(requested)
    profiles = device_profiles.select_profiles(session, org_id, requested)
    snap = load_snapshot(session, org_id, model_id)
    return CompatibilityResult(
        snap.catalog_version, snap.framework, [_check_one(snap, p) for p in profiles]
    )


def _check_one(snap: Snapshot, profile: DeviceProfile) -> DeviceResult:
    runnable = [p for p in snap.packages if not _package_problems(profile, p)]
    best = (
        min(
            runnable,
            key=lambda p: (
                PRECISION_RANK.get(p.quantization, 9),
                profile.formats.index(p.container),
                p.size_bytes,
            ),
        )
        if runnable
        else None
    )
    reasons: list[Reason] = []
    for p in snap.packages:
        for prob in _package_problems(profile, p):
            if best is not None:
                fix = f"the {best.label} package, {human_bytes(best.size_bytes)}, fits"
            else:
                fix = _fix_without_package(snap, profile, prob.code)
            reasons.append(Reason(prob.code, p.name, prob.message, fix))
    return DeviceResult(profile.name, best is not None, best.name if best else "", reasons)


def _fix_without_package(snap: Snapshot, profile: DeviceProfile, code: str) -> str:
    """A fix when no existing package runs: a conversion that would, else what to upload."""
    source = snap.convertible
    if source is not None:
        estimated = [o for o in plan_options(snap, profile, 0.0, 0) if o.feasible and not o.package]
        if estimated:
            o = estimated[0]
            return (
                f"convert the {source.label} package to {o.format} with "
                f"VersionService.ConvertArtifact: estimated {human_bytes(o.size.value)} "
                f"({o.size.rule}), which fits {profile.name}"
            )
    if code in (TOO_LARGE, INSUFFICIENT_STORAGE):
        budget = min(profile.weights_budget_bytes, profile.storage_budget_bytes)
        smallest: tuple[str, float, str]
        for q in ("int4", "int8", "fp16"):
            if q not in profile.quantizations:
                continue
            size = snap.fp32_size * SIZE_RATIO[q]
            rule = f"{q} ~ {SIZE_RATIO[q]:g} x fp32 size"
            if size <= budget:
                return (
                    f"upload an {q} form in a format {profile.name} runs "
                    f"({', '.join(profile.formats)}): estimated {human_bytes(size)} ({rule}) "
                    f"fits the {human_bytes(budget)} budget"
                )
            smallest = (q, size, rule)
            break
        else:
            smallest = ("none", snap.fp32_size, "fp32 size")
        q, size, rule = smallest
        return (
            f"no form of this model fits {profile.name}: even {q} weights (estimated "
            f"{human_bytes(size)}, {rule}) exceed its {human_bytes(budget)} budget; use a "
            "smaller model, or override the profile if your devices have more memory"
        )
    if code == NO_RUNNABLE_FORMAT:
        hint = (
            " (an .onnx upload can then be converted to onnx-fp16, onnx-int8 and ort)"
            if "onnx" in profile.formats
            else ""
        )
        return (
            f"upload the model in a format {profile.name} runs: {', '.join(profile.formats)}{hint}"
        )
    if code == UNSUPPORTED_QUANTIZATION:
        return (
            f"provide a form whose quantization {profile.name} executes: "
            f"{', '.join(profile.quantizations)}"
        )
    return f"provide a package for a runtime {profile.name} has: {', '.join(profile.runtimes)}"


# ---------------------------------------------------------------------------------------
# GetOptimizationPlan


@dataclass(frozen=True)
class Figure:
    value: float
    measured: bool
    rule: str = ""


@dataclass(frozen=True)
class _Candidate:
    """One form, before a profile is applied (latency on the server CPU)."""

    format: str
    container: str
    quantization: str
    runtime: str
    package: str
    size: Figure
    error: Figure
    server_latency: Figure
    label: str


@dataclass(frozen=True)
class Option:
    format: str
    quantization: str
    size: Figure
    max_abs_error: Figure
    latency_ms: Figure
    package: str
    feasible: bool
    infeasible_reasons: list[str] = field(default_factory=list)

    @property
    def estimate_rule(self) -> str:
        parts = [
            f"{what}: {f.rule}"
            for what, f in (
                ("size", self.size),
                ("accuracy", self.max_abs_error),
                ("latency", self.latency_ms),
            )
            if not f.measured
        ]
        return "; ".join(parts)


@dataclass(frozen=True)
class DevicePlan:
    device_profile: str
    recommended: Option | None
    alternatives: list[Option]


@dataclass(frozen=True)
class PlanResult:
    catalog_version: str
    source_size_bytes: int
    plans: list[DevicePlan]


def _latency_reference(snap: Snapshot) -> Package | None:
    measured = [p for p in snap.packages if _metric(p.metrics, "median_latency_ms")]
    if not measured:
        return None
    return min(measured, key=lambda p: PRECISION_RANK.get(p.quantization, 9))


def _server_latency(snap: Snapshot, quantization: str, own: Package | None) -> Figure:
    if own is not None:
        ms = _metric(own.metrics, "median_latency_ms")
        if ms:
            return Figure(ms, True)
    speed = SPEED_FACTOR.get(quantization, 1.0)
    ref = _latency_reference(snap)
    if ref is not None:
        ref_ms = _metric(ref.metrics, "median_latency_ms") or 0.0
        ref_speed = SPEED_FACTOR.get(ref.quantization, 1.0)
        value = ref_ms / ref_speed * speed
        scale = f" / {ref_speed:g}" if ref_speed != 1.0 else ""
        return Figure(
            value,
            False,
            f"the measured {ref.label} latency {ref_ms:g} ms{scale} x {speed:g} "
            f"({quantization} vs fp32 speed on CPU)",
        )
    mb = snap.fp32_size / 1e6
    return Figure(
        mb * MS_PER_FP32_MB * speed,
        False,
        f"{MS_PER_FP32_MB:g} ms per MB of fp32 weights ({mb:.3g} MB) x {speed:g} "
        f"({quantization} vs fp32 speed on CPU)",
    )


def _candidates(snap: Snapshot) -> list[_Candidate]:
    source = snap.source
    fp32 = snap.fp32_size
    out: list[_Candidate] = []
    for p in snap.packages:
        if p.size_bytes > 0:
            size = Figure(p.size_bytes, True)
        else:
            ratio = SIZE_RATIO.get(p.quantization, 1.0)
            size = Figure(fp32 * ratio, False, f"{p.quantization} ~ {ratio:g} x fp32 size")
        err_m = _metric(p.metrics, "max_abs_error")
        if err_m is not None:
            error = Figure(err_m, True)
        elif p is source:
            error = Figure(0.0, False, "0, these are the source weights")
        else:
            q = p.quantization
            error = Figure(ERROR_BOUND.get(q, 1.0), False, _ERROR_RULE.get(q, "<= 1.0"))
        out.append(
            _Candidate(
                p.format,
                p.container,
                p.quantization,
                p.runtime,
                p.name,
                size,
                error,
                _server_latency(snap, p.quantization, p),
                p.label,
            )
        )
    if snap.convertible is not None:
        have = {(p.format, p.quantization) for p in snap.packages}
        for target, (q, runtime) in CONVERSION_TARGETS.items():
            if (target, q) in have:
                continue
            ratio = SIZE_RATIO[q]
            out.append(
                _Candidate(
                    target,
                    container_format(target),
                    q,
                    runtime,
                    "",
                    Figure(
                        fp32 * ratio,
                        False,
                        f"{q if q != 'none' else 'fp32'} ~ {ratio:g} x fp32 size "
                        f"({human_bytes(fp32)})",
                    ),
                    Figure(ERROR_BOUND[q], False, _ERROR_RULE[q]),
                    _server_latency(snap, q, None),
                    target,
                )
            )
    return out


def _option(c: _Candidate, profile: DeviceProfile, tolerance: float, size_budget: int) -> Option:
    size = round(c.size.value)
    reasons = [
        p.message for p in problems(profile, c.label, c.container, c.quantization, c.runtime, size)
    ]
    if size_budget and size > size_budget:
        reasons.append(
            f"{c.label} is {human_bytes(size)}, over the requested size budget of "
            f"{human_bytes(size_budget)}"
        )
    if tolerance and c.error.value > tolerance:
        how = "measured" if c.error.measured else "estimated"
        reasons.append(
            f"{c.label}'s max abs error {c.error.value:g} ({how}) exceeds the accuracy "
            f"tolerance {tolerance:g}"
        )
    cf = profile.compute_factor
    if c.server_latency.measured:
        latency = Figure(c.server_latency.value * cf, True)
    else:
        latency = Figure(
            c.server_latency.value * cf,
            False,
            f"{c.server_latency.rule} x compute factor {cf:g} of {profile.name}",
        )
    return Option(
        format=c.format,
        quantization=c.quantization,
        size=Figure(size, c.size.measured, c.size.rule),
        max_abs_error=c.error,
        latency_ms=latency,
        package=c.package,
        feasible=not reasons,
        infeasible_reasons=reasons,
    )


def plan_options(
    snap: Snapshot, profile: DeviceProfile, tolerance: float, size_budget: int
) -> list[Option]:
    """Every form considered for the profile, best first: feasible ones by expected
    latency, then accuracy, then size (existing packages before conversions)."""
    options = [_option(c, profile, tolerance, size_budget) for c in _candidates(snap)]
    return sorted(
        options,
        key=lambda o: (
            not o.feasible,
            round(o.latency_ms.value, 6),
            o.max_abs_error.value,
            o.size.value,
            o.package == "",
            o.format,
        ),
    )


def optimization_plan(
    session: Session,
    org_id: str,
    model_id: str,
    requested: list[str],
    accuracy_tolerance: float,
    size_budget_bytes: int,
) -> PlanResult:
    v = Violations()
    if not math.isfinite(accuracy_tolerance) or accuracy_tolerance < 0:
        v.add("accuracy_tolerance", "must be a finite number >= 0 (0 means no limit)")
    if not 0 <= size_budget_bytes <= MAX_SIZE_BUDGET:
        v.add("size_budget_bytes", f"must be within [0, {MAX_SIZE_BUDGET}] (0 means no limit)")
    if len(requested) > MAX_PROFILES_PER_REQUEST:
        v.add("device_profiles", f"at most {MAX_PROFILES_PER_REQUEST} profiles per request")
    v.raise_if_any()
    profiles = device_profiles.select_profiles(session, org_id, requested)
    snap = load_snapshot(session, org_id, model_id)
    plans: list[DevicePlan] = []
    for profile in profiles:
        options = plan_options(snap, profile, accuracy_tolerance, size_budget_bytes)
        recommended = options[0] if options and options[0].feasible else None
        plans.append(DevicePlan(profile.name, recommended, options))
    return PlanResult(snap.catalog_version, snap.source.size_bytes, plans)
