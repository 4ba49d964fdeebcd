"""manifest_changes keeps one row per name: the revision it last changed at.

0013 logged a row per (revision, name) and, every 1000 revisions of a scope, raised its
floor to the last 1000 and deleted the rows below: a stored manifest more than 1000
revisions behind (an org written 1000 times between two GetManifests, say a bulk import)
could no longer be patched, and its next build read one row per model name instead.

Now a write re-marks the name's row pending (revision NULL) instead of adding one, and
the bump stamps it as before, so the log holds each name once, with the last revision that
changed it: "changed after revision S" is still "stamped after S, or pending", for any S,
and the log is as large as the names the scope has written. A name gone from its scope
(no Model, no variant of that name left in it) keeps its row as a tombstone, which is what
tells older manifests to drop its entry. Those are the only rows pruned: every 1000
revisions, tombstones stamped TOMBSTONE_REVISIONS or more revisions back are deleted and
the floor raised to that point (only if any were), so a scope that deletes nothing keeps a
complete log from the floor 0013 left, and one that does is complete for the last
TOMBSTONE_REVISIONS revisions at least (0013: the last 1000).

Existing rows collapse to one per (scope, name): pending if any was, else the newest.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27
"""

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the column holding the manifest name of its rows
NAME_OF = {"models": "model_id", "catalog_variants": "name"}
EVENTS = {"INSERT": ("NEW",), "UPDATE": ("OLD", "NEW"), "DELETE": ("OLD",)}
PRUNE_EVERY = 1000
TOMBSTONE_REVISIONS = 10_000

# scope table -> (its rows of the log, with NEW for the scope's row; a log row `c` of
# that scope whose name no row of the scope has any longer)
SCOPES = {
    "orgs": (
        "org_id = NEW.id",
        "NOT EXISTS (SELECT 1 FROM models m WHERE m.org_id = c.org_id AND m.model_id = c.name) "
        "AND NOT EXISTS (SELECT 1 FROM catalog_variants v "
        "WHERE v.org_id = c.org_id AND v.name = c.name)",
    ),
    "catalog_state": (
        "org_id IS NULL",
        "NOT EXISTS (SELECT 1 FROM catalog_variants v WHERE v.org_id IS NULL AND v.name = c.name)",
    ),
}


def _stamp_statements(table: str) -> list[str]:
    """Stamp the scope's pending rows with its new revision; every PRUNE_EVERY revisions,
    drop old tombstones and raise the floor past them."""
    rows, gone = SCOPES[table]
    # A multiple of PRUNE_EVERY (integer division; no % for psycopg to parse).
    due = f"NEW.revision = NEW.revision / {PRUNE_EVERY} * {PRUNE_EVERY}"
    cutoff = f"NEW.revision - {TOMBSTONE_REVISIONS}"
    old_tombstones = (
        f"SELECT 1 FROM manifest_changes c WHERE c.{rows} AND c.revision <= {cutoff} AND {gone}"
    )
    return [
        f"UPDATE manifest_changes SET revision = NEW.revision WHERE {rows} AND revision IS NULL",
        f"UPDATE {table} SET manifest_changes_floor = {cutoff} WHERE id = NEW.id AND {due} "
        f"AND manifest_changes_floor < {cutoff} AND EXISTS ({old_tombstones})",
        f"DELETE FROM manifest_changes WHERE {due} AND id IN "
        f"({old_tombstones.replace('SELECT 1', 'SELECT c.id', 1)})",
    ]


def _sqlite_log(table: str, row: str) -> str:
    """Mark (org_id, name) of `row` pending: its row re-marked, else one added (SQLite's
    IS: null-safe equals)."""
    name = f"{row}.{NAME_OF[table]}"
    match = f"org_id IS {row}.org_id AND name = {name}"
    return (
        f"UPDATE manifest_changes SET revision = NULL WHERE {match} AND revision IS NOT NULL; "
        f"INSERT INTO manifest_changes (org_id, name) SELECT {row}.org_id, {name} "
        f"WHERE NOT EXISTS (SELECT 1 FROM manifest_changes WHERE {match})"
    )


