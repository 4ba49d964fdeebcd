"""dialects.one_of, the "column is one of these values" predicate the manifest reads and
catalog import use: the rows it matches, on both databases, for lists of any length."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.orm import Model, Org
from storage.repos import dialects

NAMES = [
    "plain",
    "quote'd",
    'double"quoted',
    "back\\slash",
    "ünïcode-模型",
    "emoji-😀",
    "comma,name",
    "[]",
]


def seed(factory: sessionmaker[Session], names: list[str]) -> str:
    with transaction(factory) as session:
        org = Org(name="acme")
        session.add(org)
        session.flush()
        session.execute(insert(Model), [{"org_id": org.id, "model_id": n} for n in names])
        return org.id


def matching(factory: sessionmaker[Session], org_id: str, values: list[str]) -> list[str]:
    with transaction(factory, readonly=True) as session:
        query = select(Model.model_id).where(
            Model.org_id == org_id, dialects.one_of(session, Model.model_id, values)
        )
        return sorted(session.scalars(query))


def test_matches_exactly_the_listed_values(factory: sessionmaker[Session]) -> None:
    org_id = seed(factory, [*NAMES, "unlisted"])
    assert matching(factory, org_id, [*NAMES, "absent"]) == sorted(NAMES)
    assert matching(factory, org_id, []) == []
    # Exact, case-sensitive equality: no pattern or prefix matching.
    assert matching(factory, org_id, ["PLAIN", "plai", "%"]) == []


def test_a_value_with_a_nul_matches_only_itself(factory: sessionmaker[Session]) -> None:
    """SQLite's json_each ends a value at a NUL; requests are refused for NULs upstream,
    but the predicate must not depend on that. (PostgreSQL text cannot hold one.)"""
    org_id = seed(factory, ["a", "a-b"])
    with transaction(factory, readonly=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            return
    assert matching(factory, org_id, ["a\x00b", "a-b"]) == ["a-b"]


def test_takes_more_values_than_sqlite_binds_parameters(factory: sessionmaker[Session]) -> None:
    """One parameter whatever the list's length: SQLite refuses statements of over 32,766
    (the `IN (...)` form needed chunking)."""
    names = [f"m-{i:05d}" for i in range(40_000)]
    org_id = seed(factory, names[::1000])
    assert matching(factory, org_id, names) == names[::1000]
