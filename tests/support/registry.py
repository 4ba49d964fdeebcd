"""A real modelregistry server for tests: its own thread and event loop, a real port,
real backends; tests reach it only through gRPC channels."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc

from domain import keys
from modelregistry.v1 import (
    catalog_service_pb2_grpc,
    model_service_pb2_grpc,
    telemetry_service_pb2_grpc,
    version_service_pb2_grpc,
)
from server.app import RegistryServer
from server.settings import Settings
from storage.db import create_engine_for, session_factory, transaction
from storage.migrate import upgrade


@dataclass
class Client:
    """Stubs for one org, with its key attached to every call."""

    channel: grpc.Channel
    key: str
    org: str
    models: model_service_pb2_grpc.ModelServiceStub = field(init=False)
    versions: version_service_pb2_grpc.VersionServiceStub = field(init=False)
    catalog: catalog_service_pb2_grpc.CatalogServiceStub = field(init=False)
    telemetry: telemetry_service_pb2_grpc.TelemetryServiceStub = field(init=False)

    def __post_init__(self) -> None:
        auth = _AuthInterceptor(self.key)
        ch = grpc.intercept_channel(self.channel, auth)
        self.models = model_service_pb2_grpc.ModelServiceStub(ch)
        self.versions = version_service_pb2_grpc.VersionServiceStub(ch)
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(ch)
        self.telemetry = telemetry_service_pb2_grpc.TelemetryServiceStub(ch)

    @property
    def metadata(self) -> Sequence[tuple[str, str]]:
        return [("authorization", f"Bearer {self.key}")]


class _AuthInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, key: str) -> None:
        self.key = key

    def _details(self, details: Any) -> Any:
        metadata = [m for m in (details.metadata or []) if m[0] != "authorization"]
        if not any(m[0] == "x-no-auth" for m in details.metadata or []):
            metadata.append(("authorization", f"Bearer {self.key}"))
        return details._replace(metadata=[m for m in metadata if m[0] != "x-no-auth"])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(details), request_iterator)


class RunningServer:
    """Starts RegistryServer on 127.0.0.1:<free port> over the given backends."""

    def __init__(self, database_url: str, object_store: str, **settings: Any) -> None:
        upgrade(database_url)
        self.database_url = database_url
        self.object_store = object_store
        self.settings = Settings(
            listen="127.0.0.1:0",
            database_url=database_url,
            object_store=object_store,
            health_interval=0.5,
            shutdown_grace=2.0,
            **settings,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: RegistryServer = self._run(self._make())
        self.port = self._run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.address)
        self._admin_engine = create_engine_for(database_url, pool_size=2)
        self._sessions = session_factory(self._admin_engine)

    async def _make(self) -> RegistryServer:
        return RegistryServer(self.settings)

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=60)

    def new_org(self, *, plan: str = "team", admin: bool = False) -> Client:
        """A fresh org with a key: tests isolate themselves by org, not by server."""
        name = f"org-{uuid.uuid4().hex[:12]}"
        with transaction(self._sessions) as session:
            keys.create_org(session, name, plan)
            issued = keys.create_key(session, name, admin=admin)
        return Client(self.channel, issued.token, name)

    def add_key(self, org: str, *, admin: bool = False) -> str:
        with transaction(self._sessions) as session:
            return keys.create_key(session, org, admin=admin).token

    def revoke_key(self, token: str) -> None:
        key_id = token.split("_")[1]
        with transaction(self._sessions) as session:
            keys.revoke_key(session, key_id)

    def drop_admin_connections(self) -> None:
        """Close the pooled connections of the helpers above (new_org, add_key, ...): a
        fault test that cut the database's connections leaves them dead, and one used
        within storage.db.PING_AFTER_IDLE_S is handed out unpinged. (The server's own pool
        heals at its first failed statement, which the fault tests' retries go through.)"""
        self._admin_engine.dispose()

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.stop(1.0))
        self._admin_engine.dispose()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
