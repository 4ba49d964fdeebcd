"""manifest_changes: which model names' manifest entries each revision changed, kept by triggers.

A rebuild after a change read the caller's whole manifest index (one row per model name,
10,000s) to find the few entries that changed: 60-110 ms of the build for 10,000 models.
With this log it reads the names changed since the previous build's stamp and only their
rows; see storage.orm.catalog.ManifestChange.

Triggers rather than application code, as in 0008, so no writer can forget one: every
insert, update or delete of a Model or catalog variant logs (org_id, name) as pending
(revision NULL), once per name and transaction; a variant's versions, packages and
resources reach it through 0008's content_revision bump, an update of the variant row.
Bumping an org's revision, or the blessed catalog's, stamps that scope's pending rows with
the new revision. Rows written after the bump in the same transaction stay pending until
the next bump; readers take pending rows as changed, so they are never missed.

orgs.manifest_changes_floor and catalog_state.manifest_changes_floor: the log holds every
change after that revision; it starts at the revision each has now, since nothing before
this migration was logged. The same triggers keep the log bounded: every KEPT_REVISIONS
revisions of a scope they raise its floor to the last KEPT_REVISIONS and delete the rows
below it, whether or not anyone reads the scope's manifests.

No foreign key to orgs: a Model deleted by its org's cascade logs a row for the org being
deleted, which a foreign key would refuse (rows of a deleted org are never read).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the column holding the manifest name of its rows
NAME_OF = {"models": "model_id", "catalog_variants": "name"}
EVENTS = {"INSERT": ("NEW",), "UPDATE": ("OLD", "NEW"), "DELETE": ("OLD",)}
# scope table -> its rows of the log, with NEW for the scope's row
STAMPS = {
    "orgs": "org_id = NEW.id",
    "catalog_state": "org_id IS NULL",
}
KEPT_REVISIONS = 1000


def _stamp_statements(table: str) -> list[str]:
    """Stamp the scope's pending rows with its new revision; every KEPT_REVISIONS, prune."""
    rows = STAMPS[table]
    # A multiple of KEPT_REVISIONS (integer division on both; no % for psycopg to parse).
    prune = f"NEW.revision = NEW.revision / {KEPT_REVISIONS} * {KEPT_REVISIONS}"
    return [
        f"UPDATE manifest_changes SET revision = NEW.revision WHERE {rows} AND revision IS NULL",
        f"UPDATE {table} SET manifest_changes_floor = NEW.revision - {KEPT_REVISIONS} "
        f"WHERE id = NEW.id AND {prune}",
        f"DELETE FROM manifest_changes WHERE {prune} AND {rows} "
        f"AND revision <= NEW.revision - {KEPT_REVISIONS}",
    ]


def _sqlite_log(table: str, row: str) -> str:
    """Log (org_id, name) of `row` unless already pending (SQLite's IS: null-safe equals)."""
    name = f"{row}.{NAME_OF[table]}"
    return (
        f"INSERT INTO manifest_changes (org_id, name) SELECT {row}.org_id, {name} "
        "WHERE NOT EXISTS (SELECT 1 FROM manifest_changes "
        f"WHERE org_id IS {row}.org_id AND revision IS NULL AND name = {name})"
    )


PG_LOG_FUNCTION = """
CREATE FUNCTION manifest_log(p_org varchar, p_name varchar) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF p_org IS NULL THEN
    IF NOT EXISTS (SELECT 1 FROM manifest_changes
                   WHERE org_id IS NULL AND revision IS NULL AND name = p_name) THEN
      INSERT INTO manifest_changes (org_id, name) VALUES (NULL, p_name);
    END IF;
  ELSIF NOT EXISTS (SELECT 1 FROM manifest_changes
                    WHERE org_id = p_org AND revision IS NULL AND name = p_name) THEN
    INSERT INTO manifest_changes (org_id, name) VALUES (p_org, p_name);
  END IF;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "manifest_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manifest_changes")),
    )
    op.create_index("ix_manifest_changes_scope", "manifest_changes", ["org_id", "revision", "name"])
    for table in STAMPS:
        op.add_column(
            table,
            sa.Column(
                "manifest_changes_floor",
                sa.BigInteger(),
                server_default=sa.text("0"),
                nullable=False,
            ),
        )
        op.execute(f"UPDATE {table} SET manifest_changes_floor = revision")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(PG_LOG_FUNCTION)
        for table, column in NAME_OF.items():
            bind.exec_driver_sql(
                f"CREATE FUNCTION {table}_manifest_log() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                f"  IF TG_OP <> 'INSERT' THEN PERFORM manifest_log(OLD.org_id, OLD.{column});\n"
                "  END IF;\n"
                f"  IF TG_OP <> 'DELETE' THEN PERFORM manifest_log(NEW.org_id, NEW.{column});\n"
                "  END IF;\n"
                "  RETURN NULL;\n"
                "END $$"
            )
            bind.exec_driver_sql(
                f"CREATE TRIGGER trg_{table}_manifest_log AFTER INSERT OR UPDATE OR DELETE "
                f"ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_manifest_log()"
            )
        for table in STAMPS:
            body = "".join(f"  {statement};\n" for statement in _stamp_statements(table))
            bind.exec_driver_sql(
                f"CREATE FUNCTION {table}_manifest_stamp() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                f"BEGIN\n{body}  RETURN NULL;\nEND $$"
            )
            bind.exec_driver_sql(
                f"CREATE TRIGGER trg_{table}_manifest_stamp AFTER UPDATE OF revision ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {table}_manifest_stamp()"
            )
        return
    for table in NAME_OF:
        for event, rows in EVENTS.items():
            body = "; ".join(_sqlite_log(table, row) for row in rows)
            bind.exec_driver_sql(
                f"CREATE TRIGGER trg_{table}_manifest_log_{event.lower()} AFTER {event} "
                f"ON {table} BEGIN {body}; END"
            )
    for table in STAMPS:
        body = "; ".join(_stamp_statements(table))
        bind.exec_driver_sql(
            f"CREATE TRIGGER trg_{table}_manifest_stamp AFTER UPDATE OF revision ON {table} "
            f"BEGIN {body}; END"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in NAME_OF:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_{table}_manifest_log ON {table}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {table}_manifest_log()")
        for table in STAMPS:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_{table}_manifest_stamp ON {table}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {table}_manifest_stamp()")
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS manifest_log(varchar, varchar)")
    else:
        for table in NAME_OF:
            for event in EVENTS:
                name = f"trg_{table}_manifest_log_{event.lower()}"
                bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        for table in STAMPS:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_{table}_manifest_stamp")
    for table in STAMPS:
        # SQLite >= 3.35 drops a column in place; batch mode would copy orgs, and dropping
        # the old copy would cascade to every row that references it.
        op.execute(f"ALTER TABLE {table} DROP COLUMN manifest_changes_floor")
    op.drop_index("ix_manifest_changes_scope", table_name="manifest_changes")
    op.drop_table("manifest_changes")
