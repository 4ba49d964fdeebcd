"""manifest_tails.entry_*: the whole map entry a build made around a stored subtree.

A build with no manifest of the caller's to start from (a caller's first, one past the
change log) joined each name's map entry from its Model row and the variant's stored
subtree: 10,000 entries made, a quarter of a cold build of a large org. A stored subtree
now keeps the entry last made around it and the Model row it was made with, and a build
whose caller has the same row takes the entry as it is (storage.orm.catalog.ManifestTail).
Existing rows have none: the next build makes and stores them.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("entry_framework", "entry_enabled", "entry_prefix", "entry_etag")


def upgrade() -> None:
    op.add_column("manifest_tails", sa.Column("entry_framework", sa.String(32), nullable=True))
    op.add_column("manifest_tails", sa.Column("entry_enabled", sa.Boolean(), nullable=True))
    op.add_column("manifest_tails", sa.Column("entry_prefix", sa.LargeBinary(), nullable=True))
    op.add_column("manifest_tails", sa.Column("entry_etag", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("manifest_tails") as batch:
        for column in COLUMNS:
            batch.drop_column(column)
