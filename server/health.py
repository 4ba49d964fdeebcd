"""gRPC health: SERVING only while the database and the object store answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from server.runtime import Runtime
from storage.db import ping

log = logging.getLogger("modelregistry.health")


class HealthMonitor:
    """Polls the backends and publishes the overall and per-service status."""

    def __init__(self, runtime: Runtime, services: Sequence[str], interval: float) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._rt = runtime
        self._services = ["", *services]
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def check_once(self) -> bool:
        db_ok, store_ok = await asyncio.gather(
            self._rt.call(ping, self._rt.engine), self._rt.call(self._rt.store.ping)
        )
        serving = db_ok and store_ok
        if serving != self._serving:
            if not serving:
                log.warning("backend unavailable: database=%s object_store=%s", db_ok, store_ok)
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for service in self._services:
                await self.servicer.set(service, status)
            self._serving = serving
        return serving

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a failed check must not stop the monitor
                log.exception("health check failed")
            await asyncio.sleep(self._interval)

    async def shutdown(self) -> None:
        if self._task:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()
