"""Engines, sessions and transactions for SQLite (embedded) and PostgreSQL.

The server runs synchronous SQLAlchemy from a thread pool (asyncio.to_thread), so engines
here are thread-safe pools and sessions are short-lived: one per unit of work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 2
PING_TIMEOUT_S = 3.0
# A pooled PostgreSQL connection back in the pool for longer than this is pinged before it
# is handed out again; one returned more recently is taken as alive (_ping_when_idle).
PING_AFTER_IDLE_S = 1.0

# Execution option read by the SQLite "begin" hook below to choose the BEGIN flavour.
SQLITE_BEGIN_OPTION = "modelregistry_sqlite_begin"

# Execution option: on PostgreSQL, fetch this statement's results in binary format. Large
# reads gain most where values are big or costly to parse as text: bytea travels as hex
# text otherwise (twice the bytes, decoded on both ends; 10 MB of manifest subtrees took
# 62 ms as text, 24 ms binary), and timestamps skip their text parsing. Result types are
# the same either way. Ignored on SQLite.
BINARY_RESULTS = {"modelregistry_binary_results": True}


def create_engine_for(
    url: str, *, pool_size: int = 10, max_overflow: int = 20, echo: bool = False
) -> Engine:
    """An engine for `sqlite:///path` or `postgresql+psycopg://...`.

    pool_size should roughly match the number of threads that use the database at once
    (the server's to_thread pool); beyond pool_size + max_overflow callers wait.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, max_overflow, echo)
    if backend == "postgresql":
        return _postgres_engine(parsed, pool_size, max_overflow, echo)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after commit, because callers commit in
    # the worker thread and then build protobuf responses from them.
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    event.listen(factory, "before_commit", _run_before_commit)
    event.listen(factory, "after_rollback", _drop_before_commit)
    return factory


# session.info key: what to run just before the session's transaction commits.
_BEFORE_COMMIT = "modelregistry.before_commit"


def before_commit(session: Session, key: Hashable, fn: Callable[[Session], None]) -> None:
    """Run fn(session) in the session's transaction just before it commits, after its
    last flush; once per key however often registered (the first fn kept), and not at
    all if it rolls back. Sessions of session_factory only."""
    session.info.setdefault(_BEFORE_COMMIT, {}).setdefault(key, fn)


def _run_before_commit(session: Session) -> None:
    hooks: dict[Hashable, Callable[[Session], None]] | None = session.info.pop(_BEFORE_COMMIT, None)
    if hooks:
        session.flush()  # SQLAlchemy flushes after before_commit: the hooks see every row
        for fn in hooks.values():
            fn(session)


def _drop_before_commit(session: Session) -> None:
    session.info.pop(_BEFORE_COMMIT, None)


@contextmanager
def transaction(factory: sessionmaker[Session], *, readonly: bool = False) -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on error.

    On SQLite a read-write transaction takes the write lock up front (BEGIN IMMEDIATE).
    A deferred transaction that reads and then writes cannot wait for a concurrent writer
    (SQLite fails it with "database is locked" at once, busy_timeout notwithstanding);
    IMMEDIATE makes it queue on busy_timeout instead. WAL keeps readers unblocked.
    Pass readonly=True for pure reads so they never queue behind writers.
    """
    with factory() as session, session.begin():
        if not readonly:
            session.connection(execution_options={SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        yield session


# session.info key: the manifest scopes whose revision the transaction bumped.
_BUMPED = "modelregistry.revisions_bumped"


def note_revision_bump(session: Session, scope: str | None) -> None:
    """Record that the session's transaction bumped a manifest scope's revision (an org
    id, None for the blessed catalog), for whoever runs it to act on once it commits
    (server.runtime.Runtime.on_commit)."""
    session.info.setdefault(_BUMPED, set()).add(scope)


def revisions_bumped(session: Session) -> frozenset[str | None]:
    """The scopes note_revision_bump recorded in the session's transaction."""
    return frozenset(session.info.get(_BUMPED, ()))


def autocommit_factory(engine: Engine) -> sessionmaker[Session] | None:
    """On PostgreSQL, sessions whose statements each run on their own, outside any
    transaction (autocommit); None elsewhere. For single_reads."""
    if engine.dialect.name != "postgresql":
        return None
    return session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))


