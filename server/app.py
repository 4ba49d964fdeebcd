"""Assembles the gRPC server: backends, servicers, interceptor, health, reflection."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc

from domain import keys
from domain.limits import Limiter
from domain.principal import Principal
from modelregistry.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    model_service_pb2,
    telemetry_service_pb2,
    telemetry_service_pb2_grpc,
    version_service_pb2,
    version_service_pb2_grpc,
)
from server import model_service, reflection, tls
from server.catalog_service import CatalogService
from server.conversion_service import conversion_pool
from server.health import HealthMonitor
from server.interceptors import ServerInterceptor
from server.metrics import MetricsEndpoint, serve_metrics
from server.model_service import ModelService
from server.runtime import Runtime
from server.settings import Settings, normalize_sqlite_url
from server.telemetry_service import TelemetryService
from server.uploads import UploadLimits
from server.version_service import VersionService
from storage.db import create_engine_for, session_factory
from storage.objectstore import open_store

log = logging.getLogger("modelregistry.server")

SERVICE_NAMES = [
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    version_service_pb2.DESCRIPTOR.services_by_name["VersionService"].full_name,
    catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    telemetry_service_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name,
]


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Ping idle connections every 30 s and drop them when a ping goes unanswered for
        # 10 s, so half-open connections from devices that vanished get reclaimed.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client keepalive pings as often as every 10 s (device agents on flaky
        # links use them to notice dead connections early).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class RegistryServer:
    """One server process: start() binds and serves, stop() drains and closes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        engine = create_engine_for(
            normalize_sqlite_url(settings.database_url), pool_size=settings.worker_threads
        )
        self.runtime = Runtime(
            engine=engine,
            sessions=session_factory(engine),
            store=open_store(settings.object_store),
            executor=ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="rpc-io"),
            transfers=ThreadPoolExecutor(settings.transfer_threads, thread_name_prefix="store-io"),
        )
        self.runtime.conversions = conversion_pool(
            settings, self.runtime.sessions, self.runtime.store
        )
        self.server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(
                    self._authenticate, Limiter(settings.limits), settings.stream_idle_timeout
                )
            ],
            options=channel_options(settings),
        )
        self.health = HealthMonitor(self.runtime, SERVICE_NAMES, settings.health_interval)
        self._add_services()
        self.port = 0
        self.metrics: MetricsEndpoint | None = None

    async def _authenticate(self, token: str) -> Principal:
        # On the database pool, like every other query (asyncio's default executor has
        # only a handful of threads, and every authenticated RPC passes here).
        return await self.runtime.read(keys.authenticate, token)

    def _add_services(self) -> None:
        rt = self.runtime
        self.model_service = ModelService(rt, self.settings.manifest_warm_seconds)
        rt.on_commit = self.model_service.manifests.written
        model_service.add_to_server(self.model_service, self.server)
        version_service_pb2_grpc.add_VersionServiceServicer_to_server(
            VersionService(rt, UploadLimits(self.settings.max_upload_file_bytes)), self.server
        )
        catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogService(rt), self.server
        )
        telemetry_service_pb2_grpc.add_TelemetryServiceServicer_to_server(
            TelemetryService(rt, timedelta(days=self.settings.telemetry_retention_days)),
            self.server,
        )
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        # With the protos' doc comments, for `grpcurl describe` (server/reflection.py).
        reflection.enable_server_reflection(
            [
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )

    async def start(self) -> int:
        # /metrics first: once the gRPC port accepts connections, /metrics answers too.
        if self.settings.metrics_listen:
            rt = self.runtime
            self.metrics = serve_metrics(self.settings.metrics_listen, rt.engine, rt.sessions)
            log.info("metrics on http://%s/metrics", self._metrics_address())
        credentials = tls.server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(self.settings.listen)
        else:
            self.port = self.server.add_secure_port(self.settings.listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await self.health.check_once()
        await self.server.start()
        self.health.start()
        self.model_service.manifests.watch_catalog()
        if self.runtime.conversions is not None:
            self.runtime.conversions.start()
        log.info(
            "serving on %s (%s)",
            self.settings.listen.rsplit(":", 1)[0] + f":{self.port}",
            tls.mode(self.settings),
        )
        return self.port

    def _metrics_address(self) -> str:
        assert self.metrics is not None
        return self.settings.metrics_listen.rsplit(":", 1)[0] + f":{self.metrics.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish within the grace period, close."""
        await self.health.shutdown()
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.model_service.manifests.close()
        if self.runtime.conversions is not None:
            # Running jobs go back to the queue (not counted as attempts).
            await asyncio.to_thread(self.runtime.conversions.stop)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
            self.metrics = None
        self.runtime.executor.shutdown(wait=False, cancel_futures=True)
        self.runtime.transfers.shutdown(wait=False, cancel_futures=True)
        self.runtime.engine.dispose()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    import gc
    import signal

    server = RegistryServer(settings)
    await server.start()
    # What exists now (modules, classes, functions, the started server) lives as long as
    # the process: out of the collector's reach, full collections walk only what requests
    # made (bench-manifest, with built manifests made of plain tuples too: a full
    # collection went from ~130 ms to ~2 ms). Startup's garbage is collected first, so
    # none of it is frozen for good.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
