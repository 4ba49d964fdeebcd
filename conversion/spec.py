"""Conversion targets and the request that selects them."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One output form: how it is recorded and how strictly it is checked by default."""

    name: str
    format: str
    quantization: str
    runtime: str
    default_tolerance: float
    suffix: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx", "onnx", "none", "onnxruntime", 1e-4, ".onnx"),
        Target("onnx-fp16", "onnx-fp16", "fp16", "onnxruntime", 1e-2, ".fp16.onnx"),
        Target("onnx-int8", "onnx-int8", "int8", "onnxruntime", 0.5, ".int8.onnx"),
        Target("ort", "ort", "none", "onnxruntime-mobile", 1e-4, ".ort"),
    )
}
MAX_TOLERANCE = 1e6
MAX_CALIBRATION_INPUTS = 16

# Source kinds by file suffix.
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth")


def source_kind(file_name: str) -> str | None:
    """`onnx`, `torchscript`, or None when the file is neither."""
    lower = file_name.lower()
    if lower.endswith(ONNX_SUFFIXES):
        return "onnx"
    if lower.endswith(TORCHSCRIPT_SUFFIXES):
        return "torchscript"
    return None


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Spec:
    """What to produce from one source."""

    targets: tuple[str, ...]
    # 0 means the per-target default.
    tolerance: float = 0.0
    # .npz files keyed by input name; used for static int8 quantization and verification.
    calibration: tuple[Path, ...] = field(default_factory=tuple)
    fp16_keep_io_types_fp16: bool = False

    def tolerance_for(self, target: str) -> float:
        return self.tolerance if self.tolerance > 0 else TARGETS[target].default_tolerance


def spec_problems(
    targets: list[str], tolerance: float, calibration_count: int
) -> list[tuple[str, str]]:
    """(field, description) for each bad part of a request; field names are relative to
    the ConversionSpec message."""
    problems: list[tuple[str, str]] = []
    known = ", ".join(TARGETS)
    if not targets:
        problems.append(("targets", f"at least one target is required; one of {known}"))
    seen: set[str] = set()
    for i, t in enumerate(targets):
        if t not in TARGETS:
            problems.append((f"targets[{i}]", f"unknown target {t!r}; one of {known}"))
        elif t in seen:
            problems.append((f"targets[{i}]", f"target {t!r} is listed twice"))
        seen.add(t)
    if math.isnan(tolerance) or not 0 <= tolerance <= MAX_TOLERANCE:
        problems.append(
            ("tolerance", f"must be within [0, {MAX_TOLERANCE:g}] (0: per-target default)")
        )
    if calibration_count > MAX_CALIBRATION_INPUTS:
        problems.append(
            (
                "calibration_inputs",
                f"at most {MAX_CALIBRATION_INPUTS} calibration inputs (got {calibration_count})",
            )
        )
    return problems
