"""Sample inputs for verification and calibration: read from client `.npz` archives or
generated from a model's declared input shapes and types."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from conversion.errors import ConversionError

Feed = dict[str, NDArray[Any]]

# Bounds on what one archive or one generated input may make us allocate.
MAX_NPZ_ARRAY_BYTES = 256 * 1024 * 1024
MAX_NPZ_TOTAL_BYTES = 512 * 1024 * 1024
MAX_GENERATED_INPUT_BYTES = 256 * 1024 * 1024
GENERATED_SAMPLES = 4
SEED = 20240601

# onnxruntime's type strings -> numpy dtypes.
ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """One model input as onnxruntime reports it."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


def npz_problem(data: bytes) -> str | None:
    """Why `data` is not an acceptable `.npz` archive of plain numeric arrays, or None.

    Reads only the archive directory and each array's header, so it is cheap and cannot be
    made to allocate what the headers declare (a zip bomb stays compressed).
    """
    try:
        arrays = _npz_headers(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        return f"is not a numpy .npz archive ({exc})"
    if not arrays:
        return "is an empty .npz archive"
    return None


def _npz_headers(fileobj: Any) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """name -> (shape, dtype) of every array; raises ValueError for anything unacceptable."""
    out: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    total = 0
    with zipfile.ZipFile(fileobj) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not a .npy array")
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            if dtype.hasobject or dtype.kind not in "biuf":
                raise ValueError(
                    f"array {info.filename[:-4]!r} has dtype {dtype}; only numeric arrays "
                    "are accepted"
                )
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if nbytes > MAX_NPZ_ARRAY_BYTES:
                raise ValueError(f"array {info.filename[:-4]!r} is larger than 256 MiB")
            total += nbytes
            if total > MAX_NPZ_TOTAL_BYTES:
                raise ValueError("arrays add up to more than 512 MiB")
            out[info.filename[:-4]] = (tuple(shape), dtype)
    return out


def load_npz(path: Path) -> Feed:
    """The arrays of one archive (headers checked first, never unpickled)."""
    try:
        with path.open("rb") as f:
            _npz_headers(f)
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ConversionError(f"calibration input {path.name} is not usable: {exc}") from None


def feeds_from_calibration(paths: Sequence[Path], inputs: Sequence[InputSpec]) -> list[Feed]:
    """One feed per archive, each checked against the model's inputs and cast to their
    types."""
    feeds = []
    for i, path in enumerate(paths):
        arrays = load_npz(path)
        feed: Feed = {}
        for spec in inputs:
            if spec.name not in arrays:
                raise ConversionError(
                    f"calibration input #{i} has no array for model input {spec.name!r} "
                    f"(it has {', '.join(sorted(arrays)) or 'none'})"
                )
            feed[spec.name] = _conform(arrays[spec.name], spec, f"calibration input #{i}")
        extra = sorted(set(arrays) - {s.name for s in inputs})
        if extra:
            raise ConversionError(
                f"calibration input #{i} has arrays the model has no input for: {', '.join(extra)}"
            )
        feeds.append(feed)
    return feeds


def _conform(value: NDArray[Any], spec: InputSpec, where: str) -> NDArray[Any]:
    dtype = ORT_DTYPES.get(spec.type)
    if dtype is None:
        raise ConversionError(f"model input {spec.name!r} has type {spec.type}, not supported")
    if len(value.shape) != len(spec.shape):
        raise ConversionError(
            f"{where}: {spec.name!r} has shape {list(value.shape)}, the model expects "
            f"rank {len(spec.shape)} ({_shape_text(spec.shape)})"
        )
    for got, want in zip(value.shape, spec.shape, strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise ConversionError(
                f"{where}: {spec.name!r} has shape {list(value.shape)}, the model expects "
                f"{_shape_text(spec.shape)}"
            )
    want_kind = np.dtype(dtype).kind
    if value.dtype.kind != want_kind and not (want_kind in "iu" and value.dtype.kind in "iu"):
        raise ConversionError(
            f"{where}: {spec.name!r} has dtype {value.dtype}, the model expects {spec.type}"
        )
    return np.ascontiguousarray(value.astype(dtype, copy=False))


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def generated_feeds(inputs: Sequence[InputSpec], count: int = GENERATED_SAMPLES) -> list[Feed]:
    """Deterministic random feeds from declared shapes (symbolic dimensions become 1):
    floats ~ N(0, 1), integers in [0, 4), booleans at random."""
    rng = np.random.default_rng(SEED)
    feeds = []
    for _ in range(count):
        feed: Feed = {}
        for spec in inputs:
            dtype = ORT_DTYPES.get(spec.type)
            if dtype is None:
                raise ConversionError(
                    f"model input {spec.name!r} has type {spec.type}, for which no sample can "
                    "be generated; supply calibration inputs"
                )
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
            nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
            if nbytes > MAX_GENERATED_INPUT_BYTES:
                raise ConversionError(
                    f"model input {spec.name!r} of shape {_shape_text(spec.shape)} is too "
                    "large to generate samples for; supply calibration inputs"
                )
            kind = np.dtype(dtype).kind
            if kind == "f":
                feed[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif kind == "b":
                feed[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[spec.name] = rng.integers(0, 4, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def cast_feed(feed: Feed, inputs: Sequence[InputSpec]) -> Feed:
    """`feed` with float arrays cast to the float type each input declares (an fp16 model
    that keeps float16 inputs is fed the same values as float16)."""
    out = dict(feed)
    for spec in inputs:
        dtype = ORT_DTYPES.get(spec.type)
        value = out.get(spec.name)
        if dtype is None or value is None:
            continue
        if value.dtype != dtype and value.dtype.kind == "f" and np.dtype(dtype).kind == "f":
            out[spec.name] = value.astype(dtype)
    return out
