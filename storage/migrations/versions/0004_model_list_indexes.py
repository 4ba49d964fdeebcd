"""Indexes for ListModels on large orgs: newest-first paging, framework, tags, search.

Measured with 100,000 models in one org (bench/, `make bench`): both the page query and
its count were sequential scans of the whole org (~70 ms each on the benchmark machine);
with these indexes the page query walks (org_id, created_at) and the count combines the
bitmaps of the framework, tag and search indexes.

On PostgreSQL the tag index is a GIN (jsonb_path_ops, serves `tags @> '["x"]'`) and the
search indexes are pg_trgm GINs (serve `ILIKE '%text%'`). pg_trgm is a trusted extension
since PostgreSQL 13: a database owner may create it. Where it cannot be created the search
indexes are skipped (a warning is printed) and search falls back to scanning.
On SQLite the same names are plain indexes (SQLite has neither GIN nor trigrams).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import warnings
from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGRAM_INDEXES = (
    ("ix_models_model_id_trgm", "model_id"),
    ("ix_models_description_trgm", "description"),
)


def _pg_trgm_available() -> bool:
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").first():
        return True
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        return True
    except Exception as exc:  # no privilege, or the contrib module is not installed
        warnings.warn(
            f"pg_trgm unavailable ({exc.__class__.__name__}); ListModels search will scan",
            stacklevel=1,
        )
        return False


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_index("ix_models_org_id_created_at", "models", ["org_id", "created_at", "id"])
    op.create_index("ix_models_org_id_framework", "models", ["org_id", "framework"])
    op.create_index(
        "ix_models_tags",
        "models",
        ["tags"],
        postgresql_using="gin",
        postgresql_ops={"tags": "jsonb_path_ops"},
    )
    if postgres and not _pg_trgm_available():
        return
    for name, column in TRIGRAM_INDEXES:
        op.create_index(
            name,
            "models",
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
        )


def downgrade() -> None:
    for name, _ in TRIGRAM_INDEXES:
        op.drop_index(name, table_name="models", if_exists=True)
    op.drop_index("ix_models_tags", table_name="models")
    op.drop_index("ix_models_org_id_framework", table_name="models")
    op.drop_index("ix_models_org_id_created_at", table_name="models")
