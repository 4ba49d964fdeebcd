"""Fixtures for tests that talk to a running modelregistry server.

`registry` is parametrized over both backends, so every test using it runs against the
embedded default (SQLite + local directory) and production (PostgreSQL + MinIO). One
server per backend serves the whole session; tests isolate themselves with fresh orgs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.registry import Client, RunningServer

BACKENDS = ["embedded", "production"]


def backend_urls(request: pytest.FixtureRequest, backend: str, tmp: Path) -> tuple[str, str]:
    """(database URL, object store URL) for a fresh instance of `backend`."""
    if backend == "embedded":
        return f"sqlite:///{tmp / 'registry.db'}", str(tmp / "blobs")
    pg = request.getfixturevalue("pg_server")
    minio = request.getfixturevalue("minio_server")
    return pg.new_database(), minio.new_bucket()


@pytest.fixture(scope="session", params=BACKENDS)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    db, store = backend_urls(request, request.param, tmp_path_factory.mktemp(request.param))
    server = RunningServer(db, store)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(registry: RunningServer) -> Client:
    """Stubs for a fresh org (with a non-admin key)."""
    return registry.new_org()


@pytest.fixture
def other_client(registry: RunningServer) -> Client:
    """Stubs for a second, unrelated org."""
    return registry.new_org()
