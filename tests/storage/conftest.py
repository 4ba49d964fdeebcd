"""Fixtures for storage tests: every test runs against real backends, never mocks.

`db_url` and `store` are parametrised over the embedded backend (SQLite, local directory)
and the server one (PostgreSQL, MinIO). The server variants pull the session-wide
`pg_server` / `minio_server` fixtures from tests/conftest.py lazily, so the embedded
variants run even where those services are unavailable (`-m "not postgres"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.db import create_engine_for, session_factory
from storage.migrate import upgrade
from storage.objectstore import ObjectStore, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a fresh, empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/registry.db"
    url: str = request.getfixturevalue("pg_server").new_database()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    upgrade(db_url)
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture(params=["local", pytest.param("minio", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "blobs"))
    return open_store(request.getfixturevalue("minio_server").new_bucket())
