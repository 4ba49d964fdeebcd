"""Orgs and API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from storage.orm import ApiKey, Org
from storage.repos import catalog


def org_by_name(session: Session, name: str) -> Org | None:
    return session.scalars(select(Org).where(Org.name == name)).one_or_none()


def org_by_id(session: Session, org_id: str) -> Org | None:
    return session.get(Org, org_id)


def key_by_key_id(session: Session, key_id: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()


def key_credentials(
    session: Session, key_id: str
) -> Row[str, str, str, str, bool, datetime | None, str] | None:
    """What authenticating a key needs, in one query: (org_id, key_id, salt, secret_hash,
    admin, revoked_at, org name). This runs in every authenticated request, so the statement
    is built once and runs on the session's connection: plain columns, no ORM execution
    (nothing of the session needs flushing for it), and its compiled form is cached."""
    return session.connection().execute(_KEY_CREDENTIALS, {"key_id": key_id}).one_or_none()


_KEY_CREDENTIALS = (
    select(
        ApiKey.org_id,
        ApiKey.key_id,
        ApiKey.salt,
        ApiKey.secret_hash,
        ApiKey.admin,
        ApiKey.revoked_at,
        Org.name,
    )
    .join(Org, Org.id == ApiKey.org_id)
    .where(ApiKey.key_id == bindparam("key_id"))
)


def keys_of(session: Session, org_id: str) -> list[ApiKey]:
    return list(
        session.scalars(select(ApiKey).where(ApiKey.org_id == org_id).order_by(ApiKey.created_at))
    )


def bump_org_revision(session: Session, org_id: str) -> None:
    """Mark the org's manifest changed; runs in the caller's transaction and holds the
    org row's lock until it ends.

    Writers call it before they lock or write any other row of the org (models, versions,
    variants and what is under them): every writer then takes the org's lock first, so
    two on PostgreSQL never hold one row each while waiting for the other's (a deadlock,
    which the database breaks by failing one of them)."""
    session.execute(update(Org).where(Org.id == org_id).values(revision=Org.revision + 1))
    catalog.revision_bumped(session, org_id)


def lock_org(session: Session, org_id: str) -> bool:
    """Take the org row's lock (the one bump_org_revision takes) without changing it;
    False when there is no such org. On SQLite the write transaction already excludes
    every other writer."""
    # FOR NO KEY UPDATE, as an UPDATE of the row takes: inserts of rows referencing the
    # org (telemetry) need only a key-share lock and are not held up.
    locked = select(Org.id).where(Org.id == org_id).with_for_update(key_share=True)
    return session.scalars(locked).one_or_none() is not None
