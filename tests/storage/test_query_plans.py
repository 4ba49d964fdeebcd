"""PostgreSQL plans of lookups that run on hot paths, where a plan the planner costs wrong
turns milliseconds into seconds. Asserted on plans, not timings: what must hold is which
index a query can be answered from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import create_engine_for, session_factory, transaction
from storage.migrate import upgrade
from storage.orm import Model, Org
from storage.repos import dialects

pytestmark = pytest.mark.postgres
MODELS = 3000


@pytest.fixture(scope="module")
def pg(pg_server: object) -> Iterator[tuple[Engine, sessionmaker[Session], str]]:
    url = pg_server.new_database()  # type: ignore[attr-defined]
    upgrade(url)
    engine = create_engine_for(url)
    factory = session_factory(engine)
    with transaction(factory) as session:
        org = Org(name="acme")
        session.add(org)
        session.flush()
        session.execute(
            insert(Model),
            [{"org_id": org.id, "model_id": f"model-{i:05d}"} for i in range(MODELS)],
        )
        org_id = org.id
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    yield engine, factory, org_id
    engine.dispose()


def plan(factory: sessionmaker[Session], sql: str, params: dict[str, object]) -> str:
    with transaction(factory, readonly=True) as session:
        return "\n".join(r[0] for r in session.execute(text(f"EXPLAIN {sql}"), params))


def test_models_looked_up_by_name_never_go_through_the_trigram_index(
    pg: tuple[Engine, sessionmaker[Session], str],
) -> None:
    """`model_id IN (...)` / `= ANY(...)` (manifest rebuilds, telemetry batches): on an
    index of model_id itself, pg_trgm's GIN served equality too, and the planner chose it
    for lists of names, reading every model sharing a trigram ("mod", "del"): 3.8 s for
    500 names in an org of 10,000 (migration 0016)."""
    engine, factory, org_id = pg
    names = [f"model-{i:05d}" for i in range(0, MODELS, MODELS // 11)][:11]
    with engine.connect() as conn:
        compiled = (
            select(Model.model_id, Model.framework)
            .where(Model.org_id == org_id, Model.model_id.in_(names))
            .compile(conn, compile_kwargs={"literal_binds": True})
        )
    with transaction(factory, readonly=True) as session:
        # The form the manifest reads send (dialects.one_of), with its array parameter.
        one_of = (
            select(Model.model_id, Model.framework)
            .where(Model.org_id == org_id, dialects.one_of(session, Model.model_id, names))
            .compile(session.get_bind())
        )
        found = "\n".join(
            r[0] for r in session.connection().exec_driver_sql(f"EXPLAIN {one_of}", one_of.params)
        )
    assert "ix_models_model_id_trgm" not in found, found
    assert "uq_models_org_id_model_id" in found, found
    for sql, params in (
        (str(compiled), {}),
        ("SELECT model_id FROM models WHERE org_id = :org AND model_id = ANY(:names)",
         {"org": org_id, "names": names}),
        ("SELECT model_id FROM models WHERE org_id = :org AND model_id = :name",
         {"org": org_id, "name": names[0]}),
    ):  # fmt: skip
        found = plan(factory, sql, params)
        assert "ix_models_model_id_trgm" not in found, found
        assert "uq_models_org_id_model_id" in found, found


def test_the_search_on_model_id_can_use_its_trigram_index(
    pg: tuple[Engine, sessionmaker[Session], str],
) -> None:
    """ListModels' search matches lower(model_id) LIKE the lowered pattern
    (storage.repos.models), the expression the trigram index is on; with sequential scans
    priced out, so a table this small does not hide whether the index can serve it."""
    _, factory, _ = pg
    with transaction(factory, readonly=True) as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        found = "\n".join(
            r[0]
            for r in session.execute(
                text("EXPLAIN SELECT id FROM models WHERE lower(model_id) LIKE :p"),
                {"p": "%del-0001%"},
            )
        )
    assert "ix_models_model_id_trgm" in found, found
