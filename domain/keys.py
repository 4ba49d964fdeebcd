"""Orgs and API keys: creation, authentication, revocation.

A key looks like `mr_<key_id>_<secret>`. Only `key_id` is stored in clear (it is the
lookup index); the secret is stored as a salted SHA-256 and compared in constant time.
The secret has 256 bits of entropy, so a slow password hash would add latency to every
request without adding security.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from domain.plans import DEFAULT_PLAN, PLANS
from domain.principal import Principal
from storage.orm import ApiKey, Org, utcnow
from storage.repos import tenancy

KEY_PREFIX = "mr"
_KEY_RE = re.compile(r"^mr_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
ORG_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key; `token` is shown once and never stored."""

    token: str
    key_id: str
    org_name: str
    admin: bool


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


def create_org(session: Session, name: str, plan: str = DEFAULT_PLAN) -> Org:
    if not ORG_NAME_RE.match(name):
        raise InvalidArgument.field(
            "name",
            "org names are 1-64 lowercase letters, digits or '-', not starting or ending with '-'",
        )
    if plan not in PLANS:
        raise InvalidArgument.field("plan", f"unknown plan {plan!r}; known: {', '.join(PLANS)}")
    if tenancy.org_by_name(session, name) is not None:
        raise AlreadyExists("org", name)
    org = Org(name=name, plan=plan, model_versions_monthly=PLANS[plan]["model_versions_monthly"])
    session.add(org)
    try:
        session.flush()
    except IntegrityError:
        raise AlreadyExists("org", name) from None
    return org


def get_org(session: Session, name: str) -> Org:
    org = tenancy.org_by_name(session, name)
    if org is None:
        raise NotFound("org", name)
    return org


def create_key(
    session: Session, org_name: str, *, admin: bool = False, label: str = ""
) -> IssuedKey:
    org = get_org(session, org_name)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    session.add(
        ApiKey(
            org_id=org.id,
            key_id=key_id,
            salt=salt,
            secret_hash=_hash(salt, secret),
            admin=admin,
            label=label,
        )
    )
    session.flush()
    return IssuedKey(f"{KEY_PREFIX}_{key_id}_{secret}", key_id, org.name, admin)


def revoke_key(session: Session, key_id: str) -> ApiKey:
    key = tenancy.key_by_key_id(session, key_id)
    if key is None:
        raise NotFound("api key", key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def authenticate(session: Session, token: str) -> Principal:
    """The principal a bearer token stands for; Unauthenticated for any bad token.

    Every failure gives the same message so a caller cannot probe which key ids exist.
    """
    match = _KEY_RE.match(token)
    # One query for the key and its org's name, run for every request (a server that
    # knows the key runs it inside the RPC's own transaction: server/context.py KeyCheck),
    # so a revocation holds from the next request on.
    key = tenancy.key_credentials(session, match.group(1)) if match else None
    expected = key.secret_hash if key else _hash("0" * 32, "x")
    actual = _hash(key.salt if key else "0" * 32, match.group(2) if match else "y")
    if key is None or not hmac.compare_digest(expected, actual):
        raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
    if key.revoked_at is not None:
        raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
    return Principal(org_id=key.org_id, org_name=key.name, key_id=key.key_id, admin=key.admin)
