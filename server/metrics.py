"""Prometheus metrics of the server, served as text at /metrics on --metrics-listen.

Process-wide instruments (recorded by the interceptor and the servicers) live in
prometheus_client's default registry. What belongs to one server, its database pool and
the conversion jobs in its database, is read at scrape time by collectors registered on a
registry of that server's own, so several servers in one process (the tests) never clash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.orm.conversions import ConversionJob
from storage.repos import ops_stats

log = logging.getLogger("modelregistry.metrics")

RPC_REQUESTS = Counter(
    "modelregistry_rpc_requests_total",
    "RPCs handled, by method and status code",
    ["method", "code"],
)
RPC_LATENCY = Histogram(
    "modelregistry_rpc_duration_seconds",
    "RPC latency by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STREAMS_IN_FLIGHT = Gauge(
    "modelregistry_streams_in_flight", "Streaming RPCs currently open, by method", ["method"]
)
MANIFEST_BUILDS = Histogram(
    "modelregistry_manifest_build_seconds",
    "GetManifest builds (server/manifest_builds.py) by what they started from (stored: the "
    "stored manifest as it is; patch: a previous build and the change log; index: every "
    "name's row) and what started them (a request, or a write on this server)",
    ["source", "trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)
MANIFEST_BACKGROUND_LOOKS = Counter(
    "modelregistry_manifest_background_looks_total",
    "Looks at a caller's next manifest build after writes (server/manifest_builds.py), by "
    "outcome (built: built and stored here; small: left to the next request; claimed: "
    "another server was building it; failed: an error, logged)",
    ["outcome"],
)
BYTES_UPLOADED = Counter("modelregistry_bytes_uploaded_total", "Artifact bytes received")
BYTES_DOWNLOADED = Counter("modelregistry_bytes_downloaded_total", "Artifact bytes sent")


def count_uploaded(message: object) -> None:
    """A client-stream message: its `chunk` bytes (UploadArtifacts, UploadBundle,
    UploadAndConvert) count as uploaded, whether or not the upload later succeeds."""
    chunk = getattr(message, "chunk", None)
    if isinstance(chunk, bytes) and chunk:
        BYTES_UPLOADED.inc(len(chunk))


def count_downloaded(message: object) -> None:
    """A server-stream message: its `data` bytes (DownloadArtifact) count as downloaded."""
    data = getattr(message, "data", None)
    if isinstance(data, bytes) and data:
        BYTES_DOWNLOADED.inc(len(data))


# Every state a job can be in (storage.orm.conversions' CHECK constraint): each is exported,
# 0 when no job is in it, so dashboards see a stable set of series.
CONVERSION_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class PoolCollector(Collector):
    """The SQLAlchemy connection pool of one engine: size, checked out, overflow."""

    def __init__(self, engine: Engine) -> None:
        self._pool = engine.pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        p = self._pool
        for name, doc, attr in (
            ("size", "Connections the pool keeps open (pool_size)", "size"),
            ("checked_out", "Connections currently in use", "checkedout"),
            ("checked_in", "Idle connections in the pool", "checkedin"),
            (
                "overflow",
                "Connections open beyond pool_size (negative: not yet opened)",
                "overflow",
            ),
        ):
            fn: Callable[[], int] | None = getattr(p, attr, None)
            if fn is not None:
                yield GaugeMetricFamily(f"modelregistry_db_pool_{name}", doc, value=fn())
        max_overflow = getattr(p, "_max_overflow", None)
        if isinstance(max_overflow, int):
            yield GaugeMetricFamily(
                "modelregistry_db_pool_max_overflow",
                "Connections the pool may open beyond pool_size",
                value=max_overflow,
            )


class ConversionJobsCollector(Collector):
    """Conversion jobs by state, counted in the database at scrape time (all orgs)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "modelregistry_conversion_jobs_scrape_ok",
            "1 when the conversion job counts could be read from the database",
        )
        try:
            with transaction(self._sessions, readonly=True) as session:
                counts = ops_stats.conversion_jobs_by_state(session)
        except Exception as exc:  # a scrape must answer while the database is down
            log.warning("cannot count conversion jobs: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        jobs = GaugeMetricFamily(
            "modelregistry_conversion_jobs",
            f"Conversion jobs in the database by state ({ConversionJob.__tablename__})",
            labels=["state"],
        )
        for state in sorted(set(CONVERSION_STATES) | set(counts)):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        up.add_metric([], 1)
        yield up


class _Chain(Collector):
    """The default registry's metrics plus those of one server."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        self._registries = registries

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        for registry in self._registries:
            yield from registry.collect()


@dataclass
class MetricsEndpoint:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def split_host_port(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_metrics(listen: str, engine: Engine, sessions: sessionmaker[Session]) -> MetricsEndpoint:
    """Serve /metrics on `listen` (host:port, port 0 picks one) from a daemon thread."""
    host, port = split_host_port(listen)
    own = CollectorRegistry(auto_describe=True)
    own.register(PoolCollector(engine))
    own.register(ConversionJobsCollector(sessions))
    combined = CollectorRegistry(auto_describe=False)
    combined.register(_Chain(REGISTRY, own))
    server, thread = start_http_server(port, addr=host, registry=combined)
    return MetricsEndpoint(server, thread)
