"""The server's handles on its backends, and the bridge from async handlers to the
synchronous domain code (which runs in worker threads)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from domain import keys
from domain.conversion_worker import ConversionPool
from server.context import pending_key_check
from storage.db import autocommit_factory, revisions_bumped, single_reads, transaction
from storage.objectstore import ObjectStore

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Runtime:
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    executor: ThreadPoolExecutor
    # Object-store byte transfers (upload parts, download chunks, read-backs) take seconds
    # each under load; on a pool of their own they cannot queue database work behind them.
    transfers: ThreadPoolExecutor
    # This server's conversion workers, when it runs any (new jobs wake them at once).
    conversions: ConversionPool | None = None
    # Called on the event loop once a write transaction that bumped manifest revisions
    # (storage.db.note_revision_bump) has committed, with those scopes.
    on_commit: Callable[[frozenset[str | None]], None] | None = None
    autocommit: sessionmaker[Session] | None = field(init=False)

    def __post_init__(self) -> None:
        self.autocommit = autocommit_factory(self.engine)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking `fn` on the worker pool."""
        await _verify_key()
        return await _run_in(self.executor, lambda: fn(*args, **kwargs))

    async def transfer(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking object-store transfer `fn` on the transfer pool."""
        await _verify_key()
        return await _run_in(self.transfers, lambda: fn(*args, **kwargs))

    async def write(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(session, ...)` in one read-write transaction on the worker pool."""
        return await self._in_session(
            lambda: transaction(self.sessions), lambda s: fn(s, *args, **kwargs)
        )

    async def read(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(session, ...)` in a read-only transaction on the worker pool."""
        return await self._in_session(
            lambda: transaction(self.sessions, readonly=True),
            lambda s: fn(s, *args, **kwargs),
            retry_on_disconnect=True,
        )

    async def read_single(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """As read, for `fn` whose statements need no snapshot in common: on PostgreSQL
        outside a transaction (storage.db.single_reads), two round trips fewer."""
        return await self._in_session(
            lambda: single_reads(self.sessions, self.autocommit),
            lambda s: fn(s, *args, **kwargs),
            retry_on_disconnect=True,
        )

    async def _in_session(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        fn: Callable[[Session], T],
        retry_on_disconnect: bool = False,
    ) -> T:
        """`fn(session)` on the worker pool, after the RPC's pending key check in the same
        session (server/context.py: KeyCheck); then on_commit, if it bumped revisions.
        With `retry_on_disconnect` (reads: they change nothing), once more on a new
        connection when the first turned out closed by the database (a restart or a cut
        within storage.db.PING_AFTER_IDLE_S of its last use, so not pinged): SQLAlchemy
        has replaced the pool's connections by then."""
        check = pending_key_check()
        loop = asyncio.get_running_loop()

        def attempt() -> tuple[T, frozenset[str | None]]:
            with session() as s:
                if check is not None:
                    check.confirm(keys.authenticate(s, check.token))
                return fn(s), revisions_bumped(s)

        def run() -> T:
            try:
                result, bumped = attempt()
            except DBAPIError as exc:
                if not (retry_on_disconnect and exc.connection_invalidated):
                    raise
                result, bumped = attempt()
            if bumped and self.on_commit is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                    loop.call_soon_threadsafe(self.on_commit, bumped)
            return result

        return await _run_in(self.executor, run)


async def _run_in(executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(executor, fn)


async def _verify_key() -> None:
    """Work other than a transaction waits until the RPC's key is checked (server/context.py:
    KeyCheck), so a revoked key causes no side effect."""
    check = pending_key_check()
    if check is not None:
        await check.verify()
