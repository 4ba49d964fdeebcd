"""orgs.manifest_live_floor, catalog_state.manifest_live_floor: how far back the change log
lists every name still in the scope.

Since 0015 the triggers prune only tombstones (rows of names no longer in the scope) and
raise manifest_changes_floor past them; a name still in the scope keeps its row, stamped
with the revision that last changed it. So a build from a manifest older than that floor
can still patch: the log lists every live name changed since, and the names gone since
are found from what every entry comes from (domain.manifest.gone_sources). Before 0015 it
could not be told apart from the floors 0013 set: when it started logging (nothing before
was logged) and each time it pruned whole revisions, live names' rows included. This
column is that floor, which nothing raises any longer: the log lists every live name that
changed after it. Existing rows take their manifest_changes_floor (at most as low as
0013's; a floor 0015 raised above it only leaves an older manifest to the whole index
read, as before); scopes created from now on start at 0.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("orgs", "catalog_state")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table,
            sa.Column(
                "manifest_live_floor", sa.BigInteger(), server_default=sa.text("0"), nullable=False
            ),
        )
        op.execute(f"UPDATE {table} SET manifest_live_floor = manifest_changes_floor")


def downgrade() -> None:
    # Not batch_alter_table: on SQLite it copies the table anew, without its triggers.
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN manifest_live_floor")
