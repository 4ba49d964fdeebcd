"""Numerical verification: run the source and an output in onnxruntime on the same inputs
and measure how far apart they are, how big the output is and how fast it runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from conversion.samples import Feed, InputSpec, cast_feed
from conversion.targets import session_options

LATENCY_BUDGET_S = 1.0
LATENCY_MAX_RUNS = 20
LATENCY_MIN_RUNS = 3


@dataclass(frozen=True)
class Metrics:
    size_bytes: int
    max_abs_error: float
    mean_cosine_similarity: float
    median_latency_ms: float
    source_size_bytes: int
    source_median_latency_ms: float
    samples: int
    sample_inputs: str  # `generated` or `calibration`
    tolerance: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner:
    """One loaded model: its inputs and a way to run it on feeds."""

    def __init__(self, path: Path, threads: int, *, optimize: bool = True) -> None:
        so = session_options(threads)
        if not optimize:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [InputSpec(i.name, i.type, tuple(i.shape)) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: Feed) -> list[NDArray[Any]]:
        outputs = self.session.run(self.output_names, cast_feed(feed, self.inputs))
        return [np.asarray(o) for o in outputs]

    def median_latency_ms(self, feed: Feed) -> float:
        """Median wall time of one inference (single-threaded) after a warm-up run;
        as many runs as fit in about a second, between 3 and 20."""
        cast = cast_feed(feed, self.inputs)
        self.session.run(self.output_names, cast)
        times: list[float] = []
        budget_end = time.perf_counter() + LATENCY_BUDGET_S
        while len(times) < LATENCY_MAX_RUNS and (
            len(times) < LATENCY_MIN_RUNS or time.perf_counter() < budget_end
        ):
            start = time.perf_counter()
            self.session.run(self.output_names, cast)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def compare(
    reference: Sequence[Sequence[NDArray[Any]]],
    reference_names: Sequence[str],
    candidate: Sequence[Sequence[NDArray[Any]]],
    candidate_names: Sequence[str],
) -> tuple[float, float]:
    """(max absolute error, mean cosine similarity) over every sample and output, outputs
    matched by name. Non-finite differences count as infinite error."""
    index = {n: i for i, n in enumerate(candidate_names)}
    missing = [n for n in reference_names if n not in index]
    if missing:
        raise ValueError(f"the output lost model outputs {', '.join(missing)}")
    worst = 0.0
    cosines: list[float] = []
    for ref_sample, cand_sample in zip(reference, candidate, strict=True):
        for i, name in enumerate(reference_names):
            a = np.asarray(ref_sample[i], dtype=np.float64).ravel()
            b = np.asarray(cand_sample[index[name]], dtype=np.float64).ravel()
            if a.shape != b.shape:
                raise ValueError(
                    f"output {name!r} has {b.size} values where the source has {a.size}"
                )
            if a.size == 0:
                continue
            diff = np.abs(a - b)
            err = float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
            worst = max(worst, err)
            cosines.append(_cosine(a, b))
    return worst, (float(np.mean(cosines)) if cosines else 1.0)


def _cosine(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))
