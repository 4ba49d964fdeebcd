"""Prometheus metrics of the server (served on --metrics-listen)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
BYTES_UPLOADED = Counter("modelregistry_bytes_uploaded_total", "Artifact bytes received")
BYTES_DOWNLOADED = Counter("modelregistry_bytes_downloaded_total", "Artifact bytes sent")
