"""Catalog variant lookups, including the org-override-beats-blessed resolution."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BindParameter, ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session, aliased

from storage.orm import CatalogVariant


def visible_to(org_id: str | None) -> ColumnElement[bool]:
    """Variants an org may see: blessed ones and its own overrides (blessed only if None)."""
    if org_id is None:
        return CatalogVariant.org_id.is_(None)
    return or_(CatalogVariant.org_id.is_(None), CatalogVariant.org_id == org_id)


def resolved_for(org_id: str | BindParameter[str] | None) -> ColumnElement[bool]:
    """Of the variants an org sees, the one that wins for each name: its override if it
    has one, else the blessed row (resolve_by_name_for_org). `org_id` may be a bound
    parameter."""
    if org_id is None:
        return CatalogVariant.org_id.is_(None)
    override = aliased(CatalogVariant)
    shadowed = exists(
        select(override.id).where(override.org_id == org_id, override.name == CatalogVariant.name)
    )
    return or_(
        CatalogVariant.org_id == org_id,
        and_(CatalogVariant.org_id.is_(None), ~shadowed),
    )


def resolve_by_name(session: Session, org_id: str | None, name: str) -> CatalogVariant | None:
    """The variant named `name` for the org: its override beats the blessed row."""
    rows = session.scalars(
        select(CatalogVariant).where(CatalogVariant.name == name, visible_to(org_id))
    ).all()
    own = [v for v in rows if v.org_id is not None]
    return own[0] if own else (rows[0] if rows else None)


def resolve_many(
    session: Session, org_id: str | None, names: Iterable[str]
) -> dict[str, CatalogVariant]:
    """resolve_by_name for many names in one query."""
    wanted = set(names)
    if not wanted:
        return {}
    rows = session.scalars(
        select(CatalogVariant).where(CatalogVariant.name.in_(wanted), resolved_for(org_id))
    ).all()
    return {v.name: v for v in rows}
