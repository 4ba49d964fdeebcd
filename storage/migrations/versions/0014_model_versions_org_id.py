"""model_versions.org_id: the monthly version quota counts one org's rows only.

Every CreateVersion (and every upload that creates a version) counts the org's versions
created this calendar month while holding the org's row lock. 0007 indexed
(created_at, model_uid), so the count walked this month's versions of *every* org and
looked each one's org up: its cost grew with the whole deployment's uploads, not the
org's. With the org on the row and (org_id, created_at) indexed it reads only the org's
versions of the month (at most its quota). Models never change org, so the column is set
once, from the model, when the version is inserted.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("org_id", sa.String(length=36), nullable=True))
    op.execute(
        "UPDATE model_versions SET org_id = "
        "(SELECT models.org_id FROM models WHERE models.id = model_versions.model_uid)"
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("org_id", existing_type=sa.String(length=36), nullable=False)
        batch.create_foreign_key(
            op.f("fk_model_versions_org_id_orgs"), "orgs", ["org_id"], ["id"], ondelete="CASCADE"
        )
    op.create_index(
        "ix_model_versions_org_id_created_at", "model_versions", ["org_id", "created_at"]
    )
    op.drop_index("ix_model_versions_created_at", table_name="model_versions")


def downgrade() -> None:
    op.create_index("ix_model_versions_created_at", "model_versions", ["created_at", "model_uid"])
    op.drop_index("ix_model_versions_org_id_created_at", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint(op.f("fk_model_versions_org_id_orgs"), type_="foreignkey")
        batch.drop_column("org_id")
