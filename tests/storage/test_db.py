"""Engine setup, transactions, timestamps and health pings on both databases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from storage import db
from storage.db import (
    autocommit_factory,
    before_commit,
    create_engine_for,
    ping,
    session_factory,
    single_reads,
    transaction,
)
from storage.migrate import upgrade
from storage.orm import Org


def test_sqlite_creates_parent_dir_and_sets_pragmas(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path}/a/b/registry.db")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
        assert (tmp_path / "a" / "b" / "registry.db").exists()
    finally:
        engine.dispose()


def test_unsupported_url_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        create_engine_for("mysql://localhost/x")


def test_transaction_commits_or_rolls_back(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        session.add(Org(name="kept"))
    with pytest.raises(RuntimeError), transaction(factory) as session:
        session.add(Org(name="dropped"))
        session.flush()
        raise RuntimeError("boom")
    with transaction(factory, readonly=True) as session:
        assert session.scalars(select(Org.name)).all() == ["kept"]


def test_before_commit_runs_once_after_the_last_flush_and_never_on_rollback(
    factory: sessionmaker[Session],
) -> None:
    """storage.db.before_commit (the change log's commit-time stamping rests on it)."""
    seen: list[list[str]] = []

    def names(session: Session) -> None:
        seen.append(sorted(session.scalars(select(Org.name))))

    with transaction(factory) as session:
        before_commit(session, "k", names)
        before_commit(session, "k", lambda s: seen.append(["again"]))  # same key: once
        session.add(Org(name="added-after-registering"))  # not flushed yet
    assert seen == [["added-after-registering"]]

    with pytest.raises(RuntimeError), transaction(factory) as session:
        before_commit(session, "k", names)
        raise RuntimeError
    with factory() as session:  # one session, a transaction rolled back, then one committed
        session.begin()
        before_commit(session, "k", names)
        session.rollback()
        with session.begin():
            session.add(Org(name="second"))
    assert seen == [["added-after-registering"]]


def test_timestamps_round_trip_as_aware_utc(factory: sessionmaker[Session]) -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 14, 30, 15, 123456, tzinfo=plus_two)
    with transaction(factory) as session:
        org = Org(name="acme", created_at=moment)
        session.add(org)
    with factory() as session:
        loaded = session.scalars(select(Org)).one()
        assert loaded.created_at == moment
        assert loaded.created_at.tzinfo == UTC
        assert loaded.created_at.hour == 12
    with transaction(factory) as session:
        other = Org(name="defaulted")
        session.add(other)
    with factory() as session:
        reloaded = session.get(Org, other.id)
        assert reloaded is not None
        assert reloaded.created_at.tzinfo == UTC
        assert abs(reloaded.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_naive_timestamps_are_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises(StatementError, match="naive datetime"), transaction(factory) as session:
        session.add(Org(name="naive", created_at=datetime(2026, 1, 1)))
        session.flush()


def test_concurrent_read_modify_write_transactions(factory: sessionmaker[Session]) -> None:
    """Threads doing read-then-write never hit 'database is locked' and lose no update."""
    with transaction(factory) as session:
        org = Org(name="counter", revision=0)
        session.add(org)
    org_id = org.id
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(10):
                with transaction(factory) as session:
                    # FOR UPDATE serialises PostgreSQL; SQLite already is (BEGIN IMMEDIATE).
                    row = session.get(Org, org_id, with_for_update=True)
                    assert row is not None
                    row.revision = row.revision + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with factory() as session:
        row = session.get(Org, org_id)
        assert row is not None
        assert row.revision == 80


def test_ping_reports_a_live_database(factory: sessionmaker[Session]) -> None:
    engine = factory.kw["bind"]
    assert ping(engine) is True


def test_ping_sqlite_in_memory() -> None:
    engine = create_engine_for("sqlite://")
    assert ping(engine) is True
    with session_factory(engine)() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.postgres
def test_ping_is_false_and_fast_when_postgres_is_down(pg_server: Any) -> None:
    if not pg_server.can_restart:
        pytest.skip("external PostgreSQL cannot be stopped")
    engine = create_engine_for(pg_server.new_database())
    try:
        assert ping(engine) is True
        with pg_server.down():
            started = time.monotonic()
            assert ping(engine) is False
            assert time.monotonic() - started < 4
        # The pool recovers once the server is back.
        assert ping(engine) is True
    finally:
        engine.dispose()


def test_ping_gives_up_on_an_unreachable_host() -> None:
    # TEST-NET-1: packets go nowhere, so only connect_timeout/ping timeout end the wait.
    engine = create_engine_for("postgresql+psycopg://u@192.0.2.1:5432/db")
    try:
        started = time.monotonic()
        assert ping(engine, timeout=1.0) is False
        assert time.monotonic() - started < 2
    finally:
        engine.dispose()


def test_single_reads_leave_no_transaction_behind(db_url: str) -> None:
    """single_reads runs outside a transaction on PostgreSQL; the pooled connection it used
    serves the next transaction as a transaction again (a write that fails is rolled back
    whole)."""
    upgrade(db_url)
    engine = create_engine_for(db_url, pool_size=1, max_overflow=0)
    factory = session_factory(engine)
    try:
        with single_reads(factory, autocommit_factory(engine)) as session:
            assert session.execute(text("SELECT count(*) FROM orgs")).scalar() == 0
        with pytest.raises(RuntimeError), transaction(factory) as session:
            session.add(Org(name="half-written"))
            session.flush()
            raise RuntimeError("fails after a write")
        with transaction(factory, readonly=True) as session:
            assert session.execute(text("SELECT count(*) FROM orgs")).scalar() == 0
    finally:
        engine.dispose()


def _backend_pid(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    """End a PostgreSQL backend from another connection, as a server restart or an idle
    timeout would, and wait until it is gone."""
    admin = create_engine_for(url, pool_size=1)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            for _ in range(100):
                gone = conn.execute(
                    text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                ).scalar_one()
                conn.rollback()  # a new snapshot of pg_stat_activity each time
                if gone:
                    return
                time.sleep(0.02)
        raise AssertionError(f"backend {pid} still there")
    finally:
        admin.dispose()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the pings the pool sends before handing out a connection (the dialect's
    do_ping, wrapped; the ping itself still runs)."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    sent: list[int] = []
    ping_once = PGDialect_psycopg.do_ping

    def counted(self: Any, dbapi_connection: Any) -> bool:
        sent.append(1)
        return bool(ping_once(self, dbapi_connection))

    monkeypatch.setattr(PGDialect_psycopg, "do_ping", counted)
    return sent


@pytest.fixture
def pool_of_one(pg_server: Any) -> Iterator[tuple[str, Any]]:
    """A fresh PostgreSQL database's URL and an engine whose pool holds one connection."""
    url = pg_server.new_database()
    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    try:
        yield url, engine
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_back_in_the_pool_a_moment_ago_is_not_pinged(
    pool_of_one: tuple[str, Any], pings: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round trip pool_pre_ping would add to every checkout (as many as a not-modified
    GetManifest's statements) is spent only on connections idle past the window."""
    _, engine = pool_of_one
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 60.0)
    for _ in range(5):
        _backend_pid(engine)
    assert pings == []
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    for _ in range(3):
        _backend_pid(engine)
    assert len(pings) == 3


@pytest.mark.postgres
def test_a_connection_the_server_closed_while_idle_is_replaced_unseen(
    pool_of_one: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, engine = pool_of_one
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    first = _backend_pid(engine)
    _terminate(url, first)
    assert _backend_pid(engine) != first  # no error: pinged, replaced, retried


@pytest.mark.postgres
def test_a_connection_closed_within_the_window_fails_once_then_the_pool_recovers(
    pool_of_one: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price of not pinging: a statement sent on a connection the server closed a
    moment ago fails as a disconnect (server/runtime.py runs a read again; a write answers
    UNAVAILABLE, retryable), and the next checkout gets a new connection."""
    url, engine = pool_of_one
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 60.0)
    first = _backend_pid(engine)
    _terminate(url, first)
    with pytest.raises(DBAPIError) as failed:
        _backend_pid(engine)
    assert failed.value.connection_invalidated
    assert _backend_pid(engine) != first
