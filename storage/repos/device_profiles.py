"""An org's device profile overrides."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.orm import DeviceProfileOverride


def list_for_org(session: Session, org_id: str) -> list[DeviceProfileOverride]:
    return list(
        session.scalars(
            select(DeviceProfileOverride)
            .where(DeviceProfileOverride.org_id == org_id)
            .order_by(DeviceProfileOverride.name)
        )
    )


def get(session: Session, org_id: str, name: str) -> DeviceProfileOverride | None:
    return session.scalars(
        select(DeviceProfileOverride).where(
            DeviceProfileOverride.org_id == org_id, DeviceProfileOverride.name == name
        )
    ).one_or_none()