PG_LOG_FUNCTION = """
CREATE OR REPLACE FUNCTION manifest_log(p_org varchar, p_name varchar) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF p_org IS NULL THEN
    UPDATE manifest_changes SET revision = NULL
     WHERE org_id IS NULL AND name = p_name AND revision IS NOT NULL;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM manifest_changes
                                 WHERE org_id IS NULL AND name = p_name) THEN
      INSERT INTO manifest_changes (org_id, name) VALUES (NULL, p_name);
    END IF;
  ELSE
    UPDATE manifest_changes SET revision = NULL
     WHERE org_id = p_org AND name = p_name AND revision IS NOT NULL;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM manifest_changes
                                 WHERE org_id = p_org AND name = p_name) THEN
      INSERT INTO manifest_changes (org_id, name) VALUES (p_org, p_name);
    END IF;
  END IF;
END $$
"""

# Keep one row per (scope, name): the pending one, else the newest (then the highest id).
# One statement per kind of scope, so each join can use ix_manifest_changes_name.
_NEWER = (
    "(n.revision IS NULL AND (m.revision IS NOT NULL OR n.id > m.id)) "
    "OR (m.revision IS NOT NULL AND (n.revision > m.revision "
    "OR (n.revision = m.revision AND n.id > m.id)))"
)
COLLAPSE = [
    "DELETE FROM manifest_changes WHERE id IN (SELECT m.id FROM manifest_changes m "
    f"JOIN manifest_changes n ON {join} AND n.name = m.name WHERE {_NEWER})"
    for join in ("n.org_id = m.org_id", "n.org_id IS NULL AND m.org_id IS NULL")
]


def upgrade() -> None:
    op.create_index("ix_manifest_changes_name", "manifest_changes", ["org_id", "name"])
    for statement in COLLAPSE:
        op.execute(statement)
    _replace_triggers(PG_LOG_FUNCTION, _sqlite_log, _stamp_statements)


def downgrade() -> None:
    """0013's triggers again; the collapsed rows stay (each name's newest change is all a
    reader of either log needs)."""
    previous = _revision_0013()
    _replace_triggers(
        previous.PG_LOG_FUNCTION.replace("CREATE ", "CREATE OR REPLACE ", 1),
        previous._sqlite_log,
        previous._stamp_statements,
    )
    op.drop_index("ix_manifest_changes_name", table_name="manifest_changes")


def _replace_triggers(
    pg_log_function: str,
    sqlite_log: Callable[[str, str], str],
    stamp_statements: Callable[[str], list[str]],
) -> None:
    """Replace the log's triggers (created by 0013) with ones built from these: on
    PostgreSQL the functions the triggers call, on SQLite the triggers themselves."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(pg_log_function)
        for table in SCOPES:
            body = "".join(f"  {statement};\n" for statement in stamp_statements(table))
            bind.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION {table}_manifest_stamp() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$\nBEGIN\n{body}  RETURN NULL;\nEND $$"
            )
        return
    for table in NAME_OF:
        for event, rows in EVENTS.items():
            trigger = f"trg_{table}_manifest_log_{event.lower()}"
            body = "; ".join(sqlite_log(table, row) for row in rows)
            bind.exec_driver_sql(f"DROP TRIGGER {trigger}")
            bind.exec_driver_sql(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} BEGIN {body}; END"
            )
    for table in SCOPES:
        body = "; ".join(stamp_statements(table))
        bind.exec_driver_sql(f"DROP TRIGGER trg_{table}_manifest_stamp")
        bind.exec_driver_sql(
            f"CREATE TRIGGER trg_{table}_manifest_stamp AFTER UPDATE OF revision ON {table} "
            f"BEGIN {body}; END"
        )


def _revision_0013() -> ModuleType:
    path = Path(__file__).with_name("0013_manifest_changes.py")
    spec = importlib.util.spec_from_file_location("_migration_0013", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
