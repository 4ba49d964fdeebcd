"""Server configuration: flags with environment-variable fallbacks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from domain.limits import LimitSettings

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/modelregistry.db"
DEFAULT_OBJECT_STORE = "var/blobs"
ENV_PREFIX = "MODELREGISTRY_"

# Uploads stream in chunks of at most 4 MiB; 16 MiB leaves headroom for the largest
# unary messages (manifests, configs) while bounding what one message can make us buffer.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    object_store: str = DEFAULT_OBJECT_STORE
    metrics_listen: str = ""
    # TLS for the gRPC port: PEM certificate chain and key; a client CA turns on mutual TLS.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Allow plaintext on a non-loopback address (server/tls.py).
    insecure: bool = False
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Seconds between dependency checks that drive the health status.
    health_interval: float = 2.0
    # Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
    shutdown_grace: float = 10.0
    # Threads running blocking work (database, object store) for the event loop.
    worker_threads: int = 32
    # Threads moving artifact bytes to and from the object store (2 parts in flight per
    # upload stream, one chunk read per download).
    transfer_threads: int = 64
    # Per-org admission control (per server process).
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Seconds after a write commits that this server builds the written manifests again
    # in the background (server/manifest_builds.py); 0 turns it off.
    manifest_warm_seconds: float = 2.0
    # Seconds a client stream may stay silent before it is closed.
    stream_idle_timeout: float = 60.0
    # Days raw telemetry events are kept (and how far back telemetry windows may reach).
    telemetry_retention_days: float = 30.0
    # Largest file an upload RPC accepts, in bytes (each file of a bundle counts alone).
    max_upload_file_bytes: int = 16 * 1024**3
    # Conversion workers this server runs (threads, each supervising one sandbox process
    # at a time); 0 leaves conversions to `modelregistry worker` processes.
    conversion_workers: int = 1
    # Limits of one conversion's sandbox process.
    conversion_memory_mb: int = 4096
    conversion_cpu_seconds: int = 600
    conversion_wall_seconds: float = 900.0
    # A running job whose worker sent no heartbeat for this long is retried elsewhere.
    conversion_stale_after: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_env() -> Settings:
        return Settings(
            listen=env("LISTEN", DEFAULT_LISTEN),
            database_url=env("DATABASE_URL", DEFAULT_DATABASE_URL),
            object_store=env("OBJECT_STORE", DEFAULT_OBJECT_STORE),
            metrics_listen=env("METRICS_LISTEN", ""),
            tls_cert=env("TLS_CERT", ""),
            tls_key=env("TLS_KEY", ""),
            tls_client_ca=env("TLS_CLIENT_CA", ""),
            insecure=env("INSECURE", "") not in ("", "0", "false"),
            max_upload_file_bytes=int(env("MAX_UPLOAD_FILE_BYTES", str(16 * 1024**3))),
            telemetry_retention_days=float(env("TELEMETRY_RETENTION_DAYS", "30")),
            manifest_warm_seconds=float(env("MANIFEST_WARM_SECONDS", "2")),
            conversion_workers=int(env("CONVERSION_WORKERS", "1")),
            conversion_memory_mb=int(env("CONVERSION_MEMORY_MB", "4096")),
            conversion_cpu_seconds=int(env("CONVERSION_CPU_SECONDS", "600")),
            conversion_wall_seconds=float(env("CONVERSION_WALL_SECONDS", "900")),
            conversion_stale_after=float(env("CONVERSION_STALE_AFTER", "30")),
        )


def normalize_sqlite_url(url: str) -> str:
    """`sqlite:///relative/path` stays relative to the working directory; make sure the
    directory exists so a bare machine can start."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url
