"""catalog_variants.content_revision, kept by triggers: the key of the manifest's cached bytes.

GetManifest caches the serialized subtree of each variant (its versions, packages and
resources) and must know, cheaply and for certain, when that subtree changed. Every insert,
update or delete of a catalog version, package or resource bumps its variant's
content_revision in the same transaction. Triggers rather than application code, so no
writer can forget it: uploads, conversions, catalog import, deprecation, DeleteVersion and
DeleteModel (whose deletes cascade in the database), test helpers, hand-written SQL.

Rows deleted by a cascade from their catalog version find no parent any more; the version's
own trigger has bumped the variant already. A later migration that rebuilds one of these
tables on SQLite (batch mode) must drop these triggers first and create them again after.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> SQL giving the variant id of a row, with {row} standing for NEW or OLD
VARIANT_OF = {
    "catalog_versions": "{row}.variant_id",
    "artifact_packages": (
        "(SELECT variant_id FROM catalog_versions WHERE id = {row}.catalog_version_id)"
    ),
    "artifact_resources": (
        "(SELECT cv.variant_id FROM artifact_packages p"
        " JOIN catalog_versions cv ON cv.id = p.catalog_version_id"
        " WHERE p.id = {row}.package_id)"
    ),
}
BUMP = "UPDATE catalog_variants SET content_revision = content_revision + 1 WHERE id IN ({ids})"
EVENTS = {"INSERT": ("NEW",), "UPDATE": ("OLD", "NEW"), "DELETE": ("OLD",)}


def _bump(table: str, rows: Sequence[str]) -> str:
    return BUMP.format(ids=", ".join(VARIANT_OF[table].format(row=r) for r in rows))


def _sqlite_name(table: str, event: str) -> str:
    return f"trg_{table}_content_{event.lower()}"


def _pg_function(table: str) -> str:
    return f"{table}_content_bump"


def upgrade() -> None:
    op.add_column(
        "catalog_variants",
        sa.Column("content_revision", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table in VARIANT_OF:
            fn = _pg_function(table)
            bind.exec_driver_sql(
                f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                "BEGIN\n"
                f"  IF TG_OP = 'INSERT' THEN {_bump(table, EVENTS['INSERT'])};\n"
                f"  ELSIF TG_OP = 'UPDATE' THEN {_bump(table, EVENTS['UPDATE'])};\n"
                f"  ELSE {_bump(table, EVENTS['DELETE'])};\n"
                "  END IF;\n"
                "  RETURN NULL;\n"
                "END $$"
            )
            bind.exec_driver_sql(
                f"CREATE TRIGGER trg_{table}_content AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {fn}()"
            )
        return
    for table in VARIANT_OF:
        for event, rows in EVENTS.items():
            bind.exec_driver_sql(
                f"CREATE TRIGGER {_sqlite_name(table, event)} AFTER {event} ON {table} "
                f"BEGIN {_bump(table, rows)}; END"
            )


def downgrade() -> None:
    bind = op.get_bind()
    for table in VARIANT_OF:
        if bind.dialect.name == "postgresql":
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS trg_{table}_content ON {table}")
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {_pg_function(table)}()")
        else:
            for event in EVENTS:
                bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {_sqlite_name(table, event)}")
    with op.batch_alter_table("catalog_variants") as batch:
        batch.drop_column("content_revision")
