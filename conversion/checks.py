"""First look at a source model, before anything loads it for real (a structural scan of
the file, see `wire`): is it ONNX at all,
can onnxruntime run its opsets, do its external-data references stay inside the model's
own directory, and do its tensors declare sizes that fit the memory we have."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from conversion import wire
from conversion.errors import ConversionError
from conversion.wire import WireError

# Operator domains onnxruntime's default CPU build implements.
KNOWN_DOMAINS = {
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.preview.training",
    "com.microsoft",
    "com.microsoft.nchwc",
    "com.ms.internal.nhwc",
}
_FOUR_BIT = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, n)
}


@dataclass(frozen=True)
class SourceInfo:
    ir_version: int
    opsets: dict[str, int]
    node_count: int
    declared_tensor_bytes: int
    external_data_files: tuple[str, ...]
    producer: str


def human_bytes(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def inspect_source(path: Path, *, max_file_bytes: int, max_tensor_bytes: int) -> SourceInfo:
    """Check `path` without loading external data; raise ConversionError saying what is
    wrong. `max_tensor_bytes` bounds the sum of every tensor's declared size."""
    size = path.stat().st_size
    if size == 0:
        raise ConversionError("the source file is empty")
    if size > max_file_bytes:
        raise ConversionError(
            f"the source file is {human_bytes(size)}, above the limit of "
            f"{human_bytes(max_file_bytes)}"
        )
    try:
        model = wire.scan(path)
    except (WireError, OSError, ValueError) as exc:
        raise ConversionError(
            f"not a valid ONNX model: the file does not parse as an ONNX protobuf ({exc}); "
            "it may be truncated, corrupt or another format"
        ) from None
    if model.ir_version <= 0 or not model.has_graph or not model.opsets:
        raise ConversionError(
            "not a valid ONNX model: no IR version, graph or opset import "
            "(the file is probably another format)"
        )
    if model.node_count == 0:
        raise ConversionError("not a usable ONNX model: its graph has no nodes")
    if model.ir_version > onnx.IR_VERSION:
        raise ConversionError(
            f"the model's IR version {model.ir_version} is newer than this server supports "
            f"(at most {onnx.IR_VERSION})"
        )
    opsets = _check_opsets(model.opsets)
    base = path.parent.resolve()
    total = 0
    files: set[str] = set()
    for where, tensor, dense_dims in model.tensors:
        declared = _declared_bytes(where, tensor.data_type, dense_dims)
        total += declared
        if total > max_tensor_bytes:
            raise ConversionError(
                f"{where} declares {_dims_text(dense_dims)} elements "
                f"({human_bytes(declared)}); the model's tensors would need more than the "
                f"conversion memory budget of {human_bytes(max_tensor_bytes)}"
            )
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.add(_check_external(where, tensor.external, base, declared))
    return SourceInfo(
        ir_version=model.ir_version,
        opsets=opsets,
        node_count=model.node_count,
        declared_tensor_bytes=total,
        external_data_files=tuple(sorted(files)),
        producer=f"{model.producer} {model.producer_version}".strip(),
    )


def _check_opsets(imports: list[tuple[str, int]]) -> dict[str, int]:
    opsets = dict(imports)
    newest = onnx.defs.onnx_opset_version()
    for domain, version in opsets.items():
        if domain not in KNOWN_DOMAINS:
            raise ConversionError(
                f"the model uses the custom operator domain {domain!r}, which onnxruntime "
                "cannot run without a custom-op library"
            )
        if domain in ("", "ai.onnx") and not 1 <= version <= newest:
            raise ConversionError(
                f"the model imports ONNX opset {version}; supported opsets are 1 to {newest}"
            )
    if "" not in opsets and "ai.onnx" not in opsets:
        raise ConversionError("the model imports no ONNX (ai.onnx) opset")
    return opsets


def _dims_text(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims) if dims else "1"


def _declared_bytes(where: str, data_type: int, dims: list[int]) -> int:
    if any(d < 0 for d in dims):
        raise ConversionError(f"{where} has a negative dimension ({_dims_text(dims)})")
    count = 1
    for d in dims:
        count *= d
    if data_type == onnx.TensorProto.STRING:
        return count  # the strings themselves are in the file; count only the slots
    if data_type in _FOUR_BIT:
        return (count + 1) // 2
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise ConversionError(f"{where} has an unknown data type {data_type}") from None
    return count * itemsize


def _check_external(where: str, info: dict[str, str], base: Path, declared: int) -> str:
    location = info.get("location", "")
    if not location:
        raise ConversionError(f"{where} is stored externally but names no file")
    parts = Path(location).parts
    if (
        os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or ":" in location
        or ".." in parts
        or "\\" in location
    ):
        raise ConversionError(
            f"{where} refers to external data at {location!r}, outside the model's own "
            "directory; external data must be a file next to the model"
        )
    target = (base / location).resolve()
    if base not in target.parents:
        raise ConversionError(
            f"{where} refers to external data at {location!r}, which resolves outside the "
            "model's own directory"
        )
    if not target.is_file():
        raise ConversionError(
            f"{where} refers to external data file {location!r}, which is not part of the "
            "package; upload it in the same package as the model"
        )
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ConversionError(f"{where} has a non-numeric external data offset/length") from None
    available = target.stat().st_size - offset
    if offset < 0 or available < 0:
        raise ConversionError(f"{where}: external data offset {offset} is past the file's end")
    if length is not None and (length < 0 or length > available):
        raise ConversionError(
            f"{where}: external data length {length} exceeds the {max(available, 0)} bytes "
            f"available in {location!r}"
        )
    if declared > (length if length is not None else available):
        raise ConversionError(
            f"{where} declares {human_bytes(declared)} but its external data holds only "
            f"{human_bytes(length if length is not None else available)}"
        )
    return location
