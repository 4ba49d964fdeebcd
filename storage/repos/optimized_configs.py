"""Optimized configurations of an org's models, one revision per put."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.orm import OptimizedConfig


def latest(
    session: Session, org_id: str, model_uid: str, device_type: str
) -> OptimizedConfig | None:
    return session.scalars(
        select(OptimizedConfig)
        .where(
            OptimizedConfig.org_id == org_id,
            OptimizedConfig.model_uid == model_uid,
            OptimizedConfig.device_type == device_type,
        )
        .order_by(OptimizedConfig.revision.desc())
        .limit(1)
    ).one_or_none()


def max_revision(session: Session, org_id: str, model_uid: str, device_type: str) -> int:
    value = session.scalar(
        select(func.max(OptimizedConfig.revision)).where(
            OptimizedConfig.org_id == org_id,
            OptimizedConfig.model_uid == model_uid,
            OptimizedConfig.device_type == device_type,
        )
    )
    return int(value or 0)
