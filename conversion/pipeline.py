"""The conversion pipeline: load and check the source, compute reference outputs, then per
target convert and verify. Progress goes to a callback as (stage, fraction, message);
fraction is of this pipeline's whole work, 0 to 1.

    result = run(Path("model.onnx"), Path("work"), Spec(("onnx", "ort")), print, Limits())

The callback may raise to abort (it is called from the calling thread, or from a helper
thread while a long library call runs, never from both at once)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from conversion import targets as conv
from conversion.checks import SourceInfo, inspect_source
from conversion.errors import ConversionError
from conversion.samples import Feed, feeds_from_calibration, generated_feeds
from conversion.spec import TARGETS, Spec, source_kind
from conversion.verify import Metrics, Runner, compare

Progress = Callable[[str, float, str], None]
# Called with (target, files) as soon as a target's files are written (before they are
# verified), so a caller can start moving them while verification runs.
OutputReady = Callable[[str, list[conv.OutputFile]], None]

# Relative cost of converting to each target; verification weighs 1.
_CONVERT_WEIGHT = {"onnx": 1.0, "onnx-fp16": 1.0, "onnx-int8": 2.0, "ort": 1.5}
_PREPARE_END = 0.16
_MAX_INLINE_BYTES = 2 * 1024**3 - 64 * 1024**2


@dataclass(frozen=True)
class Limits:
    threads: int = 1
    # Protobuf cannot serialise a model above 2 GiB.
    max_file_bytes: int = 2 * 1024**3
    # Sum of every tensor's declared size; keep well under the process' memory limit.
    max_tensor_bytes: int = 1024**3
    # Seconds between "still working" events during one long library call.
    tick_seconds: float = 0.75


@dataclass
class TargetResult:
    target: str
    ok: bool
    error: str = ""
    files: list[conv.OutputFile] = field(default_factory=list)
    metrics: Metrics | None = None
    method: str = ""


@dataclass
class Result:
    source: SourceInfo
    targets: list[TargetResult]


def short_error(exc: BaseException, limit: int = 600) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def ticking(
    progress: Progress, stage: str, start: float, end: float, message: str, every: float
) -> Iterator[None]:
    """While the block runs, report `stage` every `every` seconds with a fraction creeping
    from `start` towards `end`, so watchers see a long library call is alive."""
    stop = threading.Event()
    began = time.monotonic()

    def tick() -> None:
        k = 0
        while not stop.wait(every):
            k += 1
            fraction = end - (end - start) * 0.8**k
            try:
                progress(stage, fraction, f"{message} ({time.monotonic() - began:.0f} s)")
            except Exception:
                return

    thread = threading.Thread(target=tick, name=f"tick-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run(
    source: Path,
    work_dir: Path,
    spec: Spec,
    progress: Progress,
    limits: Limits | None = None,
    *,
    stem: str | None = None,
    on_output: OutputReady | None = None,
) -> Result:
    """Convert `source` to every target of `spec`, writing outputs under `work_dir`.

    Raises ConversionError when the source itself is unusable; a target that fails to
    convert or verify is reported in its TargetResult instead.
    """
    limits = limits or Limits()
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or _stem(source.name)
    tick = limits.tick_seconds

    progress("load", 0.0, f"inspecting {source.name}")
    if source_kind(source.name) == "torchscript":
        from conversion.torchscript import export_to_onnx

        with ticking(progress, "load", 0.0, 0.03, "exporting TorchScript to ONNX", tick):
            source = export_to_onnx(source, source.with_suffix(".onnx"), spec.calibration)
    info = inspect_source(
        source, max_file_bytes=limits.max_file_bytes, max_tensor_bytes=limits.max_tensor_bytes
    )
    progress(
        "check",
        0.04,
        f"ONNX IR {info.ir_version}, opsets {_opsets_text(info.opsets)}, {info.node_count} "
        "nodes; running the ONNX checker",
    )
    inferred = source.with_name(f"{stem}.inferred.onnx")
    with ticking(progress, "check", 0.04, 0.10, "checking and inferring shapes", tick):
        try:
            onnx.checker.check_model(str(source), full_check=True)
        except MemoryError:
            raise
        except Exception as exc:  # ValidationError, InferenceError, or a protobuf decode error
            raise ConversionError(f"the model fails the ONNX checker: {short_error(exc)}") from None
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        if info.external_data_files:
            # Outputs are single files: fold the external data into the working copy.
            if info.declared_tensor_bytes >= _MAX_INLINE_BYTES:
                raise ConversionError(
                    "models whose weights need more than 2 GiB cannot be converted "
                    "(their outputs would need external data too)"
                )
            onnx.save_model(onnx.load_model(str(inferred)), str(inferred))

    progress("reference", 0.10, "computing reference outputs with onnxruntime")
    with ticking(progress, "reference", 0.10, _PREPARE_END, "computing reference outputs", tick):
        try:
            reference = Runner(inferred, limits.threads, optimize=False)
        except Exception as exc:
            raise ConversionError(
                f"onnxruntime cannot load the model: {short_error(exc)}"
            ) from None
        if spec.calibration:
            feeds = feeds_from_calibration(spec.calibration, reference.inputs)
            sample_kind = "calibration"
        else:
            feeds = generated_feeds(reference.inputs)
            sample_kind = "generated"
        try:
            expected = [reference.run(f) for f in feeds]
            source_latency = reference.median_latency_ms(feeds[0])
            expected_names = reference.output_names
        except Exception as exc:
            raise ConversionError(f"onnxruntime cannot run the model: {short_error(exc)}") from None
    del reference

    weights = [_CONVERT_WEIGHT[t] + 1.0 for t in spec.targets]
    unit = (1.0 - _PREPARE_END) / sum(weights)
    at = _PREPARE_END
    results: list[TargetResult] = []
    for target in spec.targets:
        convert_end = at + _CONVERT_WEIGHT[target] * unit
        verify_end = convert_end + unit
        ctx = _TargetContext(
            target, inferred, work_dir, stem, spec, limits, feeds, sample_kind, progress, on_output
        )
        results.append(
            ctx.produce(
                at,
                convert_end,
                verify_end,
                expected,
                expected_names,
                source_latency,
                source.stat().st_size,
            )
        )
        at = verify_end
    return Result(info, results)


@dataclass
class _TargetContext:
    target: str
    base: Path
    work_dir: Path
    stem: str
    spec: Spec
    limits: Limits
    feeds: list[Feed]
    sample_kind: str
    progress: Progress
    on_output: OutputReady | None

    def produce(
        self,
        start: float,
        convert_end: float,
        verify_end: float,
        expected: list[list[Any]],
        expected_names: list[str],
        source_latency: float,
        source_size: int,
    ) -> TargetResult:
        t = self.target
        out_dir = self.work_dir / t
        out_dir.mkdir(parents=True, exist_ok=True)
        tick = self.limits.tick_seconds
        self.progress(f"convert:{t}", start, f"converting to {t}")
        method = ""
        try:
            with ticking(
                self.progress, f"convert:{t}", start, convert_end, f"converting to {t}", tick
            ):
                files, method = self._convert(out_dir)
        except MemoryError:
            raise
        except ConversionError as exc:
            return TargetResult(t, False, exc.message)
        except Exception as exc:
            return TargetResult(t, False, f"conversion to {t} failed: {short_error(exc)}")
        if self.on_output is not None:
            self.on_output(t, files)
        primary = files[0].path
        size = primary.stat().st_size
        self.progress(
            f"verify:{t}",
            convert_end,
            f"verifying {t} ({size} bytes) on {len(self.feeds)} {self.sample_kind} samples",
        )
        tolerance = self.spec.tolerance_for(t)
        try:
            with ticking(
                self.progress, f"verify:{t}", convert_end, verify_end, f"verifying {t}", tick
            ):
                runner = Runner(primary, self.limits.threads)
                got = [runner.run(f) for f in self.feeds]
                max_err, cosine = compare(expected, expected_names, got, runner.output_names)
                latency = runner.median_latency_ms(self.feeds[0])
        except MemoryError:
            raise
        except Exception as exc:
            return TargetResult(
                t, False, f"verification of {t} failed: {short_error(exc)}", method=method
            )
        metrics = Metrics(
            size_bytes=size,
            max_abs_error=max_err,
            mean_cosine_similarity=cosine,
            median_latency_ms=latency,
            source_size_bytes=source_size,
            source_median_latency_ms=source_latency,
            samples=len(self.feeds),
            sample_inputs=self.sample_kind,
            tolerance=tolerance,
        )
        if not max_err <= tolerance:
            return TargetResult(
                t,
                False,
                f"{t}: max abs error {max_err:.3g} exceeds the tolerance {tolerance:g} "
                f"(mean cosine similarity {cosine:.6f}); the output was not stored",
                metrics=metrics,
                method=method,
            )
        self.progress(
            f"verify:{t}",
            verify_end,
            f"{t} verified: max abs error {max_err:.3g} (tolerance {tolerance:g}), cosine "
            f"{cosine:.6f}, {latency:.2f} ms",
        )
        return TargetResult(t, True, "", files, metrics, method)

    def _convert(self, out_dir: Path) -> tuple[list[conv.OutputFile], str]:
        t, base, stem = self.target, self.base, self.stem
        suffix = TARGETS[t].suffix
        if t == "onnx":
            return conv.optimize_onnx(base, out_dir / f"{stem}{suffix}", self.limits.threads), ""
        if t == "onnx-fp16":
            keep = self.spec.fp16_keep_io_types_fp16
            return conv.to_fp16(base, out_dir / f"{stem}{suffix}", keep), (
                "float16 io" if keep else "float32 io"
            )
        if t == "onnx-int8":
            calibration = self.feeds if self.sample_kind == "calibration" else None
            return conv.to_int8(base, out_dir / f"{stem}{suffix}", calibration, out_dir)
        if t == "ort":
            return conv.to_ort(base, out_dir, stem), "fixed optimizations"
        raise ConversionError(f"unknown target {t!r}")


def _opsets_text(opsets: dict[str, int]) -> str:
    return ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(opsets.items()))


def _stem(file_name: str) -> str:
    name = Path(file_name).name
    for suffix in (".onnx", ".pt", ".pth"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "model"
    return Path(name).stem or "model"
