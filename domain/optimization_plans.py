"""Optimization plans (GetOptimizationPlan): for each device profile, every form of the
model considered (its packages, and what ConvertArtifact could produce from an fp32 ONNX
package) with expected size, accuracy and latency, best feasible one first.

Estimates, when nothing was measured, follow fixed rules stated in every answer:
- size: fp32 size x SIZE_RATIO[quantization] (domain/package_snapshot.py; int8 ~ 0.27 x
  fp32: one byte per weight plus scales, zero points and the operators left in float);
- accuracy: the conversion service's acceptance bound for the form (a conversion whose
  output drifts more is rejected, so a produced form drifts at most that much);
- latency: a measured latency of another form of the same version scaled by
  SPEED_FACTOR, else 0.25 ms per MB of fp32 weights on the server; either way multiplied by
  the profile's compute factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from domain import device_profiles
from domain.device_fit import human_bytes, problems
from domain.device_profiles import MAX_PROFILES_PER_REQUEST, DeviceProfile, container_format
from domain.errors import Violations
from domain.package_snapshot import (
    PRECISION_RANK,
    SIZE_RATIO,
    Package,
    Snapshot,
    load_snapshot,
    metric,
)

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

# What ConvertArtifact can produce from an fp32 ONNX package (mirrors conversion/spec.py
# TARGETS; tests/test_compatibility_units.py checks they agree):
# target/format -> (quantization, runtime).
CONVERSION_TARGETS = {
    "onnx": ("none", "onnxruntime"),
    "onnx-fp16": ("fp16", "onnxruntime"),
    "onnx-int8": ("int8", "onnxruntime"),
    "ort": ("none", "onnxruntime-mobile"),
}
MAX_SIZE_BUDGET = 1 << 50


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
    measured = [p for p in snap.packages if metric(p.metrics, "median_latency_ms")]
    if not measured:
        return None
    return min(measured, key=lambda p: PRECISION_RANK.get(p.quantization, 9))


def _server_latency(snap: Snapshot, quantization: str, own: Package | None) -> Figure:
    if own is not None:
        ms = metric(own.metrics, "median_latency_ms")
        if ms:
            return Figure(ms, True)
    speed = SPEED_FACTOR.get(quantization, 1.0)
    ref = _latency_reference(snap)
    if ref is not None:
        ref_ms = metric(ref.metrics, "median_latency_ms") or 0.0
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
        err_m = metric(p.metrics, "max_abs_error")
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
