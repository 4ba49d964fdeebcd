"""manifest_tails.entry_format: the serialization a stored subtree is in.

A stored subtree was used whenever its variant's content key was current, whatever release
of the server had serialized it: after an upgrade that changed what an entry's bytes hold
(a field added to the messages it fills), servers would have served the old bytes, mixed
with new ones, until each variant changed. Rows now name their format
(server/manifest_pb.ENTRY_FORMAT) and a server reads only rows of its own. Existing rows
are of the first format.

Stored whole manifests carry the format in their encoding, whose layout changes with it
(server/manifest_snapshot.MAGIC): those stored before are never read again, so they go
(a cache: the next build stores anew). Left in place they would look current to the check
that decides whether to build a caller's manifest in the background
(domain.manifest.large_build_ahead). Downgrading drops them too, for the same reason.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "manifest_tails",
        sa.Column("entry_format", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
    )
    op.execute("DELETE FROM manifest_snapshots")


def downgrade() -> None:
    with op.batch_alter_table("manifest_tails") as batch:
        batch.drop_column("entry_format")
    op.execute("DELETE FROM manifest_snapshots")
