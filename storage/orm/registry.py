"""The org's internal model registry: models, their versions, per-device configs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.orm.base import ID_LENGTH, Base, CreatedAt, Json, Timestamps, UuidPk
from storage.orm.tenancy import SLUG_LENGTH, STATE_LENGTH, Org, org_fk

if TYPE_CHECKING:
    from storage.orm.catalog import CatalogVersion

LIFECYCLE_STATUSES = ("draft", "published")


class Model(UuidPk, Timestamps, Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("org_id", "model_id"),
        # ListModels on large orgs (migration 0004): newest-first paging, the framework
        # filter, `tags @> '["x"]'` (GIN on PostgreSQL) and `ILIKE '%text%'` search
        # (pg_trgm GINs on PostgreSQL; plain, unused indexes on SQLite).
        Index("ix_models_org_id_created_at", "org_id", "created_at", "id"),
        Index("ix_models_org_id_framework", "org_id", "framework"),
        Index(
            "ix_models_tags",
            "tags",
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
        ),
        Index(
            "ix_models_description_trgm",
            "description",
            postgresql_using="gin",
            postgresql_ops={"description": "gin_trgm_ops"},
        ),
    )

    org_id: Mapped[str] = org_fk(index=False)
    # The org-unique slug used in resource names (models/{model_id}); not the primary key.
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    framework: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(Json, default=list)
    enabled: Mapped[bool] = mapped_column(default=True)
    # Per-model etag source; bump it in the same transaction as every visible change.
    revision: Mapped[int] = mapped_column(default=1)

    org: Mapped[Org] = relationship(back_populates="models")
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )
    optimized_configs: Mapped[list[OptimizedConfig]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )


# Search on model_id (pg_trgm GIN on PostgreSQL) indexes lower(model_id), the expression
# only the search queries: on model_id itself the planner used it for equality too
# (migration 0016).
Index(
    "ix_models_model_id_trgm",
    func.lower(Model.__table__.c.model_id).label("model_id_lower"),
    postgresql_using="gin",
    postgresql_ops={"model_id_lower": "gin_trgm_ops"},
)


class ModelVersion(UuidPk, Timestamps, Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_uid", "version"),
        CheckConstraint("lifecycle_status IN ('draft', 'published')", name="lifecycle_status"),
        # The monthly quota count (storage.repos.versions.created_since): the org's rows of
        # this month only, from the index alone.
        Index("ix_model_versions_org_id_created_at", "org_id", "created_at"),
    )

    # The model's org (models never move), for the quota count: set from the model.
    org_id: Mapped[str] = org_fk(index=False)

    # Named *_uid because `model_id` means the slug everywhere else in the schema.
    model_uid: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("models.id", ondelete="CASCADE")
    )
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    lifecycle_status: Mapped[str] = mapped_column(String(STATE_LENGTH), default="draft")
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    published_at: Mapped[datetime | None]

    model: Mapped[Model] = relationship(back_populates="versions")
    catalog_versions: Mapped[list[CatalogVersion]] = relationship(
        back_populates="model_version", cascade="all, delete-orphan", passive_deletes=True
    )


class OptimizedConfig(UuidPk, CreatedAt, Base):
    """An optimisation result for one model on one device type; each put is a new revision."""

    __tablename__ = "optimized_configs"
    __table_args__ = (UniqueConstraint("model_uid", "device_type", "revision"),)

    org_id: Mapped[str] = org_fk()
    model_uid: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("models.id", ondelete="CASCADE")
    )
    device_type: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    revision: Mapped[int]
    config: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)

    model: Mapped[Model] = relationship(back_populates="optimized_configs")
