"""`modelregistry catalog import FILE`: load blessed variants, catalog versions, packages
and resources from a JSON or YAML document, idempotently.

The whole file is validated first; a file with any error is rejected with the path of
every error (`variants[0].versions[1].packages[0].format: ...`) and nothing is written,
neither rows nor bytes. Then, in one transaction, rows are matched and upserted:
variants by model_id (blessed scope), versions by version_id, packages by
(format, quantization, runtime), resources by file_name. Importing the same file twice
changes nothing the second time. Rows the file does not mention are left alone. A
version deprecated in the database stays deprecated (the lifecycle only moves forward).

A resource may name a local `file` (relative to the document): its bytes are stored under
`storage_key` in the object store and its size and sha256 are taken from the bytes (a
declared size or sha256 that disagrees is an error). Bytes are stored before the database
transaction; if that transaction then fails they are unreferenced and the garbage
collector removes them.

Document shape (every key but the ids optional)::

    variants:
      - model_id: mobilenet-v3-small        # same rules as Model.model_id
        family: mobilenet
        task_taxonomy: [image-classification]
        parameter_count: 2540000
        license: apache-2.0
        description: ...
        versions:
          - version_id: 1.0.0
            state: active                    # or deprecated
            packages:
              - format: onnx                 # see FORMATS
                quantization: none           # see QUANTIZATIONS
                runtime: onnxruntime
                resources:
                  - kind: weights            # see KINDS
                    file_name: model.onnx
                    storage_key: catalog/mobilenet-v3-small/1.0.0/model.onnx
                    file: files/model.onnx   # optional: upload these bytes
                    size_bytes: 1234
                    sha256: <64 lowercase hex>
                    required: true
                    load_order: 0
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from domain import names
from domain.errors import InvalidArgument, Violations
from domain.validation import MAX_DESCRIPTION, normalize_tags
from storage.objectstore import ObjectStore
from storage.objectstore.base import check_key
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    new_id,
    utcnow,
)
from storage.repos import catalog as repo

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "ort", "tflite", "coreml", "pt", "gguf",
           "safetensors", "bin")  # fmt: skip
QUANTIZATIONS = ("none", "fp16", "int8", "int4", "mixed")
KINDS = ("weights", "tokenizer", "config", "sidecar", "operators-config", "vocab", "data")
STATES = ("active", "deprecated")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RUNTIME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,62}[a-z0-9])?$")
MAX_SHORT = 64
MAX_FILE_NAME = 255
MAX_KEY = 1024

_TOP_KEYS = {"variants"}
_VARIANT_KEYS = {"model_id", "family", "task_taxonomy", "parameter_count", "license",
                 "description", "versions"}  # fmt: skip
_VERSION_KEYS = {"version_id", "state", "packages"}
_PACKAGE_KEYS = {"format", "quantization", "runtime", "resources"}
_RESOURCE_KEYS = {"kind", "file_name", "storage_key", "file", "size_bytes", "sha256",
                  "required", "load_order"}  # fmt: skip


@dataclass
class ResourceSpec:
    kind: str
    file_name: str
    storage_key: str | None
    file: Path | None
    size_bytes: int
    sha256: str | None
    required: bool
    load_order: int


@dataclass
class PackageSpec:
    format: str
    quantization: str
    runtime: str
    resources: list[ResourceSpec]


@dataclass
class VersionSpec:
    version_id: str
    state: str
    packages: list[PackageSpec]


@dataclass
class VariantSpec:
    model_id: str
    family: str
    task_taxonomy: list[str]
    parameter_count: int
    license: str
    description: str
    versions: list[VersionSpec]


@dataclass
class ImportReport:
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    uploaded: int = 0
    notes: list[str] = field(default_factory=list)

    def count(self, table: dict[str, int], kind: str) -> None:
        table[kind] = table.get(kind, 0) + 1

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary(self) -> str:
        def fmt(table: dict[str, int]) -> str:
            return ", ".join(f"{n} {k}" for k, n in sorted(table.items())) or "nothing"

        return (
            f"created {fmt(self.created)}; updated {fmt(self.updated)}; "
            f"uploaded {self.uploaded} file(s)"
        )


# ---------------------------------------------------------------------------------------
# parsing and validation


def parse_document(text: str, file_name: str) -> Any:
    """JSON for *.json, YAML (a superset) for anything else."""
    v = Violations()
    try:
        if file_name.endswith(".json"):
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        v.add("$", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    except Exception as exc:  # yaml.YAMLError carries its own line/column
        v.add("$", f"invalid YAML: {exc}")
    v.raise_if_any("the catalog file cannot be parsed")
    return None


class _Checker:
    def __init__(self, base_dir: Path) -> None:
        self.v = Violations()
        self.base_dir = base_dir

    def obj(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.v.add(path, "must be an object")
            return None
        for key in sorted(set(value) - allowed):
            self.v.add(f"{path}.{key}" if path != "$" else key, "unknown field")
        return value

    def list_of(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.v.add(path, "must be a list")
            return []
        return value

    def string(
        self,
        d: dict[str, Any],
        key: str,
        path: str,
        *,
        default: str = "",
        max_len: int = MAX_SHORT,
        problem: Callable[[str], str | None] | None = None,
        required: bool = False,
    ) -> str:
        value = d.get(key)
        if value is None:
            if required:
                self.v.add(f"{path}.{key}", "is required")
            return default
        if not isinstance(value, str):
            self.v.add(f"{path}.{key}", "must be a string")
            return default
        if len(value) > max_len:
            self.v.add(f"{path}.{key}", f"must be at most {max_len} characters")
        elif problem is not None:
            why = problem(value)
            if why:
                self.v.add(f"{path}.{key}", why)
        return value

    def integer(self, d: dict[str, Any], key: str, path: str, default: int) -> int:
        value = d.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.v.add(f"{path}.{key}", "must be an integer")
            return default
        if value < 0:
            self.v.add(f"{path}.{key}", "must not be negative")
        return value

    def boolean(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = d.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.v.add(f"{path}.{key}", "must be true or false")
            return default
        return value


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}"


def _file_name_problem(value: str) -> str | None:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        return "must be a plain file name (no directories)"
    return None


def _key_problem(value: str) -> str | None:
    try:
        check_key(value)
    except ValueError:
        return "must be a relative key of '/'-separated segments, none empty, '.' or '..'"
    return None


def _runtime_problem(value: str) -> str | None:
    if value and not RUNTIME_RE.match(value):
        return "must be lowercase letters, digits, '.', '_', '+' or '-'"
    return None


def validate(doc: Any, base_dir: Path) -> list[VariantSpec]:
    """The document as specs, or InvalidArgument listing every error by path."""
    c = _Checker(base_dir)
    top = c.obj(doc, "$", _TOP_KEYS)
    out: list[VariantSpec] = []
    if top is not None:
        if "variants" not in top:
            c.v.add("variants", "is required (a list of variants)")
        seen: set[str] = set()
        for i, raw in enumerate(c.list_of(top.get("variants"), "variants")):
            spec = _variant(c, raw, f"variants[{i}]")
            if spec is None:
                continue
            if spec.model_id in seen:
                c.v.add(f"variants[{i}].model_id", f"duplicate model_id {spec.model_id!r}")
            seen.add(spec.model_id)
            out.append(spec)
    c.v.raise_if_any("the catalog file has errors; nothing was imported")
    return out


def _variant(c: _Checker, raw: Any, path: str) -> VariantSpec | None:
    d = c.obj(raw, path, _VARIANT_KEYS)
    if d is None:
        return None
    model_id = c.string(d, "model_id", path, problem=names.model_id_problem, required=True)
    taxonomy_raw = d.get("task_taxonomy", [])
    taxonomy: list[str] = []
    if not isinstance(taxonomy_raw, list) or not all(isinstance(t, str) for t in taxonomy_raw):
        c.v.add(f"{path}.task_taxonomy", "must be a list of strings")
    else:
        taxonomy = normalize_tags(c.v, f"{path}.task_taxonomy", taxonomy_raw)
    versions: list[VersionSpec] = []
    seen: set[str] = set()
    for i, raw_version in enumerate(c.list_of(d.get("versions"), f"{path}.versions")):
        spec = _version(c, raw_version, f"{path}.versions[{i}]")
        if spec is None:
            continue
        if spec.version_id in seen:
            c.v.add(f"{path}.versions[{i}].version_id", f"duplicate version {spec.version_id!r}")
        seen.add(spec.version_id)
        versions.append(spec)
    return VariantSpec(
        model_id=model_id,
        family=c.string(d, "family", path),
        task_taxonomy=taxonomy,
        parameter_count=c.integer(d, "parameter_count", path, 0),
        license=c.string(d, "license", path),
        description=c.string(d, "description", path, max_len=MAX_DESCRIPTION),
        versions=versions,
    )


def _version(c: _Checker, raw: Any, path: str) -> VersionSpec | None:
    d = c.obj(raw, path, _VERSION_KEYS)
    if d is None:
        return None
    version_id = c.string(d, "version_id", path, problem=names.version_id_problem, required=True)
    state = c.string(d, "state", path, default="active", problem=_one_of(STATES))
    packages: list[PackageSpec] = []
    seen: set[tuple[str, str, str]] = set()
    for i, raw_package in enumerate(c.list_of(d.get("packages"), f"{path}.packages")):
        spec = _package(c, raw_package, f"{path}.packages[{i}]")
        if spec is None:
            continue
        key = (spec.format, spec.quantization, spec.runtime)
        if key in seen:
            c.v.add(
                f"{path}.packages[{i}]",
                "duplicate package: format, quantization and runtime identify a package",
            )
        seen.add(key)
        packages.append(spec)
    return VersionSpec(version_id, state, packages)


def _package(c: _Checker, raw: Any, path: str) -> PackageSpec | None:
    d = c.obj(raw, path, _PACKAGE_KEYS)
    if d is None:
        return None
    fmt = c.string(d, "format", path, problem=_one_of(FORMATS), required=True)
    quantization = c.string(d, "quantization", path, default="none", problem=_one_of(QUANTIZATIONS))
    runtime = c.string(d, "runtime", path, problem=_runtime_problem)
    resources: list[ResourceSpec] = []
    seen: set[str] = set()
    raw_resources = c.list_of(d.get("resources"), f"{path}.resources")
    if not raw_resources and isinstance(d.get("resources", []), list):
        c.v.add(f"{path}.resources", "a package needs at least one resource")
    for i, raw_resource in enumerate(raw_resources):
        spec = _resource(c, raw_resource, f"{path}.resources[{i}]", i)
        if spec is None:
            continue
        if spec.file_name in seen:
            c.v.add(f"{path}.resources[{i}].file_name", f"duplicate file name {spec.file_name!r}")
        seen.add(spec.file_name)
        resources.append(spec)
    return PackageSpec(fmt, quantization, runtime, resources)


def _resource(c: _Checker, raw: Any, path: str, index: int) -> ResourceSpec | None:
    d = c.obj(raw, path, _RESOURCE_KEYS)
    if d is None:
        return None
    kind = c.string(d, "kind", path, default="weights", problem=_one_of(KINDS))
    file_name = c.string(
        d, "file_name", path, max_len=MAX_FILE_NAME, problem=_file_name_problem, required=True
    )
    key = c.string(d, "storage_key", path, max_len=MAX_KEY, problem=_key_problem) or None
    sha = c.string(d, "sha256", path, problem=lambda s: None if SHA256_RE.match(s) else
                   "must be 64 lowercase hex digits") or None  # fmt: skip
    size = c.integer(d, "size_bytes", path, 0)
    local: Path | None = None
    file_value = c.string(d, "file", path, max_len=4096)
    if file_value:
        local = (c.base_dir / file_value).resolve()
        if key is None:
            c.v.add(f"{path}.storage_key", "is required when `file` is given")
        if not local.is_file():
            c.v.add(f"{path}.file", f"no such file: {local}")
        else:
            digest = hashlib.sha256()
            with local.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            actual_size, actual_sha = local.stat().st_size, digest.hexdigest()
            if "size_bytes" in d and size != actual_size:
                c.v.add(f"{path}.size_bytes", f"is {size} but the file has {actual_size} bytes")
            if sha is not None and sha != actual_sha:
                c.v.add(f"{path}.sha256", f"does not match the file's sha256 {actual_sha}")
            size, sha = actual_size, actual_sha
    return ResourceSpec(
        kind=kind,
        file_name=file_name,
        storage_key=key,
        file=local,
        size_bytes=size,
        sha256=sha,
        required=c.boolean(d, "required", path, True),
        load_order=c.integer(d, "load_order", path, index),
    )


# ---------------------------------------------------------------------------------------
# applying


def upload_files(specs: list[VariantSpec], store: ObjectStore, report: ImportReport) -> None:
    """Store the bytes of every resource with a local `file` whose object is missing or
    differs in size (before any database write)."""
    for variant in specs:
        for version in variant.versions:
            for package in version.packages:
                for r in package.resources:
                    if r.file is None or r.storage_key is None:
                        continue
                    info = store.stat(r.storage_key)
                    if info is not None and info.size == r.size_bytes:
                        continue
                    with r.file.open("rb") as fh:
                        store.put(r.storage_key, iter(lambda: fh.read(1 << 20), b""))
                    report.uploaded += 1


def apply(session: Session, specs: list[VariantSpec]) -> ImportReport:
    """Upsert the specs as blessed rows; bump the blessed catalog's revision once if
    anything changed. The rows the file names are read up front (a few queries, not a
    few per row) and everything is written in one flush at the end."""
    report = ImportReport()
    repo.lock_catalog(session)  # before writing under variants (domain.catalog._bump)
    rows = repo.blessed_rows_named(session, [spec.model_id for spec in specs])
    clock = _Clock()
    for spec in specs:
        _apply_variant(session, spec, rows, clock, report)
    if report.changed:
        session.flush()
        repo.bump_catalog_revision(session)
    return report


class _Clock:
    """Creation times for the rows one import adds: now, a microsecond apart in file
    order, so that rows listed by creation time (versions newest first, packages in
    order) keep the file's order although they are inserted in one flush."""

    def __init__(self) -> None:
        self._start = utcnow()
        self._ticks = 0

    def __call__(self) -> datetime:
        self._ticks += 1
        return self._start + timedelta(microseconds=self._ticks)


