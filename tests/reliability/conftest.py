"""Fixtures for fault injection: the server reaches PostgreSQL and MinIO through Toxiproxy.

`faulty` is one RunningServer per module whose database URL and object store URL point at
Toxiproxy proxies (`faulty.pg`, `faulty.s3`) in front of the session's throwaway PostgreSQL
and MinIO. Every test starts with both proxies enabled and free of toxics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from support.registry import RunningServer
from support.toxiproxy import Proxy, ToxiproxyServer


def via(url: str, proxy: Proxy) -> str:
    """`url` with its host:port replaced by the proxy's listen address."""
    return via_address(url, proxy.listen)


def via_address(url: str, address: str) -> str:
    """`url` with its host:port replaced by `address`."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=userinfo + address))


@dataclass
class Faulty:
    server: RunningServer
    pg: Proxy
    s3: Proxy
    direct_db: str  # the same database, not through the proxy (for checks)
    direct_store: str


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[ToxiproxyServer]:
    server = ToxiproxyServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def faulty_backends(
    toxiproxy: ToxiproxyServer, pg_server, minio_server, request: pytest.FixtureRequest
):  # type: ignore[no-untyped-def]
    name = request.module.__name__.rsplit(".", 1)[-1]
    pg = toxiproxy.proxy(f"pg-{name}", f"{pg_server.host}:{pg_server.port}")
    s3 = toxiproxy.proxy(f"s3-{name}", f"{minio_server.host}:{minio_server.port}")
    db = pg_server.new_database()
    store = minio_server.new_bucket()
    return pg, s3, db, store


@pytest.fixture(scope="module")
def faulty(faulty_backends) -> Iterator[Faulty]:  # type: ignore[no-untyped-def]
    pg, s3, db, store = faulty_backends
    server = RunningServer(via(db, pg), via(store, s3))
    try:
        yield Faulty(server, pg, s3, db, store)
    finally:
        pg.enable()
        s3.enable()
        server.stop()


@pytest.fixture(autouse=True)
def _healthy_proxies(request: pytest.FixtureRequest) -> Iterator[None]:
    if "faulty" not in request.fixturenames and "faulty_backends" not in request.fixturenames:
        yield
        return
    pg, s3, _, _ = request.getfixturevalue("faulty_backends")
    for p in (pg, s3):
        p.enable()
        p.clear_toxics()
    if "faulty" in request.fixturenames:
        request.getfixturevalue("faulty").server.drop_admin_connections()
    yield
    for p in (pg, s3):
        p.enable()
        p.clear_toxics()
