"""Shared fixtures. Keep this file small: put helpers in tests/support/.

Backing services (session-scoped, started lazily by the first test that asks for them,
stopped at session end, also after Ctrl-C/SIGTERM; tests/support/services.py has an atexit
fallback):
- ``pg_server``: a throwaway PostgreSQL (``.new_database() -> SQLAlchemy URL``,
  ``.down()`` context manager to make it unreachable for a while).
- ``minio_server``: a throwaway MinIO (``.new_bucket() -> s3:// URL``, ``.client()``).
Set MODELREGISTRY_TEST_POSTGRES_URL / MODELREGISTRY_TEST_S3_URL to use existing services.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.services import (
    ExternalMinio,
    ExternalPostgres,
    MinioServer,
    PostgresServer,
    install_sigterm_handler,
    minio_from_env_or_start,
    postgres_from_env_or_start,
)

pytest_plugins = ["support.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    install_sigterm_handler()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | ExternalPostgres]:
    server = postgres_from_env_or_start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minio_server() -> Iterator[MinioServer | ExternalMinio]:
    server = minio_from_env_or_start()
    try:
        yield server
    finally:
        server.stop()
