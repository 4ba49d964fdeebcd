"""One page of a query together with the number of rows it matches in all (AIP-158's
total_size), for every paged list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.interfaces import ORMOption


def page_and_total(
    session: Session,
    base: Select[Any],
    order: Sequence[Any],
    offset: int,
    limit: int,
    *options: ORMOption,
) -> tuple[list[Any], int]:
    """Rows `offset` to `offset + limit` of `base` in `order`, and how many rows `base`
    matches. The count runs over `base` itself, so it always agrees with the filters."""
    rows = list(
        session.scalars(base.order_by(*order).offset(offset).limit(limit).options(*options))
    )
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    return rows, int(total)