@contextmanager
def single_reads(
    factory: sessionmaker[Session], autocommit: sessionmaker[Session] | None
) -> Iterator[Session]:
    """A session for reads that need no snapshot in common (each statement stands alone,
    like a polling device's stamp read): with an `autocommit` factory (PostgreSQL) no
    transaction, so no BEGIN and COMMIT round trips; else a read-only transaction (SQLite
    has no round trips to save)."""
    if autocommit is None:
        with transaction(factory, readonly=True) as session:
            yield session
        return
    with autocommit() as session:
        yield session


def ping(engine: Engine, timeout: float = PING_TIMEOUT_S) -> bool:
    """True when `SELECT 1` succeeds within `timeout` seconds; never raises.

    The query runs in a helper thread so a hung network, or a pool exhausted by busy
    requests, turns into False after `timeout` instead of blocking a health check.
    """
    outcome: list[bool] = []

    def check() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            outcome.append(True)
        except Exception:
            outcome.append(False)

    worker = threading.Thread(target=check, name="db-ping", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome) and outcome[0]


def _sqlite_engine(url: URL, pool_size: int, max_overflow: int, echo: bool) -> Engine:
    database = url.database
    in_memory = not database or database == ":memory:"
    kwargs: dict[str, Any] = {
        "echo": echo,
        # Pooled connections move between worker threads; each is used by one at a time.
        "connect_args": {"check_same_thread": False},
    }
    if in_memory:
        # Every connection to :memory: is a separate empty database: share one.
        kwargs["poolclass"] = pool.StaticPool
    else:
        assert database is not None
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (the "begin" hook) instead of the driver's own
        # implicit, always-deferred transactions.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")  # off by default; cascades need it
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough under WAL
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "BEGIN"))

    return engine


_RETURNED_AT = "modelregistry_returned_at"


def _ping_when_idle(engine: Engine) -> None:
    """Drop connections the database closed (a restart, an idle timeout, a failover) before
    they are handed out: as SQLAlchemy's pool_pre_ping, but only for a connection that sat
    in the pool for over PING_AFTER_IDLE_S (HikariCP's aliveBypassWindowMs does the same).
    pool_pre_ping costs a round trip per checkout, as many as the statements of a
    not-modified GetManifest, the request a fleet of polling devices sends most; under
    load connections come back within milliseconds and are not pinged. A database that
    went away within that window fails the statements then sent on its connections, and
    SQLAlchemy replaces every connection of the pool older than the failure: a read runs
    again on a new one (server/runtime.py), a write answers UNAVAILABLE (retryable)."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # info is emptied when a connection is replaced: a new one is not pinged.
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except psycopg.Error as exc:
            # The pool replaces the connection and tries the checkout again.
            raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def _postgres_engine(url: URL, pool_size: int, max_overflow: int, echo: bool) -> Engine:
    connect_args: dict[str, Any] = {}
    # Without connect_timeout a down or unreachable server blocks for the OS TCP timeout
    # (minutes); explicit values in the URL win.
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if "application_name" not in url.query:
        connect_args["application_name"] = "modelregistry"
    engine = create_engine(
        url,
        echo=echo,
        connect_args=connect_args,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        pool_timeout=10,
    )
    _ping_when_idle(engine)

    @event.listens_for(engine, "before_cursor_execute")
    def _results_format(
        conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, many: bool
    ) -> None:
        # SQLAlchemy opens a cursor per statement, so the format never leaks to the next.
        if context is not None and context.execution_options.get("modelregistry_binary_results"):
            cursor.format = psycopg.pq.Format.BINARY

    return engine