def _set(row: Any, values: dict[str, Any]) -> bool:
    changed = False
    for key, value in values.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed


def _apply_variant(
    session: Session,
    spec: VariantSpec,
    rows: repo.BlessedRows,
    clock: _Clock,
    report: ImportReport,
) -> None:
    values = {
        "family": spec.family,
        "task_taxonomy": spec.task_taxonomy,
        "parameter_count": spec.parameter_count or None,
        "license": spec.license,
        "description": spec.description,
    }
    variant = rows.variants.get(spec.model_id)
    if variant is None:
        now = clock()
        variant = CatalogVariant(
            id=new_id(), org_id=None, name=spec.model_id, created_at=now, updated_at=now, **values
        )
        session.add(variant)
        rows.variants[spec.model_id] = variant
        report.count(report.created, "variants")
    elif _set(variant, values):
        variant.updated_at = utcnow()
        report.count(report.updated, "variants")
    for version_spec in spec.versions:
        _apply_version(session, variant, version_spec, rows, clock, report)


def _apply_version(
    session: Session,
    variant: CatalogVariant,
    spec: VersionSpec,
    rows: repo.BlessedRows,
    clock: _Clock,
    report: ImportReport,
) -> None:
    cv = rows.versions.get((variant.id, spec.version_id))
    if cv is None:
        cv = CatalogVersion(
            id=new_id(),
            variant_id=variant.id,
            version=spec.version_id,
            lifecycle=spec.state,
            created_at=clock(),
        )
        if spec.state == "deprecated":
            cv.deprecated_at = utcnow()
        session.add(cv)
        rows.versions[(variant.id, spec.version_id)] = cv
        report.count(report.created, "versions")
    elif cv.lifecycle == "active" and spec.state == "deprecated":
        cv.lifecycle, cv.deprecated_at = "deprecated", utcnow()
        report.count(report.updated, "versions")
    elif cv.lifecycle == "deprecated" and spec.state == "active":
        report.notes.append(
            f"{variant.name} {spec.version_id} stays deprecated (lifecycle only moves forward)"
        )
    existing = rows.packages.setdefault(cv.id, [])
    packages = {(p.format, p.quantization, p.runtime): p for p in existing}
    for package_spec in spec.packages:
        key = (package_spec.format, package_spec.quantization, package_spec.runtime)
        package = packages.get(key)
        if package is None:
            package = ArtifactPackage(
                id=new_id(),
                catalog_version_id=cv.id,
                format=package_spec.format,
                quantization=package_spec.quantization,
                runtime=package_spec.runtime,
                source="upload",
                created_at=clock(),
            )
            session.add(package)
            existing.append(package)
            packages[key] = package
            report.count(report.created, "packages")
        _apply_resources(session, package, package_spec, rows, clock, report)


