"""Queries over an org's models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, bindparam, exists, func, or_, select, true
from sqlalchemy.orm import Session

from storage.orm import CatalogVariant, Model, ModelVersion
from storage.repos import json_ops, variants
from storage.repos.paging import PageStatements

ORDERINGS = {
    "create_time desc": (Model.created_at.desc(), Model.id.desc()),
    "create_time asc": (Model.created_at.asc(), Model.id.asc()),
    "model_id asc": (Model.model_id.asc(),),
    "model_id desc": (Model.model_id.desc(),),
    "update_time desc": (Model.updated_at.desc(), Model.id.desc()),
}


@dataclass(frozen=True)
class ModelFilter:
    framework: str = ""
    capability: str = ""
    enabled: bool | None = None
    tag: str = ""
    search: str = ""


# Statements of the hottest reads are built once, with bound parameters: building a
# select costs more CPU than running it (SQLAlchemy also caches its compiled form by the
# statement's cache key, which a statement built once computes once).
_GET = select(Model).where(
    Model.org_id == bindparam("org_id"), Model.model_id == bindparam("model_id")
)
_VERSION_COUNTS = (
    select(ModelVersion.model_uid, func.count())
    .where(ModelVersion.model_uid.in_(bindparam("uids", expanding=True)))
    .group_by(ModelVersion.model_uid)
)
# A model row's number of versions, as a column of the query that reads the model.
_VERSION_COUNT = (
    select(func.count())
    .where(ModelVersion.model_uid == Model.id)
    .correlate(Model)
    .scalar_subquery()
    .label("version_count")
)
_GET_COUNTED = select(Model, _VERSION_COUNT).where(
    Model.org_id == bindparam("org_id"), Model.model_id == bindparam("model_id")
)


def get(session: Session, org_id: str, model_id: str) -> Model | None:
    return session.scalars(_GET, {"org_id": org_id, "model_id": model_id}).one_or_none()


def get_counted(session: Session, org_id: str, model_id: str) -> tuple[Model, int] | None:
    """The org's model and its number of versions, in one query."""
    row = session.execute(_GET_COUNTED, {"org_id": org_id, "model_id": model_id}).one_or_none()
    return (row[0], row[1]) if row else None


def get_for_update(session: Session, org_id: str, model_id: str) -> Model | None:
    return session.scalars(
        select(Model).where(Model.org_id == org_id, Model.model_id == model_id).with_for_update()
    ).one_or_none()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# A filter's shape: which of its conditions apply (the values are bound parameters).
_Shape = tuple[bool, bool | None, bool, bool, bool]


def _shape(f: ModelFilter) -> _Shape:
    return (bool(f.framework), f.enabled, bool(f.tag), bool(f.search), bool(f.capability))


def _params(org_id: str, f: ModelFilter) -> dict[str, Any]:
    params: dict[str, Any] = {"org_id": org_id}
    if f.framework:
        params["framework"] = f.framework
    if f.tag:
        params["tag"] = f.tag
    if f.search:
        params["pattern"] = f"%{_escape_like(f.search)}%"
        params["lower_pattern"] = params["pattern"].lower()
    if f.capability:
        params["capability"] = f.capability
    return params


def _conditions(shape: _Shape, dialect_name: str) -> list[ColumnElement[bool]]:
    """The filter's conditions, with its values as the bound parameters of _params."""
    framework, enabled, tag, search, capability = shape
    org_id = bindparam("org_id", type_=String())
    conds: list[ColumnElement[bool]] = [Model.org_id == org_id]
    if framework:
        conds.append(Model.framework == bindparam("framework"))
    if enabled is not None:
        conds.append(Model.enabled.is_(enabled))
    if tag:
        tag_param = bindparam("tag", type_=String())
        conds.append(json_ops.array_contains(Model.tags, tag_param, dialect_name))
    if search:
        # On PostgreSQL pg_trgm indexes serve both: description's ILIKE (migration 0004)
        # and model_id's as lower(model_id) LIKE the lowered pattern, the expression its
        # index is on (migration 0016; model ids are lowercase, so the same match).
        # SQLite compiles ILIKE to lower(x) LIKE lower(y), the same match again.
        pattern = bindparam("pattern", type_=String())
        lower_pattern = bindparam("lower_pattern", type_=String())
        conds.append(
            or_(
                func.lower(Model.model_id).like(lower_pattern, escape="\\"),
                Model.description.ilike(pattern, escape="\\"),
            )
        )
    if capability:
        conds.append(
            exists(
                select(CatalogVariant.id).where(
                    CatalogVariant.name == Model.model_id,
                    variants.resolved_for(org_id),
                    json_ops.array_contains(
                        CatalogVariant.task_taxonomy,
                        bindparam("capability", type_=String()),
                        dialect_name,
                    ),
                )
            )
        )
    return conds


# (shape, order, dialect name) -> the page and count statements, built once each.
_PAGES: dict[tuple[_Shape, str, str], PageStatements] = {}


def list_page(
    session: Session, org_id: str, f: ModelFilter, order: str, offset: int, limit: int
) -> tuple[list[tuple[Model, int]], int]:
    """One page of matching models, each with its number of versions, and the total
    number of matches."""
    dialect_name = session.get_bind().dialect.name
    key = (_shape(f), order, dialect_name)
    statements = _PAGES.get(key)
    if statements is None:
        conditions = _conditions(key[0], dialect_name)
        statements = _PAGES[key] = PageStatements.of(
            select(Model).where(*conditions),
            ORDERINGS[order],
            page_base=select(Model, _VERSION_COUNT).where(*conditions),
        )
    rows, total = statements.run_rows(session, _params(org_id, f), offset, limit)
    return [(m, count) for m, count in rows], total


def version_counts(session: Session, model_uids: Sequence[str]) -> dict[str, int]:
    if not model_uids:
        return {}
    rows = session.execute(_VERSION_COUNTS, {"uids": list(model_uids)}).all()
    return {uid: count for uid, count in rows}


def distinct_frameworks(session: Session, org_id: str) -> list[str]:
    return sorted(
        v
        for v in session.scalars(select(Model.framework).distinct().where(Model.org_id == org_id))
        if v
    )


def distinct_tags(session: Session, org_id: str) -> list[str]:
    elements = json_ops.array_elements(Model.tags, session.get_bind().dialect)
    rows = session.scalars(
        select(elements.c.value)
        .distinct()
        .select_from(Model)
        .join(elements, true())
        .where(Model.org_id == org_id)
    )
    return sorted(str(v) for v in rows if v)


def distinct_capabilities(session: Session, org_id: str) -> list[str]:
    """Capabilities of the variants that resolve for the org's model names."""
    dialect = session.get_bind().dialect
    elements = json_ops.array_elements(CatalogVariant.task_taxonomy, dialect)
    rows = session.scalars(
        select(elements.c.value)
        .distinct()
        .select_from(CatalogVariant)
        .join(elements, true())
        .where(
            variants.resolved_for(org_id),
            CatalogVariant.name.in_(select(Model.model_id).where(Model.org_id == org_id)),
        )
    )
    return sorted(str(v) for v in rows if v)
