"""TorchScript (.pt) sources, exported to ONNX first. Needs the optional `torch` extra; it
runs only inside the sandboxed worker process, never in the server."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from conversion.errors import ConversionError, TorchUnavailable
from conversion.samples import load_npz
from conversion.spec import torch_available

EXPORT_OPSET = 17


def export_to_onnx(source: Path, dst: Path, calibration: tuple[Path, ...]) -> Path:
    """Export a TorchScript archive to ONNX. Example inputs come from the first calibration
    archive, its arrays passed positionally in the archive's order."""
    if not torch_available():
        raise TorchUnavailable()
    if not calibration:
        raise ConversionError(
            "a TorchScript source needs example inputs to be exported to ONNX: pass one "
            "calibration input (.npz, arrays in the forward() argument order)"
        )
    torch_mod: Any = importlib.import_module("torch")
    arrays = list(load_npz(calibration[0]).values())
    try:
        module = torch_mod.jit.load(str(source), map_location="cpu")
    except Exception as exc:
        raise ConversionError(f"not a TorchScript archive: {exc}") from None
    module.eval()
    example = tuple(torch_mod.from_numpy(a) for a in arrays)
    torch_mod.onnx.export(module, example, str(dst), opset_version=EXPORT_OPSET)
    return dst
