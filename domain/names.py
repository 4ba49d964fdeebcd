"""Resource names and ids (AIP-122): parsing and validation in one place."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from domain.errors import InvalidArgument

# Model names are slugs: lowercase, digits and . _ - ; they appear in resource names,
# storage keys and manifests, so nothing that needs escaping is allowed.
MODEL_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
VERSION_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._+-]{0,62}[A-Za-z0-9])?$")
TAG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._:-]{0,62}[a-z0-9])?$")
WILDCARD = "-"


def model_id_problem(value: str) -> str | None:
    """Why `value` is not a valid model id, or None."""
    if not value:
        return "must not be empty"
    if len(value) > 64:
        return f"must be at most 64 characters (got {len(value)})"
    if not MODEL_ID_RE.match(value):
        return (
            "must be lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return None


def version_id_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > 64:
        return f"must be at most 64 characters (got {len(value)})"
    if not VERSION_ID_RE.match(value):
        return (
            "must be letters, digits, '.', '_', '+' or '-', "
            "starting and ending with a letter or digit"
        )
    return None


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _segments(name: str, field: str, pattern: tuple[str, ...]) -> list[str]:
    """Split `name` and check its collection segments; return the id segments."""
    parts = name.split("/")
    expected = "/".join(f"{c}/{{{c[:-1]}}}" for c in pattern)
    if len(parts) != 2 * len(pattern) or any(parts[2 * i] != c for i, c in enumerate(pattern)):
        raise InvalidArgument.field(field, f"must be a resource name of the form {expected}")
    ids = parts[1::2]
    if any(not i for i in ids):
        raise InvalidArgument.field(field, f"must be a resource name of the form {expected}")
    return ids


def model_name(model_id: str) -> str:
    return f"models/{model_id}"


def version_name(model_id: str, version_id: str) -> str:
    return f"models/{model_id}/versions/{version_id}"


def parse_model_name(name: str, field: str = "name") -> str:
    """`models/{model_id}` -> model_id."""
    (model_id,) = _segments(name, field, ("models",))
    problem = model_id_problem(model_id)
    if problem:
        raise InvalidArgument.field(field, f"model id {problem}")
    return model_id


@dataclass(frozen=True)
class VersionRef:
    """A parsed version name: by model and version string, or (model '-') by uid."""

    model_id: str | None
    version_id: str | None
    uid: str | None

    @property
    def name(self) -> str:
        if self.uid:
            return f"models/-/versions/{self.uid}"
        return version_name(self.model_id or "", self.version_id or "")


def parse_version_name(name: str, field: str = "name", *, allow_uid: bool = True) -> VersionRef:
    model_id, version = _segments(name, field, ("models", "versions"))
    if model_id == WILDCARD:
        if not allow_uid:
            raise InvalidArgument.field(field, "the model must be named here, not '-'")
        if not is_uuid(version):
            raise InvalidArgument.field(
                field, "with model '-', the version segment must be the version's uid"
            )
        return VersionRef(None, None, version)
    problem = model_id_problem(model_id)
    if problem:
        raise InvalidArgument.field(field, f"model id {problem}")
    problem = version_id_problem(version)
    if problem:
        raise InvalidArgument.field(field, f"version id {problem}")
    return VersionRef(model_id, version, None)


def parse_uid_name(name: str, field: str, pattern: tuple[str, ...]) -> list[str | None]:
    """Catalog names (`variants/{uid}/versions/{uid}/...`): ids are uids or '-' for parents.

    Returns the ids with None for wildcards; the last segment must be a uid.
    """
    ids = _segments(name, field, pattern)
    out: list[str | None] = []
    for i, value in enumerate(ids):
        if value == WILDCARD and i < len(ids) - 1:
            out.append(None)
        elif is_uuid(value):
            out.append(value)
        else:
            raise InvalidArgument.field(field, f"{pattern[i][:-1]} id {value!r} is not a valid uid")
    return out


def variant_name(uid: str) -> str:
    return f"variants/{uid}"


def catalog_version_name(variant_uid: str, uid: str) -> str:
    return f"variants/{variant_uid}/versions/{uid}"


def package_name(variant_uid: str, version_uid: str, uid: str) -> str:
    return f"variants/{variant_uid}/versions/{version_uid}/packages/{uid}"


def resource_name(variant_uid: str, version_uid: str, package_uid: str, uid: str) -> str:
    return f"{package_name(variant_uid, version_uid, package_uid)}/resources/{uid}"


def optimized_config_name(model_id: str, device_type: str) -> str:
    return f"models/{model_id}/optimizedConfigs/{device_type}"


def parse_optimized_config_name(name: str, field: str = "name") -> tuple[str, str]:
    """`models/{model_id}/optimizedConfigs/{device_type}` -> (model_id, device_type)."""
    model_id, device_type = _segments(name, field, ("models", "optimizedConfigs"))
    problem = model_id_problem(model_id)
    if problem:
        raise InvalidArgument.field(field, f"model id {problem}")
    problem = model_id_problem(device_type)
    if problem:
        raise InvalidArgument.field(field, f"device type {problem}")
    return model_id, device_type


def conversion_job_name(uid: str) -> str:
    return f"conversionJobs/{uid}"


def parse_conversion_job_name(name: str, field: str = "name") -> str:
    """`conversionJobs/{uid}` -> uid."""
    (uid,) = _segments(name, field, ("conversionJobs",))
    if not is_uuid(uid):
        raise InvalidArgument.field(field, f"job id {uid!r} is not a valid uid")
    return uid
