"""manifest_snapshots: each caller's whole built manifest, shared by every server.

With manifest_tails (0009) a cold build (a restarted server, a new replica) still read
every model's index row and stored subtree and joined them: 210-260 ms for 10,000 models.
A snapshot stored under the caller's stamp makes that one row read while nothing changed,
and a rebuild of the changed entries only when something did; see
storage.orm.catalog.ManifestSnapshot.

On PostgreSQL the data column is stored uncompressed (STORAGE EXTERNAL): pglz would cost
every cold read a decompression of megabytes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_snapshots",
        sa.Column("scope", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("org_revision", sa.BigInteger(), nullable=False),
        sa.Column("catalog_revision", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_manifest_snapshots_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_manifest_snapshots")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE manifest_snapshots ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("manifest_snapshots")
