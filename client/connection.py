"""The client's connection to a server: one gRPC channel with the API key on every call,
keepalives and quick reconnects, unary calls retried like the streams, the wait for the
server after a failure, and the paging through a catalog version's packages that push and
pull both need.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Self, TypeVar

import grpc

from client.errors import ClientError, describe, retryable
from modelregistry.v1 import (
    catalog_pb2,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    version_service_pb2_grpc,
)

T = TypeVar("T")

DEFAULT_SERVER = "127.0.0.1:50051"
CHUNK_BYTES = 1024 * 1024  # bytes per upload message (the server takes up to 4 MiB)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 60.0
# Consecutive failed attempts (without any byte committed in between) before giving up.
MAX_ATTEMPTS = 8
# How long a retry waits for the server to be reachable again.
RECONNECT_TIMEOUT = 60.0


class _Auth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc, type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc, type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc, type-arg]
):
    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def _with_key(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


class Connection:
    """A channel to `server` that sends `key` with every call, and the retry settings push
    and pull share."""

    def __init__(
        self,
        server: str,
        key: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        chunk_bytes: int = CHUNK_BYTES,
        max_attempts: int = MAX_ATTEMPTS,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        retry_delay: float = 0.5,
    ) -> None:
        if not key:
            raise ClientError("no API key: pass --key or set MODELREGISTRY_API_KEY")
        self.server = server
        self.connect_timeout = connect_timeout
        self.chunk_bytes = chunk_bytes
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        self.retry_delay = retry_delay
        self._raw = grpc.insecure_channel(
            server,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # Reconnect quickly after a drop (the default backoff starts at 1 s).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5_000),
            ],
        )
        channel = grpc.intercept_channel(self._raw, _Auth(key))
        self.versions = version_service_pb2_grpc.VersionServiceStub(channel)
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(channel)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_connected(self, timeout: float | None = None) -> None:
        try:
            grpc.channel_ready_future(self._raw).result(timeout=timeout or self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise ClientError(f"cannot reach the server at {self.server}") from None

    def unary(self, fn: Callable[..., T], request: Any) -> T:
        """A unary call, retried like the streams on retryable failures."""
        failures = 0
        while True:
            try:
                return fn(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
            except grpc.RpcError as err:
                again, delay = retryable(err)
                failures += 1
                if not again or failures >= self.max_attempts:
                    raise
                self.pause(failures, delay)

    def give_up_unless_retryable(self, err: grpc.RpcError, failures: int) -> float | None:
        """After failed attempt number `failures` of a stream: ClientError when `err` is not
        worth retrying or the attempts are used up, else the delay the server asked for."""
        again, delay = retryable(err)
        if not again:
            raise ClientError(describe(err)) from None
        if failures >= self.max_attempts:
            raise ClientError(
                f"gave up after {failures} failed attempts: {describe(err)}"
            ) from None
        return delay

    def pause(self, failures: int, delay: float | None) -> None:
        """Wait before retry number `failures` (the server's RetryInfo delay, else an
        exponential backoff), then until the server is reachable again."""
        time.sleep(delay if delay is not None else min(self.retry_delay * 2 ** (failures - 1), 8))
        try:
            grpc.channel_ready_future(self._raw).result(timeout=self.reconnect_timeout)
        except grpc.FutureTimeoutError:
            raise ClientError(
                f"lost the connection to {self.server} and could not reconnect within "
                f"{self.reconnect_timeout:.0f} s"
            ) from None

    def packages(self, catalog_version: str) -> Iterator[catalog_pb2.ArtifactPackage]:
        """Every package of `catalog_version`, page by page."""
        token = ""
        while True:
            page = self.unary(
                self.catalog.ListCatalogVersionPackages,
                catalog_service_pb2.ListCatalogVersionPackagesRequest(
                    parent=catalog_version, page_size=1000, page_token=token
                ),
            )
            yield from page.packages
            token = page.next_page_token
            if not token:
                return
