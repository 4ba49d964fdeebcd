"""What compatibility checks and optimization plans know of a model: its latest ACTIVE
catalog version, found through the variant that resolves for the model's name
(domain/resolver.py), and its packages with their sizes (sum of their resources), container
formats, quantizations, runtimes and the measurements a conversion recorded in `metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from domain import models, names, resolver
from domain.device_profiles import container_format
from domain.errors import FailedPrecondition, PreconditionViolation
from storage.repos import latest_versions

# Expected size relative to the fp32 weights.
SIZE_RATIO = {"none": 1.0, "fp16": 0.5, "mixed": 0.4, "int8": 0.27, "int4": 0.15}
# Most accurate first (CheckCompatibility delivers the most accurate package that runs).
PRECISION_RANK = {"none": 0, "fp16": 1, "mixed": 2, "int8": 3, "int4": 4}


def metric(metrics: dict[str, Any], key: str) -> float | None:
    """A recorded measurement, if it is a finite number >= 0."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True)
class Package:
    name: str
    format: str
    container: str
    quantization: str
    runtime: str
    source: str
    size_bytes: int
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        """How the package is called in messages: `onnx-int8`, `tflite-int8`, `onnx`."""
        q = self.quantization
        if q == "none" or self.format.endswith(f"-{q}"):
            return self.format
        return f"{self.format}-{q}"


def _effective_quantization(fmt: str, quantization: str) -> str:
    q = quantization or "none"
    if q == "none" and fmt.startswith("onnx-"):
        suffix = fmt.split("-", 1)[1]
        if suffix in SIZE_RATIO:
            return suffix
    return q


@dataclass(frozen=True)
class Snapshot:
    model_id: str
    framework: str
    catalog_version: str
    packages: tuple[Package, ...]

    @property
    def source(self) -> Package:
        """The reference weights: an fp32 package (ONNX and uploads first), else the
        largest package."""
        fp32 = [p for p in self.packages if p.quantization == "none"]
        if fp32:
            return min(
                fp32,
                key=lambda p: (p.container != "onnx", p.source != "upload", -p.size_bytes),
            )
        return max(self.packages, key=lambda p: p.size_bytes)

    @property
    def fp32_size(self) -> float:
        src = self.source
        return src.size_bytes / SIZE_RATIO.get(src.quantization, 1.0)

    @property
    def convertible(self) -> Package | None:
        """The fp32 ONNX package ConvertArtifact can start from, if any."""
        src = self.source
        return src if src.container == "onnx" and src.quantization == "none" else None


def _no_catalog(model_id: str, what: str) -> FailedPrecondition:
    subject = names.model_name(model_id)
    todo = (
        "upload the model's weights first: VersionService.UploadArtifacts with a file in a "
        "device format (.onnx, .ort, .tflite, .mlmodel/.mlpackage, .gguf, .pt), or "
        "UploadAndConvert with an .onnx file to also produce onnx-fp16, onnx-int8 and ort "
        "forms; then ask again"
    )
    return FailedPrecondition(
        f"model {subject!r} {what}: {todo}",
        [PreconditionViolation("CATALOG_VERSION", subject, f"{what}; {todo}")],
        reason="NO_CATALOG_VERSION",
        metadata={"model": subject},
    )


def load_snapshot(session: Session, org_id: str, model_id: str) -> Snapshot:
    model = models.get_model(session, org_id, model_id)
    variant = resolver.resolve_variant(session, org_id, model_id)
    if variant is None:
        raise _no_catalog(model_id, "has no catalog version yet")
    cv = latest_versions.latest_active(session, variant.id)
    if cv is None:
        if latest_versions.version_count(session, variant.id):
            raise _no_catalog(model_id, "has no active catalog version (all are deprecated)")
        raise _no_catalog(model_id, "has no catalog version yet")
    rows = latest_versions.packages_with_resources(session, cv.id)
    if not rows:
        raise _no_catalog(model_id, f"has no packages in its latest catalog version {cv.version!r}")
    packages = []
    for p in rows:
        size = sum(r.size_bytes for r in p.resources)
        measured = metric(p.metrics or {}, "size_bytes")
        if size == 0 and measured is not None:
            size = int(measured)
        packages.append(
            Package(
                name=names.package_name(variant.id, cv.id, p.id),
                format=p.format,
                container=container_format(p.format),
                quantization=_effective_quantization(p.format, p.quantization),
                runtime=p.runtime or "",
                source=p.source,
                size_bytes=size,
                metrics=dict(p.metrics or {}),
            )
        )
    return Snapshot(
        model_id=model_id,
        framework=model.framework,
        catalog_version=names.catalog_version_name(variant.id, cv.id),
        packages=tuple(packages),
    )
