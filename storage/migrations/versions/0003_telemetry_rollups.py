"""Telemetry: hourly inference rollups, raw sessions keyed by (org_id, event_id), devices may
report 'unhealthy'.

`inference_sessions` and `devices` are dropped and recreated rather than altered: nothing
wrote to them before this revision (the TelemetryService RPCs answered UNIMPLEMENTED), and
recreating avoids SQLite's table-rebuild dance for a primary-key and CHECK change.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TIMESTAMP = sa.DateTime(timezone=True)

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _devices(health_statuses: str) -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("os_version", sa.String(length=64), nullable=False),
        sa.Column("runtime_version", sa.String(length=64), nullable=False),
        sa.Column("health_status", sa.String(length=16), nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            f"health_status IN ({health_statuses})", name=op.f("ck_devices_health_status")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_devices_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("org_id", "device_id", name=op.f("uq_devices_org_id_device_id")),
    )


def _session_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("ttft_ms", sa.Double(), nullable=True),
        sa.Column("tokens_per_second", sa.Double(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("received_at", TIMESTAMP, nullable=False),
    ]


def _session_constraints() -> list[sa.Constraint]:
    return [
        sa.CheckConstraint("status IN ('ok', 'error')", name=op.f("ck_inference_sessions_status")),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_inference_sessions_org_id_orgs"),
            ondelete="CASCADE",
        ),
    ]


def _drop_sessions() -> None:
    op.drop_index(
        op.f("ix_inference_sessions_org_id_model_id_occurred_at"), table_name="inference_sessions"
    )
    op.drop_table("inference_sessions")


def _sessions_index() -> None:
    op.create_index(
        op.f("ix_inference_sessions_org_id_model_id_occurred_at"),
        "inference_sessions",
        ["org_id", "model_id", "occurred_at"],
        unique=False,
    )


def upgrade() -> None:
    op.drop_table("devices")
    _devices("'healthy', 'degraded', 'unhealthy', 'offline', 'unknown'")

    _drop_sessions()
    op.create_table(
        "inference_sessions",
        *_session_columns(),
        *_session_constraints(),
        sa.PrimaryKeyConstraint("org_id", "event_id", name=op.f("pk_inference_sessions")),
    )
    _sessions_index()

    op.create_table(
        "inference_rollups",
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("hour", TIMESTAMP, nullable=False),
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
            name=op.f("fk_inference_rollups_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "org_id",
            "model_id",
            "version",
            "device_type",
            "hour",
            name=op.f("pk_inference_rollups"),
        ),
    )
    op.create_index(op.f("ix_inference_rollups_hour"), "inference_rollups", ["hour"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_inference_rollups_hour"), table_name="inference_rollups")
    op.drop_table("inference_rollups")

    _drop_sessions()
    op.create_table(
        "inference_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        *_session_columns(),
        *_session_constraints(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_sessions")),
        sa.UniqueConstraint(
            "org_id", "event_id", name=op.f("uq_inference_sessions_org_id_event_id")
        ),
    )
    _sessions_index()

    op.drop_table("devices")
    _devices("'healthy', 'degraded', 'offline', 'unknown'")
