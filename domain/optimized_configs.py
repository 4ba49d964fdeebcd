"""Optimized runtime configurations of a model per device type (Get/PutOptimizedConfig).

Each put stores a new revision (1, 2, ...); reads return the latest. A config is a
non-empty JSON object of at most MAX_CONFIG_BYTES in compact UTF-8 JSON, with finite
numbers and at most MAX_DEPTH levels of nesting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain import names
from domain.errors import Aborted, InvalidArgument, NotFound, Violations
from storage.orm import OptimizedConfig
from storage.repos import models as model_repo
from storage.repos import optimized_configs as repo

MAX_CONFIG_BYTES = 256 * 1024
MAX_DEPTH = 32


@dataclass(frozen=True)
class ConfigView:
    model_id: str
    device_type: str
    revision: int
    config: dict[str, Any]
    created_at: datetime


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_config(v: Violations, field: str, config: dict[str, Any] | None) -> None:
    if config is None:
        v.add(field, "is required: a JSON object")
        return
    if not config:
        v.add(field, "must not be empty")
        return
    try:
        encoded = json.dumps(config, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        v.add(field, "numbers must be finite (NaN and Infinity are not JSON)")
        return
    size = len(encoded.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        v.add(
            field,
            f"is {size} bytes as compact JSON; at most {MAX_CONFIG_BYTES} bytes (256 KiB)",
        )
    if _depth(config) > MAX_DEPTH:
        v.add(field, f"nests deeper than {MAX_DEPTH} levels")


def put_config(
    session: Session, org_id: str, name: str, config: dict[str, Any] | None
) -> ConfigView:
    v = Violations()
    model_id = device_type = ""
    try:
        model_id, device_type = names.parse_optimized_config_name(name, "optimized_config.name")
    except InvalidArgument as exc:  # reported together with the config's problems
        v.items.extend(exc.violations)
    check_config(v, "optimized_config.config", config)
    v.raise_if_any()
    assert config is not None
    # Locking the model row serializes puts for the model, so revisions do not collide.
    model = model_repo.get_for_update(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    revision = repo.max_revision(session, org_id, model.id, device_type) + 1
    row = OptimizedConfig(
        org_id=org_id,
        model_uid=model.id,
        device_type=device_type,
        revision=revision,
        config=config,
    )
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Aborted(
            f"a concurrent put stored revision {revision} of "
            f"{names.optimized_config_name(model_id, device_type)!r}; retry"
        ) from None
    return ConfigView(model_id, device_type, revision, config, row.created_at)


def get_config(session: Session, org_id: str, name: str) -> ConfigView:
    model_id, device_type = names.parse_optimized_config_name(name)
    model = model_repo.get(session, org_id, model_id)
    if model is None:
        raise NotFound("model", names.model_name(model_id))
    row = repo.latest(session, org_id, model.id, device_type)
    if row is None:
        resource = names.optimized_config_name(model_id, device_type)
        raise NotFound(
            "optimized config",
            resource,
            f"no optimized config stored for device type {device_type!r} of model "
            f"{names.model_name(model_id)!r}: store one with PutOptimizedConfig",
        )
    return ConfigView(model_id, device_type, row.revision, dict(row.config), row.created_at)
