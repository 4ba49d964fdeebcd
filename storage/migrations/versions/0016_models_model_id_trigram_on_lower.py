"""The pg_trgm index for ListModels' search on model_id indexes lower(model_id) instead.

On model_id itself, PostgreSQL's planner also used it for equality: `model_id IN (...)`
and `= ANY(...)` (a manifest rebuild reading the changed names' models, telemetry batches
resolving their models) became bitmap scans of the trigram index, which it costs as
selective but which read every model sharing a trigram with the name ("mod", "del-":
all of them). In an org of 10,000 models, 11 names took 50-85 ms, 100 names 600 ms and
500 names 3.8 s, where the unique (org_id, model_id) index answers in a few milliseconds.
An index on the expression serves only queries on lower(model_id): the search, which
matches lower(model_id) LIKE the lowered pattern (model ids are lowercase slugs, so that
is the ILIKE it replaces).

On SQLite the index is a plain (unused) one, as in 0004.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_models_model_id_trgm"


def _trigram_index_exists() -> bool:
    """0004 skipped the trigram indexes where pg_trgm could not be created."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return True
    return (
        bind.exec_driver_sql("SELECT 1 FROM pg_class WHERE relname = %s", (NAME,)).first()
        is not None
    )


def _replace(columns: list[Any], **options: Any) -> None:
    """Drop the index and create it again over `columns` (where 0004 created it)."""
    if not _trigram_index_exists():
        return
    op.drop_index(NAME, table_name="models")
    op.create_index(NAME, "models", columns, postgresql_using="gin", **options)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _replace([sa.text("lower(model_id) gin_trgm_ops" if postgres else "lower(model_id)")])


def downgrade() -> None:
    _replace(["model_id"], postgresql_ops={"model_id": "gin_trgm_ops"})
