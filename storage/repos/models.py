"""Queries over an org's models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, func, or_, select, true
from sqlalchemy.orm import Session

from storage.orm import CatalogVariant, Model, ModelVersion
from storage.repos import json_ops, variants
from storage.repos.paging import page_and_total

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


def get(session: Session, org_id: str, model_id: str) -> Model | None:
    return session.scalars(
        select(Model).where(Model.org_id == org_id, Model.model_id == model_id)
    ).one_or_none()


def get_for_update(session: Session, org_id: str, model_id: str) -> Model | None:
    return session.scalars(
        select(Model).where(Model.org_id == org_id, Model.model_id == model_id).with_for_update()
    ).one_or_none()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(session: Session, org_id: str, f: ModelFilter) -> list[ColumnElement[bool]]:
    dialect = session.get_bind().dialect
    conds: list[ColumnElement[bool]] = [Model.org_id == org_id]
    if f.framework:
        conds.append(Model.framework == f.framework)
    if f.enabled is not None:
        conds.append(Model.enabled.is_(f.enabled))
    if f.tag:
        conds.append(json_ops.array_contains(Model.tags, f.tag, dialect))
    if f.search:
        # ILIKE rather than lower(...) LIKE: on PostgreSQL the pg_trgm indexes of migration
        # 0004 serve it; SQLite compiles it to lower(x) LIKE lower(y), the same match.
        pattern = f"%{_escape_like(f.search)}%"
        conds.append(
            or_(
                Model.model_id.ilike(pattern, escape="\\"),
                Model.description.ilike(pattern, escape="\\"),
            )
        )
    if f.capability:
        conds.append(
            exists(
                select(CatalogVariant.id).where(
                    CatalogVariant.name == Model.model_id,
                    variants.resolved_for(org_id),
                    json_ops.array_contains(CatalogVariant.task_taxonomy, f.capability, dialect),
                )
            )
        )
    return conds


def list_page(
    session: Session, org_id: str, f: ModelFilter, order: str, offset: int, limit: int
) -> tuple[list[Model], int]:
    """One page of matching models and the total number of matches."""
    base = select(Model).where(*_conditions(session, org_id, f))
    return page_and_total(session, base, ORDERINGS[order], offset, limit)


def version_counts(session: Session, model_uids: Sequence[str]) -> dict[str, int]:
    if not model_uids:
        return {}
    rows = session.execute(
        select(ModelVersion.model_uid, func.count())
        .where(ModelVersion.model_uid.in_(model_uids))
        .group_by(ModelVersion.model_uid)
    ).all()
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
