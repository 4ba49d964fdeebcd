"""JSON-array predicates that work on both PostgreSQL (JSONB) and SQLite (json_each)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Dialect, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB


def array_contains(
    column: Any, value: str | BindParameter[str], dialect: Dialect | str
) -> ColumnElement[bool]:
    """`value` (a string, or a bound parameter for one) is an element of the JSON array in
    `column`. `dialect`: the dialect or its name."""
    name = dialect if isinstance(dialect, str) else dialect.name
    if name == "postgresql":
        element = value if isinstance(value, BindParameter) else literal(value)
        probe = func.cast(func.jsonb_build_array(element), JSONB)
        result: ColumnElement[bool] = column.op("@>")(probe)
        return result
    each = func.json_each(column).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == value))


def array_elements(column: Any, dialect: Dialect) -> Any:
    """A table-valued function yielding the elements of a JSON array column as `value`."""
    if dialect.name == "postgresql":
        return func.jsonb_array_elements_text(column).table_valued("value")
    return func.json_each(column).table_valued("value")
