"""Telemetry: 10-minute inference rollups, read for the partial hours at a window's edges.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_rollups_10m",
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("bucket", TIMESTAMP, nullable=False),
        sa.Column("session_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum", sa.Double(), nullable=False),
        sa.Column("latency_sketch", sa.LargeBinary(), nullable=False),
        sa.Column("ttft_count", sa.BigInteger(), nullable=False),
        sa.Column("ttft_sum", sa.Double(), nullable=False),
        sa.Column("ttft_sketch", sa.LargeBinary(), nullable=False),
        sa.Column("tps_count", sa.BigInteger(), nullable=False),
        sa.Column("tps_sum", sa.Double(), nullable=False),
        sa.Column("tps_sketch", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_inference_rollups_10m_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "org_id",
            "model_id",
            "version",
            "device_type",
            "bucket",
            name=op.f("pk_inference_rollups_10m"),
        ),
    )
    op.create_index(
        op.f("ix_inference_rollups_10m_bucket"), "inference_rollups_10m", ["bucket"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_inference_rollups_10m_bucket"), table_name="inference_rollups_10m")
    op.drop_table("inference_rollups_10m")
