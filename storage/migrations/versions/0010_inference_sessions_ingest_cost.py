"""inference_sessions: cheaper to insert into (no per-row org foreign key check; the time
index keyed by an integer scope instead of two text columns).

Raw sessions are the one table written tens of thousands of rows a second, and PostgreSQL's
CPU per inserted row was the limit of `make bench-telemetry`. Two costs per row go:

- The foreign key org_id -> orgs.id ran a trigger per row (an SPI query locking the org
  row), about an eighth of the insert. Deleting an org still removes its raw sessions, now
  through one AFTER DELETE trigger on orgs (orgs are deleted rarely, sessions inserted
  constantly). An ingesting transaction cannot leave rows of a deleted org behind either:
  the same transaction always upserts rollup rows, which keep their foreign key, so a
  batch racing the org's deletion either commits first (the trigger's DELETE, a later
  statement, sees its rows) or fails on the rollups' foreign key and rolls back. The
  trade-off: a writer that inserts raw sessions without rollups (none in this code base)
  could store rows for an org that does not exist.
- The index (org_id, model_id, occurred_at) compared two 36- and up to 128-character
  strings at each step of every descent. It becomes (scope, occurred_at), where scope is a
  64-bit hash of (org_id, model_id) computed by the application
  (storage.repos.telemetry.session_scope). Queries still filter on org_id and model_id as
  well, so a hash collision can only cost reading another model's index entries, never
  return them.

Existing rows get their scope here, one UPDATE per (org, model); on a large table this
rewrites it once (raw sessions are kept for the retention period only, 30 days by default).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INDEX = "ix_inference_sessions_org_id_model_id_occurred_at"
NEW_INDEX = "ix_inference_sessions_scope_occurred_at"
FK = "fk_inference_sessions_org_id_orgs"
TRIGGER = "trg_orgs_delete_inference_sessions"
FUNCTION = "orgs_delete_inference_sessions"
DELETE_SESSIONS = "DELETE FROM inference_sessions WHERE org_id = OLD.id"


def _scope(org_id: str, model_id: str) -> int:
    # A frozen copy of storage.repos.telemetry.session_scope: both must give equal values.
    digest = hashlib.blake2b(f"{org_id}/{model_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("inference_sessions") as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.add_column(sa.Column("scope", sa.BigInteger(), nullable=True))
    pairs = bind.execute(sa.text("SELECT DISTINCT org_id, model_id FROM inference_sessions"))
    for org_id, model_id in pairs.all():
        bind.execute(
            sa.text(
                "UPDATE inference_sessions SET scope = :scope"
                " WHERE org_id = :org AND model_id = :model"
            ),
            {"scope": _scope(org_id, model_id), "org": org_id, "model": model_id},
        )
    with op.batch_alter_table("inference_sessions") as batch:
        batch.alter_column("scope", existing_type=sa.BigInteger(), nullable=False)
        batch.drop_index(OLD_INDEX)
        batch.create_index(NEW_INDEX, ["scope", "occurred_at"], unique=False)
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(
            f"CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN {DELETE_SESSIONS}; RETURN NULL; END $$"
        )
        bind.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON orgs "
            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
        )
    else:
        bind.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON orgs BEGIN {DELETE_SESSIONS}; END"
        )


def downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(
        f"DROP TRIGGER IF EXISTS {TRIGGER}"
        + (" ON orgs" if bind.dialect.name == "postgresql" else "")
    )
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    # Rows of deleted orgs could only exist without the foreign key.
    bind.exec_driver_sql("DELETE FROM inference_sessions WHERE org_id NOT IN (SELECT id FROM orgs)")
    with op.batch_alter_table("inference_sessions") as batch:
        batch.drop_index(NEW_INDEX)
        batch.create_index(OLD_INDEX, ["org_id", "model_id", "occurred_at"], unique=False)
        batch.drop_column("scope")
        batch.create_foreign_key(FK, "orgs", ["org_id"], ["id"], ondelete="CASCADE")
