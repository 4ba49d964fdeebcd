"""Whether a device profile can run one form of a model (container format,
quantization, runtime, size), and every reason it cannot, each with its reason code.
"""

from __future__ import annotations

from dataclasses import dataclass

from domain.device_profiles import DeviceProfile

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
