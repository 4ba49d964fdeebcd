"""manifest_tails: each variant's serialized manifest subtree, shared by every server.

GetManifest serializes a variant's versions, packages and resources once per content key
(content_revision, updated_at) and kept the bytes only in the process that built them, so
the first build after a start (or on a new replica) rebuilt all of them from rows: 1.2 s
for 10,000 models. Kept here, a cold build reads them like any other row. A row is used
only while its key equals the variant's current one; see storage.orm.catalog.ManifestTail.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_tails",
        sa.Column("variant_id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("content_revision", sa.BigInteger(), nullable=False),
        sa.Column("variant_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("framework", sa.String(length=32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["variant_id"],
            ["catalog_variants.id"],
            name=op.f("fk_manifest_tails_variant_id_catalog_variants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("variant_id", name=op.f("pk_manifest_tails")),
    )
    op.create_index(op.f("ix_manifest_tails_org_id"), "manifest_tails", ["org_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_manifest_tails_org_id"), table_name="manifest_tails")
    op.drop_table("manifest_tails")
