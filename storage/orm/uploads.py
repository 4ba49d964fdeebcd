"""Resumable upload sessions: where an interrupted upload stands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.orm.base import Base, Json, Timestamps, UuidPk
from storage.orm.tenancy import SLUG_LENGTH, STATE_LENGTH, org_fk

UPLOAD_STATES = ("open", "committed", "aborted", "expired")


class UploadSession(UuidPk, Timestamps, Base):
    __tablename__ = "upload_sessions"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'committed', 'aborted', 'expired')", name="state"),
        # The expiry sweep looks for open sessions past expires_at.
        Index(None, "state", "expires_at"),
    )

    org_id: Mapped[str] = org_fk()
    model_id: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    version: Mapped[str] = mapped_column(String(SLUG_LENGTH))
    file_name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32), default="weights")
    format: Mapped[str] = mapped_column(String(32), default="")
    declared_size: Mapped[int | None] = mapped_column(BigInteger)
    declared_sha256: Mapped[str | None] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    temp_key: Mapped[str] = mapped_column(String(1024))
    multipart_upload_id: Mapped[str | None] = mapped_column(String(1024))
    committed_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    parts: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list)
    state: Mapped[str] = mapped_column(String(STATE_LENGTH), default="open")
    expires_at: Mapped[datetime]
