"""The conversions themselves. onnx and onnxruntime do the work; each function reads one
ONNX file and writes its output files, returning them with their resource kinds."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from conversion.samples import Feed


@dataclass(frozen=True)
class OutputFile:
    path: Path
    kind: str  # `weights` (the model) or `operators-config` (ORT's required operators)
    required: bool = True


def session_options(threads: int) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's Python tooling prints and logs chatter at INFO/WARNING; keep it out of
    the worker's logs (errors still raise)."""
    loggers = [logging.getLogger(), logging.getLogger("ort_format_model.utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def optimize_onnx(src: Path, dst: Path, threads: int) -> list[OutputFile]:
    """onnxruntime's offline graph optimization, saved as ONNX.

    Extended level: constant folding, redundant-node elimination and operator fusions.
    Layout transformations (level "all") are specific to the converting machine's CPU, so
    they are left for the device's runtime to apply.
    """
    so = session_options(threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return [OutputFile(dst, "weights")]


def to_fp16(src: Path, dst: Path, keep_io_types_fp16: bool) -> list[OutputFile]:
    """float16 weights and compute; float32 inputs/outputs kept unless asked otherwise.
    onnxruntime's converter keeps ops without float16 kernels in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=not keep_io_types_fp16)
    onnx.save(model, str(dst))
    return [OutputFile(dst, "weights")]


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def to_int8(
    src: Path, dst: Path, calibration: Sequence[Feed] | None, work_dir: Path
) -> tuple[list[OutputFile], str]:
    """int8 weights: static QDQ quantization calibrated on the client's inputs when given,
    else dynamic quantization. Returns the files and the method used."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work_dir / "int8-preprocessed.onnx"
    with _quiet():
        # onnxruntime's recommended pre-processing: shape inference plus basic graph
        # optimizations (symbolic shape inference needs sympy, which we don't ship).
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if calibration:

            class Reader(_Feeds, CalibrationDataReader):  # type: ignore[misc]
                pass

            quantize_static(
                str(pre),
                str(dst),
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
            method = "static-qdq"
        else:
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
            method = "dynamic"
    pre.unlink(missing_ok=True)
    return [OutputFile(dst, "weights")], method


def to_ort(src: Path, out_dir: Path, stem: str) -> list[OutputFile]:
    """The ORT format for ONNX Runtime Mobile, via onnxruntime's converter, plus the
    required-operators config a reduced (minimal) runtime build is made from."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    staging = out_dir / "ort-input"
    staging.mkdir(parents=True, exist_ok=True)
    model = staging / f"{stem}.onnx"
    shutil.copyfile(src, model)
    result = out_dir / "ort-output"
    with _quiet():
        convert_onnx_models_to_ort(
            model,
            output_dir=result,
            optimization_styles=[OptimizationStyle.Fixed],
            target_platform="arm",
        )
    ort_file = result / f"{stem}.ort"
    config = result / f"{stem}.required_operators.config"
    if not ort_file.is_file() or not config.is_file():
        raise RuntimeError("onnxruntime's ORT converter produced no output")
    # The converter's header names the server's temporary paths; keep the file name only.
    lines = config.read_text().splitlines()
    cleaned = [f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line for line in lines]
    config.write_text("\n".join(cleaned) + "\n")
    model.unlink()
    return [OutputFile(ort_file, "weights"), OutputFile(config, "operators-config", False)]
