"""One page of a query together with the number of rows it matches in all (AIP-158's
total_size), for every paged list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, select
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


@dataclass(frozen=True)
class PageStatements:
    """page_and_total's two statements built once for a query whose values are all bound
    parameters (the page's offset and limit too), to be run many times with `run`."""

    page: Select[Any]
    count: Select[Any]

    @classmethod
    def of(
        cls, base: Select[Any], order: Sequence[Any], *, page_base: Select[Any] | None = None
    ) -> PageStatements:
        """`page_base`: `base` with more columns for the page's rows (same rows)."""
        page = (
            (base if page_base is None else page_base)
            .order_by(*order)
            .offset(bindparam("page_offset"))
            .limit(bindparam("page_limit"))
        )
        return cls(page, select(func.count()).select_from(base.subquery()))

    def run(
        self, session: Session, params: Mapping[str, Any], offset: int, limit: int
    ) -> tuple[list[Any], int]:
        """The page's first column of each row, and the total."""
        rows = list(
            session.scalars(self.page, {**params, "page_offset": offset, "page_limit": limit})
        )
        return rows, self._total(session, params)

    def run_rows(
        self, session: Session, params: Mapping[str, Any], offset: int, limit: int
    ) -> tuple[list[Any], int]:
        """The page's rows (every column), and the total."""
        rows = list(
            session.execute(self.page, {**params, "page_offset": offset, "page_limit": limit})
        )
        return rows, self._total(session, params)

    def _total(self, session: Session, params: Mapping[str, Any]) -> int:
        return int(session.scalar(self.count, params) or 0)
