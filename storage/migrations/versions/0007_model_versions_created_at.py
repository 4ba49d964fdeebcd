"""Index model_versions(created_at, model_uid) for the monthly version quota count.

Every CreateVersion (and every upload that creates a version) counts the org's versions
created this calendar month while holding the org row lock. Without an index that count
read every version of every model of the org; with 100,000 models on PostgreSQL it cost
about 27 ms of database CPU per create (bench/, create-version scenario). The index holds
this month's rows together, and model_uid in it lets the count run from the index alone
(storage.repos.versions.created_since looks each row's org up by primary key).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_model_versions_created_at", "model_versions", ["created_at", "model_uid"])


def downgrade() -> None:
    op.drop_index("ix_model_versions_created_at", table_name="model_versions")
