"""manifest_snapshots.entry_format: the serialization a stored whole manifest is in.

A stored manifest carried its format only inside its bytes (server/manifest_snapshot.py),
so the database could not tell one of another format from a current one: after an upgrade
that serializes entries otherwise, the check that decides whether a caller's next build is
large enough to make in the background (domain.manifest.large_build_ahead) saw a stored
manifest, while every server decoded it to nothing and built the caller's manifest from
every row on a device's request. The column lets reads skip rows of another format.
Existing rows are of the first format (migration 0017 dropped the older layout).

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "manifest_snapshots",
        sa.Column("entry_format", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("manifest_snapshots") as batch:
        batch.drop_column("entry_format")
