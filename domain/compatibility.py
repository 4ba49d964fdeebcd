"""Device compatibility (CheckCompatibility): for each device profile, whether a package
of the model's latest active catalog version runs on it, the one to deliver (the most
accurate that runs), and every reason each package does not, with a suggested fix: a
package that fits, a conversion that would, or what to upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from domain import device_profiles
from domain.device_fit import (
    INSUFFICIENT_STORAGE,
    NO_RUNNABLE_FORMAT,
    TOO_LARGE,
    UNSUPPORTED_QUANTIZATION,
    Problem,
    human_bytes,
    problems,
)
from domain.device_profiles import MAX_PROFILES_PER_REQUEST, DeviceProfile
from domain.errors import InvalidArgument
from domain.optimization_plans import plan_options
from domain.package_snapshot import PRECISION_RANK, SIZE_RATIO, Package, Snapshot, load_snapshot


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


def _package_problems(profile: DeviceProfile, p: Package) -> list[Problem]:
    return problems(profile, p.label, p.container, p.quantization, p.runtime, p.size_bytes)
