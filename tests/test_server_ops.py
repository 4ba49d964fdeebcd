"""Operational behaviour of the server: health, reflection, UNIMPLEMENTED, shutdown, logs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2
from storage import db
from support.registry import Client, RunningServer
from support.services import PostgresServer, free_port
from support.status import expect_error

SERVICES = {
    "modelregistry.v1.ModelService",
    "modelregistry.v1.VersionService",
    "modelregistry.v1.CatalogService",
    "modelregistry.v1.TelemetryService",
}


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_health_serving_without_a_key(registry: RunningServer) -> None:
    for service in ["", *SERVICES]:
        assert health_status(registry.channel, service) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_every_service_without_a_key(registry: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(registry.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    listed = {s.name for r in responses for s in r.list_services_response.service}
    assert listed >= SERVICES | {"grpc.health.v1.Health"}


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_health_follows_the_database(own_postgres: PostgresServer, tmp_path: Path) -> None:
    server = RunningServer(own_postgres.new_database(), str(tmp_path / "blobs"))
    try:
        assert health_status(server.channel) == health_pb2.HealthCheckResponse.SERVING
        c = server.new_org()
        own_postgres.stop_temporarily()
        wait_for(
            lambda: health_status(server.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # A request while the database is down is retryable, not INTERNAL.
        expect_error(grpc.StatusCode.UNAVAILABLE, c.models.ListModels, pb.ListModelsRequest())
        own_postgres.start()
        wait_for(lambda: health_status(server.channel) == health_pb2.HealthCheckResponse.SERVING)
        assert c.models.ListModels(pb.ListModelsRequest()).total_size == 0
    finally:
        server.stop()


@pytest.mark.postgres
def test_a_read_on_a_connection_the_database_just_closed_is_answered(
    pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection back from its last use within storage.db.PING_AFTER_IDLE_S is
    handed out without a ping; when the database closed it meanwhile (a restart, a cut),
    a read runs again on a new one instead of answering UNAVAILABLE (server/runtime.py).
    The window is widened here so that no connection of the server's pool is pinged."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    url = pg_server.new_database()
    server = RunningServer(url, str(tmp_path / "blobs"))
    admin = create_engine(url, poolclass=NullPool)
    try:
        c = server.new_org()
        c.models.CreateModel(
            pb.CreateModelRequest(model_id="kept", model=models_pb2.Model(framework="onnx"))
        )
        etag = c.models.GetManifest(pb.GetManifestRequest()).etag

        def end_every_connection() -> None:
            with admin.connect() as conn:
                ended = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert ended >= 1

        assert c.models.ListModels(pb.ListModelsRequest()).total_size == 1
        end_every_connection()
        assert c.models.ListModels(pb.ListModelsRequest()).total_size == 1
        end_every_connection()
        polled = c.models.GetManifest(pb.GetManifestRequest(if_none_match=etag))
        assert polled.not_modified  # a device's poll, too
    finally:
        admin.dispose()
        server.stop()


def _serve(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELREGISTRY_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--migrate",
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            f"sqlite:///{tmp_path / 'r.db'}",
            "--object-store",
            str(tmp_path / "blobs"),
        ],
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert proc.poll() is None, "server exited early"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 60)


def test_cli_server_logs_one_line_per_rpc_and_stops_on_sigterm(tmp_path: Path) -> None:
    from domain import keys
    from storage.db import create_engine_for, session_factory, transaction

    port = free_port()
    proc = _serve(tmp_path, port)
    try:
        _wait_listening(port, proc)
        engine = create_engine_for(f"sqlite:///{tmp_path / 'r.db'}")
        with transaction(session_factory(engine)) as s:
            keys.create_org(s, "acme")
            token = keys.create_key(s, "acme").token
        engine.dispose()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        c = Client(channel, token, "acme")
        c.models.CreateModel(
            pb.CreateModelRequest(model_id="m1", model=models_pb2.Model(framework="onnx"))
        )
        expect_error(
            grpc.StatusCode.NOT_FOUND, c.models.GetModel, pb.GetModelRequest(name="models/nope")
        )
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = proc.stderr.read().decode() if proc.stderr else ""
    # The secret is everything after mr_<key id>_. token_urlsafe may put "_" in it: its
    # pieces are checked too, but not ones too short to mean anything (a 1-character
    # piece is in every log).
    secret = token.split("_", 2)[2]
    pieces = [secret] + [p for p in secret.split("_") if len(p) >= 8]
    assert token not in logs and not any(p in logs for p in pieces), "keys are never logged"
    rpc_lines = [line for line in logs.splitlines() if '"msg": "rpc"' in line]
    created = next(line for line in rpc_lines if "/CreateModel" in line)
    assert '"code": "OK"' in created and '"org": "acme"' in created and "duration_ms" in created
    missing = next(line for line in rpc_lines if "/GetModel" in line)
    assert '"code": "NOT_FOUND"' in missing
    assert "shutting down" in logs