def _apply_resources(
    session: Session,
    package: ArtifactPackage,
    spec: PackageSpec,
    rows: repo.BlessedRows,
    clock: _Clock,
    report: ImportReport,
) -> None:
    existing = {r.file_name: r for r in rows.resources.get(package.id, [])}
    for r in spec.resources:
        values = {
            "kind": r.kind,
            "storage_key": r.storage_key,
            "size_bytes": r.size_bytes,
            "sha256": r.sha256,
            "required": r.required,
            "load_order": r.load_order,
        }
        row = existing.get(r.file_name)
        if row is None:
            session.add(
                ArtifactResource(
                    id=new_id(),
                    package_id=package.id,
                    file_name=r.file_name,
                    created_at=clock(),
                    **values,
                )
            )
            report.count(report.created, "resources")
        elif _set(row, values):
            report.count(report.updated, "resources")


def import_file(
    path: Path, run_in_transaction: Callable[[Callable[[Session], ImportReport]], ImportReport],
    open_store: Callable[[], ObjectStore] | None,
) -> ImportReport:  # fmt: skip
    """Validate `path` whole, store its files' bytes, then apply it in one transaction."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument.field("$", f"cannot read {path}: {exc}") from None
    specs = validate(parse_document(text, path.name), path.parent)
    report = ImportReport()
    if any(r.file for s in specs for v in s.versions for p in v.packages for r in p.resources):
        if open_store is None:
            raise InvalidArgument.field("file", "resources with `file` need an object store")
        upload_files(specs, open_store(), report)
    result = run_in_transaction(lambda session: apply(session, specs))
    result.uploaded = report.uploaded
    return result
