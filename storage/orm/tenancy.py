"""Tenants and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.orm.base import ID_LENGTH, Base, CreatedAt, UuidPk

if TYPE_CHECKING:
    from storage.orm.registry import Model

SLUG_LENGTH = 128
LABEL_LENGTH = 255
STATE_LENGTH = 16


def org_fk(*, index: bool = True) -> Mapped[str]:
    """The tenant column every org-owned table carries; deleting an org removes its data.

    Pass index=False where a composite index already starts with org_id.
    """
    return mapped_column(String(ID_LENGTH), ForeignKey("orgs.id", ondelete="CASCADE"), index=index)


class Org(UuidPk, CreatedAt, Base):
    __tablename__ = "orgs"

    name: Mapped[str] = mapped_column(String(SLUG_LENGTH), unique=True)
    plan: Mapped[str] = mapped_column(String(64), default="free")
    model_versions_monthly: Mapped[int] = mapped_column(default=100)
    # Bumped in the same transaction as any change that shows in the org's manifest, so
    # GetManifest can answer an etag check without building the manifest.
    revision: Mapped[int] = mapped_column(default=1)
    # The org's ManifestChange rows are complete after this revision (older ones pruned);
    # those of names the org still has, after manifest_live_floor (migration 0021).
    manifest_changes_floor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    manifest_live_floor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="org", cascade="all, delete-orphan", passive_deletes=True
    )
    models: Mapped[list[Model]] = relationship(
        back_populates="org", cascade="all, delete-orphan", passive_deletes=True
    )


class ApiKey(UuidPk, CreatedAt, Base):
    __tablename__ = "api_keys"

    org_id: Mapped[str] = org_fk()
    # Public half of the key, looked up on every request; the secret half is only hashed.
    key_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    salt: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(default=False)
    label: Mapped[str] = mapped_column(String(LABEL_LENGTH), default="")
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    org: Mapped[Org] = relationship(back_populates="api_keys")
