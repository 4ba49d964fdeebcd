"""Raw inference sessions by day: on PostgreSQL a partition per UTC day of occurred_at,
made on demand by ingestion and dropped by the retention; the (org_id, event_id,
occurred_at) key dedupes alike on both backends; migration 0011 converts a table that
holds rows, both ways."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import create_engine_for, session_factory, transaction
from storage.migrate import alembic_config, upgrade
from storage.orm import Org
from storage.repos import telemetry as repo
from storage.repos.telemetry import SessionColumns, session_scope


def _micros(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def _cols(events: list[tuple[str, datetime]]) -> SessionColumns:
    n = len(events)
    return SessionColumns(
        event_id=[e for e, _ in events],
        model_id=["m"] * n,
        version=["1.0"] * n,
        device_id=["d"] * n,
        device_type=[""] * n,
        occurred_us=[_micros(t) for _, t in events],
        latency_ms=np.full(n, 5.0),
        ttft_ms=np.zeros(n),
        tokens_per_second=np.zeros(n),
        error=[False] * n,
        error_code=[""] * n,
    )


def _org(factory: sessionmaker[Session]) -> str:
    with transaction(factory) as s:
        org = Org(name="acme")
        s.add(org)
    return org.id


def _partition_of(s: Session) -> dict[str, str]:
    rows = s.execute(text("SELECT event_id, tableoid::regclass::text FROM inference_sessions"))
    return {e: p for e, p in rows}


def test_partitions_are_made_on_demand_and_a_stale_cache_recovers(
    factory: sessionmaker[Session],
) -> None:
    org = _org(factory)
    now = datetime.now(UTC)
    events = [(f"e{d}", now - timedelta(days=d)) for d in (0, 1, 5, 20)]
    with transaction(factory) as s:
        assert repo.insert_sessions(s, org, _cols(events)) == set()
    with transaction(factory) as s:  # a retry: all duplicates
        assert repo.insert_sessions(s, org, _cols(events)) == {e for e, _ in events}
        postgres = s.get_bind().dialect.name == "postgresql"
    if not postgres:
        return
    with factory() as s:
        assert _partition_of(s) == {
            e: repo.partition_name(_micros(t) // repo.DAY_US) for e, t in events
        }
        # seen committed now: cached
        key = repo._database_key(s)
    assert {_micros(t) // repo.DAY_US for _, t in events} <= repo._known_partitions[key]
    # A partition this process knows is dropped behind its back (a shorter prune).
    gone = _micros(now - timedelta(days=5)) // repo.DAY_US
    with transaction(factory) as s:
        s.execute(text(f"DROP TABLE {repo.partition_name(gone)}"))
    with transaction(factory) as s:
        assert repo.insert_sessions(s, org, _cols([("x", now - timedelta(days=5))])) == set()
    with factory() as s:
        assert _partition_of(s)["x"] == repo.partition_name(gone)


def test_concurrent_transactions_create_the_same_day_once(
    factory: sessionmaker[Session],
) -> None:
    org = _org(factory)
    day = datetime.now(UTC) - timedelta(days=9)
    repo._known_partitions.clear()
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        try:
            barrier.wait()
            with transaction(factory) as s:
                repo.insert_sessions(s, org, _cols([(f"c{i}", day), ("shared", day)]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with factory() as s:
        n = s.execute(text("SELECT count(*) FROM inference_sessions")).scalar_one()
    assert n == 5


def test_prune_drops_whole_days_and_keeps_the_cutoffs(factory: sessionmaker[Session]) -> None:
    org = _org(factory)
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=10)
    events = [
        ("old", now - timedelta(days=15)),
        ("edge-old", cutoff - timedelta(minutes=1)),
        ("edge-new", cutoff + timedelta(minutes=1)),
        ("new", now - timedelta(days=1)),
    ]
    with transaction(factory) as s:
        repo.insert_sessions(s, org, _cols(events))
    with transaction(factory) as s:
        dropped, rows = repo.drop_session_partitions_before(s, cutoff)
        postgres = s.get_bind().dialect.name == "postgresql"
        removed = repo.delete_sessions_before(s, org, "m", cutoff)
    with factory() as s:
        left = set(s.scalars(text("SELECT event_id FROM inference_sessions")))
        partitions = [p for p, _ in repo.session_partitions(s)]
    assert left == {"edge-new", "new"}
    if postgres:
        # the 15-days-old day, and the day before the cutoff's if it is not the same
        assert dropped >= 1 and rows + removed == 2
        assert (
            repo.partition_name(_micros(now - timedelta(days=15)) // repo.DAY_US) not in partitions
        )
        assert repo.partition_name(_micros(cutoff) // repo.DAY_US) in partitions
    else:
        assert (dropped, rows, removed) == (0, 0, 2)


def _rows_at_0010(conn: Connection, now: datetime) -> None:
    conn.execute(
        text(
            "INSERT INTO orgs (id, name, plan, model_versions_monthly, revision, created_at)"
            " VALUES ('o1', 'acme', 'free', 0, 1, :t)"
        ),
        {"t": now if conn.dialect.name == "postgresql" else now.replace(tzinfo=None)},
    )
    for d in range(0, 40, 3):  # 14 days, some past the retention
        at = now - timedelta(days=d)
        conn.execute(
            text(
                "INSERT INTO inference_sessions (org_id, event_id, model_id, scope, version,"
                " device_id, device_type, occurred_at, latency_ms, status, received_at)"
                " VALUES ('o1', :e, 'm', :scope, '1.0', 'd', '', :at, 1.5, 'ok', :at)"
            ),
            {
                "e": f"e{d}",
                "scope": session_scope("o1", "m"),
                "at": at if conn.dialect.name == "postgresql" else at.replace(tzinfo=None),
            },
        )


def test_migration_0011_converts_a_table_holding_rows_and_back(db_url: str) -> None:
    config = alembic_config(db_url)
    command.upgrade(config, "0010")
    now = datetime.now(UTC)
    engine = create_engine_for(db_url)
    try:
        with engine.begin() as conn:
            _rows_at_0010(conn, now)
        upgrade(db_url)
        factory = session_factory(engine)
        with factory() as s:
            postgres = s.get_bind().dialect.name == "postgresql"
            ids = set(s.scalars(text("SELECT event_id FROM inference_sessions")))
            assert ids == {f"e{d}" for d in range(0, 40, 3)}
            if postgres:
                kind = s.execute(
                    text("SELECT relkind FROM pg_class WHERE relname = 'inference_sessions'")
                ).scalar_one()
                assert kind == "p"
                assert _partition_of(s) == {
                    f"e{d}": repo.partition_name(_micros(now - timedelta(days=d)) // repo.DAY_US)
                    for d in range(0, 40, 3)
                }
                # today and tomorrow exist before any event arrives
                today = _micros(now) // repo.DAY_US
                names = {p for p, _ in repo.session_partitions(s)}
                assert {repo.partition_name(today), repo.partition_name(today + 1)} <= names
        # The new key: the same id at another time is another event; the 0010 trigger works.
        with transaction(factory) as s:
            assert repo.insert_sessions(s, "o1", _cols([("e0", now - timedelta(hours=1))])) == set()
            assert repo.insert_sessions(s, "o1", _cols([("e3", now - timedelta(days=3))])) == {"e3"}
        command.downgrade(config, "0010")
        with factory() as s:
            ids = set(s.scalars(text("SELECT event_id FROM inference_sessions")))
            assert ids == {f"e{d}" for d in range(0, 40, 3)}  # e0 twice became once
            if postgres:
                kind = s.execute(
                    text("SELECT relkind FROM pg_class WHERE relname = 'inference_sessions'")
                ).scalar_one()
                assert kind == "r"
                assert not list(
                    s.execute(
                        text("SELECT 1 FROM pg_class WHERE relname LIKE 'inference_sessions_p%'")
                    )
                )
        upgrade(db_url)
        with transaction(factory) as s:
            s.execute(text("DELETE FROM orgs WHERE id = 'o1'"))
        with factory() as s:
            assert s.execute(text("SELECT count(*) FROM inference_sessions")).scalar_one() == 0
    finally:
        engine.dispose()
