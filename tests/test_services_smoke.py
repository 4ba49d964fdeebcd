"""The throwaway backing services work: real PostgreSQL and MinIO, no mocks."""

from __future__ import annotations

import io
from typing import Any

import pytest
import sqlalchemy as sa


@pytest.mark.postgres
def test_postgres_new_database_answers_select_1(pg_server: Any) -> None:
    url = pg_server.new_database()
    assert url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            # a fresh database: no tables of its own
            tables = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
            assert tables == 0
    finally:
        engine.dispose()
    assert pg_server.new_database() != url


@pytest.mark.postgres
def test_postgres_can_be_taken_down_and_brought_back(pg_server: Any) -> None:
    if not pg_server.can_restart:
        pytest.skip("external PostgreSQL cannot be stopped")
    url = pg_server.new_database()
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (42)"))
        with pg_server.down(), pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        with engine.connect() as conn:  # same port, same data
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 42
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_minio_put_get_object(minio_server: Any) -> None:
    url = minio_server.new_bucket()
    assert url.startswith(f"s3://{minio_server.access_key}:{minio_server.secret_key}@")
    assert url.endswith("?secure=false")
    bucket = url.split("/")[-1].split("?")[0]

    client = minio_server.client()
    assert client.bucket_exists(bucket)
    data = b"hello, model registry\n" * 1000
    client.put_object(bucket, "dir/blob.bin", io.BytesIO(data), length=len(data))
    resp = client.get_object(bucket, "dir/blob.bin")
    try:
        assert resp.read() == data
    finally:
        resp.close()
        resp.release_conn()
    assert minio_server.new_bucket() != url
