"""inference_sessions: on PostgreSQL partitioned by RANGE (occurred_at), one partition per
UTC day, so the retention drops whole partitions instead of deleting rows; the key becomes
(org_id, event_id, occurred_at) on both backends.

A unique key of a partitioned table must hold the partition key. (org_id, event_id,
occurred_at) still makes retries idempotent: a retried event is re-sent identically, its
occur_time included, so a retry and a concurrent duplicate conflict as before. SQLite's
table (not partitioned) gets the same key so that both backends dedupe alike: an event id
is unique per org together with its occur_time.

PostgreSQL: the table is renamed away, the partitioned one created with the same columns,
check constraint, key and (scope, occurred_at) index (0010), a partition made for every
day holding rows plus today and tomorrow, the rows moved over and the old table dropped.
The trigger on orgs of 0010 names the table in its body and so applies to the new one.
Later partitions are created by ingestion (storage.repos.telemetry.ensure_session_partitions).
Downgrade: back to one ordinary table keyed by (org_id, event_id), keeping the latest
received row of an id stored at several occur_times (only possible after this upgrade).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "inference_sessions"
OLD = "inference_sessions_unpartitioned"
PK = "pk_inference_sessions"
INDEX = "ix_inference_sessions_scope_occurred_at"
TRIGGER = "trg_orgs_delete_inference_sessions"  # 0010
DELETE_SESSIONS = "DELETE FROM inference_sessions WHERE org_id = OLD.id"
PREFIX = "inference_sessions_p"  # storage.orm.telemetry.SESSION_PARTITION_PREFIX


def _partition_ddl(day: datetime) -> str:
    # A frozen copy of storage.repos.telemetry.partition_ddl.
    end = day + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS {PREFIX}{day:%Y%m%d} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{end.isoformat()}')"
    )


def _rename_away(bind: sa.Connection) -> None:
    bind.exec_driver_sql(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
    bind.exec_driver_sql(f"ALTER TABLE {OLD} RENAME CONSTRAINT {PK} TO {PK}_old")
    bind.exec_driver_sql(f"ALTER INDEX {INDEX} RENAME TO {INDEX}_old")


def _sqlite_rekey(columns: list[str]) -> None:
    # The table is rebuilt; SQLite checks the 0010 trigger on orgs, which names it, at the
    # rename, so the trigger goes for the while.
    op.execute(f"DROP TRIGGER {TRIGGER}")
    with op.batch_alter_table(TABLE, recreate="always") as batch:
        batch.drop_constraint(PK, type_="primary")
        batch.create_primary_key(PK, columns)
    op.execute(f"CREATE TRIGGER {TRIGGER} AFTER DELETE ON orgs BEGIN {DELETE_SESSIONS}; END")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        _sqlite_rekey(["org_id", "event_id", "occurred_at"])
        return
    _rename_away(bind)
    bind.exec_driver_sql(
        f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (occurred_at)"
    )
    bind.exec_driver_sql(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {PK} PRIMARY KEY (org_id, event_id, occurred_at)"
    )
    bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} (scope, occurred_at)")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {today, today + timedelta(days=1)}
    stored = bind.exec_driver_sql(
        f"SELECT DISTINCT date_trunc('day', occurred_at AT TIME ZONE 'UTC') FROM {OLD}"
    )
    days.update(d.replace(tzinfo=UTC) for (d,) in stored)
    for day in sorted(days):
        bind.exec_driver_sql(_partition_ddl(day))
    bind.exec_driver_sql(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")
    bind.exec_driver_sql(f"DROP TABLE {OLD}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        bind.exec_driver_sql(
            f"DELETE FROM {TABLE} WHERE rowid NOT IN (SELECT max(rowid) FROM {TABLE} "
            "GROUP BY org_id, event_id)"
        )
        _sqlite_rekey(["org_id", "event_id"])
        return
    _rename_away(bind)
    bind.exec_driver_sql(
        f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    bind.exec_driver_sql(f"ALTER TABLE {TABLE} ADD CONSTRAINT {PK} PRIMARY KEY (org_id, event_id)")
    bind.exec_driver_sql(f"CREATE INDEX {INDEX} ON {TABLE} (scope, occurred_at)")
    bind.exec_driver_sql(
        f"INSERT INTO {TABLE} SELECT DISTINCT ON (org_id, event_id) * FROM {OLD} "
        "ORDER BY org_id, event_id, received_at DESC, occurred_at DESC"
    )
    bind.exec_driver_sql(f"DROP TABLE {OLD}")  # and its partitions
