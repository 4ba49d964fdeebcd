"""manifest_build_claims: one server at a time builds a caller's manifest after writes.

Every server builds the manifests of the orgs written through it in the background when
their next build would be large, and every server looks at the blessed catalog's. With
writes spread over several servers, or an import noticed by all of them, each made the
same build (serializing the same variants, storing the same rows). A server now claims the
build first and the others skip it; see storage.orm.catalog.ManifestBuildClaim.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "manifest_build_claims",
        sa.Column("scope", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("holder", sa.String(length=36), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_manifest_build_claims_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_manifest_build_claims")),
    )


def downgrade() -> None:
    op.drop_table("manifest_build_claims")
