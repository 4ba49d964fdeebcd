"""The one place that decides which catalog variant a model name means for an org.

An org's override row beats the blessed row of the same name (resolve_by_name_for_org);
another org's overrides are never seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from storage.orm import CatalogVariant
from storage.repos import variants


def resolve_variant(session: Session, org_id: str | None, model_id: str) -> CatalogVariant | None:
    return variants.resolve_by_name(session, org_id, model_id)


def resolve_variants(
    session: Session, org_id: str | None, model_ids: Iterable[str]
) -> dict[str, CatalogVariant]:
    return variants.resolve_many(session, org_id, model_ids)
