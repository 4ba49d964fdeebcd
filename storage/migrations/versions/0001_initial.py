"""Initial schema: every table of storage.orm as of the first release.

Types are spelled out here rather than imported from storage.orm so this file keeps
describing the schema it created even after the models change.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

TIMESTAMP = sa.DateTime(timezone=True)
# storage.orm.base.Json: JSONB on PostgreSQL, JSON (text) elsewhere.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("model_versions_monthly", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orgs")),
        sa.UniqueConstraint("name", name=op.f("uq_orgs_name")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_api_keys_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_key_id"), "api_keys", ["key_id"], unique=True)
    op.create_index(op.f("ix_api_keys_org_id"), "api_keys", ["org_id"], unique=False)
    op.create_table(
        "catalog_variants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("family", sa.String(length=128), nullable=False),
        sa.Column("task_taxonomy", JSON, nullable=False),
        sa.Column("parameter_count", sa.BigInteger(), nullable=True),
        sa.Column("license", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_catalog_variants_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_variants")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_catalog_variants_org_id_name")),
    )
    op.create_index(
        "uq_catalog_variants_blessed_name",
        "catalog_variants",
        ["name"],
        unique=True,
        sqlite_where=sa.text("org_id IS NULL"),
        postgresql_where=sa.text("org_id IS NULL"),
    )
    op.create_table(
        "device_profile_overrides",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("profile", JSON, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_device_profile_overrides_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_profile_overrides")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_device_profile_overrides_org_id_name")),
    )
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
            "health_status IN ('healthy', 'degraded', 'offline', 'unknown')",
            name=op.f("ck_devices_health_status"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_devices_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("org_id", "device_id", name=op.f("uq_devices_org_id_device_id")),
    )
    op.create_table(
        "inference_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
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
        sa.CheckConstraint("status IN ('ok', 'error')", name=op.f("ck_inference_sessions_status")),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_inference_sessions_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_sessions")),
        sa.UniqueConstraint(
            "org_id", "event_id", name=op.f("uq_inference_sessions_org_id_event_id")
        ),
    )
    op.create_index(
        op.f("ix_inference_sessions_org_id_model_id_occurred_at"),
        "inference_sessions",
        ["org_id", "model_id", "occurred_at"],
        unique=False,
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("framework", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_models_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("org_id", "model_id", name=op.f("uq_models_org_id_model_id")),
    )
    op.create_table(
        "training_updates",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=255), nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_training_updates_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_updates")),
        sa.UniqueConstraint("org_id", "event_id", name=op.f("uq_training_updates_org_id_event_id")),
    )
    op.create_index(
        op.f("ix_training_updates_org_id_model_id_version_occurred_at"),
        "training_updates",
        ["org_id", "model_id", "version", "occurred_at"],
        unique=False,
    )
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("declared_size", sa.BigInteger(), nullable=True),
        sa.Column("declared_sha256", sa.String(length=64), nullable=True),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("temp_key", sa.String(length=1024), nullable=False),
        sa.Column("multipart_upload_id", sa.String(length=1024), nullable=True),
        sa.Column("committed_bytes", sa.BigInteger(), nullable=False),
        sa.Column("parts", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "state IN ('open', 'committed', 'aborted', 'expired')",
            name=op.f("ck_upload_sessions_state"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_upload_sessions_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload_sessions")),
    )
    op.create_index(op.f("ix_upload_sessions_org_id"), "upload_sessions", ["org_id"], unique=False)
    op.create_index(
        op.f("ix_upload_sessions_state_expires_at"),
        "upload_sessions",
        ["state", "expires_at"],
        unique=False,
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("model_uid", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("lifecycle_status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "lifecycle_status IN ('draft', 'published')",
            name=op.f("ck_model_versions_lifecycle_status"),
        ),
        sa.ForeignKeyConstraint(
            ["model_uid"],
            ["models.id"],
            name=op.f("fk_model_versions_model_uid_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint(
            "model_uid", "version", name=op.f("uq_model_versions_model_uid_version")
        ),
    )
    op.create_table(
        "optimized_configs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("model_uid", sa.String(length=36), nullable=False),
        sa.Column("device_type", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["model_uid"],
            ["models.id"],
            name=op.f("fk_optimized_configs_model_uid_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_optimized_configs_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimized_configs")),
        sa.UniqueConstraint(
            "model_uid",
            "device_type",
            "revision",
            name=op.f("uq_optimized_configs_model_uid_device_type_revision"),
        ),
    )
    op.create_index(
        op.f("ix_optimized_configs_org_id"), "optimized_configs", ["org_id"], unique=False
    )
    op.create_table(
        "catalog_versions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("variant_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("lifecycle", sa.String(length=16), nullable=False),
        sa.Column("model_version_id", sa.String(length=36), nullable=True),
        sa.Column("deprecated_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "lifecycle IN ('active', 'deprecated')", name=op.f("ck_catalog_versions_lifecycle")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_catalog_versions_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["variant_id"],
            ["catalog_variants.id"],
            name=op.f("fk_catalog_versions_variant_id_catalog_variants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_versions")),
        sa.UniqueConstraint(
            "variant_id", "version", name=op.f("uq_catalog_versions_variant_id_version")
        ),
    )
    op.create_index(
        op.f("ix_catalog_versions_model_version_id"),
        "catalog_versions",
        ["model_version_id"],
        unique=False,
    )
    op.create_table(
        "artifact_packages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("catalog_version_id", sa.String(length=36), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("quantization", sa.String(length=32), nullable=False),
        sa.Column("runtime", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "source IN ('upload', 'conversion')", name=op.f("ck_artifact_packages_source")
        ),
        sa.ForeignKeyConstraint(
            ["catalog_version_id"],
            ["catalog_versions.id"],
            name=op.f("fk_artifact_packages_catalog_version_id_catalog_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact_packages")),
    )
    op.create_index(
        op.f("ix_artifact_packages_catalog_version_id"),
        "artifact_packages",
        ["catalog_version_id"],
        unique=False,
    )
    op.create_table(
        "artifact_resources",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("package_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("required", sa.Boolean(), nullable=False),
        sa.Column("load_order", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["artifact_packages.id"],
            name=op.f("fk_artifact_resources_package_id_artifact_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact_resources")),
    )
    op.create_index(
        op.f("ix_artifact_resources_package_id"), "artifact_resources", ["package_id"], unique=False
    )
    op.create_index(
        op.f("ix_artifact_resources_storage_key"),
        "artifact_resources",
        ["storage_key"],
        unique=False,
    )
    op.create_table(
        "conversion_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("source_resource_id", sa.String(length=36), nullable=True),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("targets", JSON, nullable=False),
        sa.Column("options", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", JSON, nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_conversion_jobs_state"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_conversion_jobs_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["source_resource_id"],
            ["artifact_resources.id"],
            name=op.f("fk_conversion_jobs_source_resource_id_artifact_resources"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversion_jobs")),
    )
    op.create_index(op.f("ix_conversion_jobs_org_id"), "conversion_jobs", ["org_id"], unique=False)
    op.create_index(
        op.f("ix_conversion_jobs_source_resource_id"),
        "conversion_jobs",
        ["source_resource_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_conversion_jobs_state_created_at"),
        "conversion_jobs",
        ["state", "created_at"],
        unique=False,
    )
    op.create_table(
        "conversion_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("fraction", sa.Double(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["conversion_jobs.id"],
            name=op.f("fk_conversion_events_job_id_conversion_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversion_events")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_conversion_events_job_id_seq")),
    )


def downgrade() -> None:
    op.drop_table("conversion_events")
    op.drop_index(op.f("ix_conversion_jobs_state_created_at"), table_name="conversion_jobs")
    op.drop_index(op.f("ix_conversion_jobs_source_resource_id"), table_name="conversion_jobs")
    op.drop_index(op.f("ix_conversion_jobs_org_id"), table_name="conversion_jobs")
    op.drop_table("conversion_jobs")
    op.drop_index(op.f("ix_artifact_resources_storage_key"), table_name="artifact_resources")
    op.drop_index(op.f("ix_artifact_resources_package_id"), table_name="artifact_resources")
    op.drop_table("artifact_resources")
    op.drop_index(op.f("ix_artifact_packages_catalog_version_id"), table_name="artifact_packages")
    op.drop_table("artifact_packages")
    op.drop_index(op.f("ix_catalog_versions_model_version_id"), table_name="catalog_versions")
    op.drop_table("catalog_versions")
    op.drop_index(op.f("ix_optimized_configs_org_id"), table_name="optimized_configs")
    op.drop_table("optimized_configs")
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_upload_sessions_state_expires_at"), table_name="upload_sessions")
    op.drop_index(op.f("ix_upload_sessions_org_id"), table_name="upload_sessions")
    op.drop_table("upload_sessions")
    op.drop_index(
        op.f("ix_training_updates_org_id_model_id_version_occurred_at"),
        table_name="training_updates",
    )
    op.drop_table("training_updates")
    op.drop_table("models")
    op.drop_index(
        op.f("ix_inference_sessions_org_id_model_id_occurred_at"), table_name="inference_sessions"
    )
    op.drop_table("inference_sessions")
    op.drop_table("devices")
    op.drop_table("device_profile_overrides")
    op.drop_index("uq_catalog_variants_blessed_name", table_name="catalog_variants")
    op.drop_table("catalog_variants")
    op.drop_index(op.f("ix_api_keys_org_id"), table_name="api_keys")
    op.drop_index(op.f("ix_api_keys_key_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("orgs")
