"""Device profiles: the shipped data file plus each org's overrides.

The shipped profiles live in `domain/data/device_profiles.json` (versioned by its
`data_version`, every figure cited in its `sources`). An org adjusts them with
DeviceProfileOverride rows, set with `modelregistry profiles set --org ORG FILE`:

- an override named like a shipped profile replaces just the fields it gives (for example
  a measured `compute_factor`, or `ram_bytes` + budgets for a bigger RAM configuration);
- an override with a new name adds an org-only profile and must give every required field.

Compatibility checks and optimization plans only ever see the merged result.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.errors import Aborted, InvalidArgument, NotFound, Violations
from storage.orm import DeviceProfileOverride
from storage.repos import device_profiles as repo

PROFILE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
TOKEN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,30}[a-z0-9])?$")
# Container formats a device loads. onnx-fp16 / onnx-int8 packages are `onnx` files whose
# quantization is checked on its own (see container_format).
FORMATS = ("onnx", "ort", "tflite", "coreml", "pt", "safetensors", "gguf", "bin")
QUANTIZATIONS = ("none", "fp16", "int8", "int4", "mixed")
MAX_TEXT = 256
MAX_PROFILES_PER_ORG = 200
# Profiles one CheckCompatibility or GetOptimizationPlan request may name.
MAX_PROFILES_PER_REQUEST = 100
MAX_COMPUTE_FACTOR = 1000.0

REQUIRED = (
    "ram_bytes",
    "weights_budget_bytes",
    "storage_bytes",
    "storage_budget_bytes",
    "runtimes",
    "formats",
    "quantizations",
    "compute_factor",
)
OPTIONAL = (
    "display_name",
    "platform",
    "device_class",
    "released",
    "cpu",
    "accelerator",
    "sources",
)
ALLOWED = ("name", *REQUIRED, *OPTIONAL)

ORIGIN_SHIPPED = "shipped"
ORIGIN_OVERRIDDEN = "shipped, overridden by the org"
ORIGIN_ORG = "org"


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    display_name: str
    platform: str
    device_class: str
    ram_bytes: int
    weights_budget_bytes: int
    storage_bytes: int
    storage_budget_bytes: int
    cpu: str
    accelerator: str
    runtimes: tuple[str, ...]
    formats: tuple[str, ...]
    quantizations: tuple[str, ...]
    compute_factor: float
    sources: dict[str, str]
    origin: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "platform": self.platform,
            "device_class": self.device_class,
            "ram_bytes": self.ram_bytes,
            "weights_budget_bytes": self.weights_budget_bytes,
            "storage_bytes": self.storage_bytes,
            "storage_budget_bytes": self.storage_budget_bytes,
            "cpu": self.cpu,
            "accelerator": self.accelerator,
            "runtimes": list(self.runtimes),
            "formats": list(self.formats),
            "quantizations": list(self.quantizations),
            "compute_factor": self.compute_factor,
            "sources": dict(self.sources),
            "origin": self.origin,
        }


@dataclass(frozen=True)
class ShippedProfiles:
    data_version: str
    profiles: tuple[DeviceProfile, ...]


def container_format(fmt: str) -> str:
    """`onnx-fp16` / `onnx-int8` -> `onnx`; other formats are their own container."""
    return "onnx" if fmt.startswith("onnx-") else fmt


# ---------------------------------------------------------------------------------------
# validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(v: Violations, prefix: str, doc: dict[str, Any]) -> None:
    """Check the type and range of each field present in `doc` (none is required here)."""
    for key in doc:
        if key not in ALLOWED:
            v.add(f"{prefix}{key}", f"unknown field; allowed: {', '.join(ALLOWED)}")
    for key in ("ram_bytes", "weights_budget_bytes", "storage_bytes", "storage_budget_bytes"):
        if key in doc and (not _is_int(doc[key]) or doc[key] <= 0):
            v.add(f"{prefix}{key}", "must be a positive integer number of bytes")
    if "released" in doc and (not _is_int(doc["released"]) or not 1990 <= doc["released"] <= 2100):
        v.add(f"{prefix}released", "must be a year")
    for key in ("display_name", "platform", "device_class", "cpu", "accelerator"):
        if key in doc and (not isinstance(doc[key], str) or len(doc[key]) > MAX_TEXT):
            v.add(f"{prefix}{key}", f"must be a string of at most {MAX_TEXT} characters")
    if "compute_factor" in doc:
        cf = doc["compute_factor"]
        if (
            not isinstance(cf, int | float)
            or isinstance(cf, bool)
            or not math.isfinite(cf)
            or not 0 < cf <= MAX_COMPUTE_FACTOR
        ):
            v.add(
                f"{prefix}compute_factor",
                f"must be a number in (0, {MAX_COMPUTE_FACTOR:g}]: expected device latency "
                "divided by the latency measured on the registry server",
            )
    _check_list(v, prefix, doc, "runtimes", None)
    _check_list(v, prefix, doc, "formats", FORMATS)
    _check_list(v, prefix, doc, "quantizations", QUANTIZATIONS)
    if "sources" in doc:
        src = doc["sources"]
        if not isinstance(src, dict) or not all(
            isinstance(k, str) and isinstance(s, str) and len(s) <= 4 * MAX_TEXT
            for k, s in src.items()
        ):
            v.add(f"{prefix}sources", "must map field names to citation strings")


def _check_list(
    v: Violations, prefix: str, doc: dict[str, Any], key: str, allowed: tuple[str, ...] | None
) -> None:
    if key not in doc:
        return
    items = doc[key]
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        v.add(f"{prefix}{key}", "must be a non-empty list of strings")
        return
    for i, item in enumerate(items):
        if allowed is not None and item not in allowed:
            v.add(f"{prefix}{key}[{i}]", f"unknown value {item!r}; known: {', '.join(allowed)}")
        elif allowed is None and not TOKEN_RE.match(item):
            v.add(
                f"{prefix}{key}[{i}]", "must be 1-32 lowercase letters, digits, '.', '_', '+', '-'"
            )


def _check_complete(v: Violations, prefix: str, doc: dict[str, Any]) -> None:
    for key in REQUIRED:
        if key not in doc:
            v.add(f"{prefix}{key}", "is required for a profile that is not shipped")
    if v:
        return
    if doc["weights_budget_bytes"] > doc["ram_bytes"]:
        v.add(f"{prefix}weights_budget_bytes", "must not exceed ram_bytes")
    if doc["storage_budget_bytes"] > doc["storage_bytes"]:
        v.add(f"{prefix}storage_budget_bytes", "must not exceed storage_bytes")


def _build(doc: dict[str, Any], origin: str) -> DeviceProfile:
    return DeviceProfile(
        name=doc["name"],
        display_name=doc.get("display_name") or doc["name"],
        platform=doc.get("platform", ""),
        device_class=doc.get("device_class", ""),
        ram_bytes=int(doc["ram_bytes"]),
        weights_budget_bytes=int(doc["weights_budget_bytes"]),
        storage_bytes=int(doc["storage_bytes"]),
        storage_budget_bytes=int(doc["storage_budget_bytes"]),
        cpu=doc.get("cpu", ""),
        accelerator=doc.get("accelerator", ""),
        runtimes=tuple(doc["runtimes"]),
        formats=tuple(doc["formats"]),
        quantizations=tuple(doc["quantizations"]),
        compute_factor=float(doc["compute_factor"]),
        sources=dict(doc.get("sources") or {}),
        origin=origin,
    )


# ---------------------------------------------------------------------------------------
# shipped data


@lru_cache(maxsize=1)
def _shipped_docs() -> tuple[str, tuple[dict[str, Any], ...]]:
    text = resources.files("domain.data").joinpath("device_profiles.json").read_text("utf-8")
    data = json.loads(text)
    docs = tuple(data["profiles"])
    v = Violations()
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        prefix = f"profiles[{i}]."
        if not PROFILE_NAME_RE.match(str(doc.get("name", ""))) or doc["name"] in seen:
            v.add(f"{prefix}name", "missing, malformed or duplicated")
        seen.add(str(doc.get("name")))
        _check_fields(v, prefix, doc)
        _check_complete(v, prefix, doc)
    if v:
        # A broken shipped file is a packaging bug, not a client error.
        raise RuntimeError(f"device_profiles.json is invalid: {v.items}")
    return str(data["data_version"]), docs


def shipped() -> ShippedProfiles:
    version, docs = _shipped_docs()
    return ShippedProfiles(version, tuple(_build(d, ORIGIN_SHIPPED) for d in docs))


def data_version() -> str:
    return _shipped_docs()[0]


# ---------------------------------------------------------------------------------------
# per org


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **{k: v for k, v in override.items() if k != "sources"}}
    sources = dict(base.get("sources") or {})
    given = override.get("sources") or {}
    for key in override:
        if key not in ("name", "sources"):
            sources[key] = given.get(key, "org override")
    merged["sources"] = sources
    return merged


def profiles_for_org(session: Session, org_id: str | None) -> list[DeviceProfile]:
    """Shipped profiles in file order (with the org's overrides applied), then the org's
    own profiles by name."""
    _, docs = _shipped_docs()
    overrides = {o.name: o.profile for o in repo.list_for_org(session, org_id)} if org_id else {}
    out: list[DeviceProfile] = []
    for doc in docs:
        o = overrides.pop(doc["name"], None)
        out.append(_build(_merge(doc, o), ORIGIN_OVERRIDDEN) if o else _build(doc, ORIGIN_SHIPPED))
    for name in sorted(overrides):
        out.append(_build({**overrides[name], "name": name}, ORIGIN_ORG))
    return out


def select_profiles(
    session: Session, org_id: str, requested: list[str], field: str = "device_profiles"
) -> list[DeviceProfile]:
    """The requested profiles in request order (duplicates dropped), or all when none are
    requested. Unknown names are InvalidArgument listing the known ones."""
    known = profiles_for_org(session, org_id)
    if not requested:
        return known
    by_name = {p.name: p for p in known}
    v = Violations()
    out: list[DeviceProfile] = []
    for i, name in enumerate(requested):
        profile = by_name.get(name)
        if profile is None:
            v.add(
                f"{field}[{i}]",
                f"unknown device profile {name!r}; known: {', '.join(by_name)}",
            )
        elif profile not in out:
            out.append(profile)
    v.raise_if_any("unknown device profiles")
    return out


def validate_override(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Check one override document; return it without `name` (stored as its own column)."""
    v = Violations()
    if not isinstance(doc, dict):
        raise InvalidArgument.field(prefix.rstrip(".") or "profile", "must be a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not PROFILE_NAME_RE.match(name):
        v.add(
            f"{prefix}name",
            "is required: 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
        )
    _check_fields(v, prefix, doc)
    v.raise_if_any("invalid device profile override")
    shipped_docs = {d["name"]: d for d in _shipped_docs()[1]}
    base = shipped_docs.get(name)  # type: ignore[arg-type]
    if base is None:
        _check_complete(v, prefix, doc)
    else:
        if len(doc) == 1:
            v.add(prefix.rstrip(".") or "profile", "an override must change at least one field")
        _check_complete(v, prefix, _merge(base, doc))
    v.raise_if_any("invalid device profile override")
    return {k: val for k, val in doc.items() if k != "name"}


def set_overrides(session: Session, org_id: str, docs: list[Any]) -> list[DeviceProfile]:
    """Validate every document first (nothing is stored if one is bad), then upsert them."""
    if not docs:
        raise InvalidArgument.field("profiles", "give at least one profile")
    seen: set[str] = set()
    validated: list[tuple[str, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        prefix = f"profiles[{i}]." if len(docs) > 1 else ""
        body = validate_override(doc, prefix)
        name = doc["name"]
        if name in seen:
            raise InvalidArgument.field(f"{prefix}name", f"profile {name!r} is given twice")
        seen.add(name)
        validated.append((name, body))
    existing = {o.name: o for o in repo.list_for_org(session, org_id)}
    new_names = [n for n, _ in validated if n not in existing]
    if len(existing) + len(new_names) > MAX_PROFILES_PER_ORG:
        raise InvalidArgument.field(
            "profiles", f"an org may have at most {MAX_PROFILES_PER_ORG} profile overrides"
        )
    for name, body in validated:
        row = existing.get(name)
        if row is None:
            session.add(DeviceProfileOverride(org_id=org_id, name=name, profile=body))
        else:
            row.profile = body
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Aborted("a concurrent change to the same device profiles won; retry") from None
    merged = {p.name: p for p in profiles_for_org(session, org_id)}
    return [merged[name] for name, _ in validated]


def delete_override(session: Session, org_id: str, name: str) -> None:
    row = repo.get(session, org_id, name)
    if row is None:
        raise NotFound("device profile override", name)
    session.delete(row)
    session.flush()
