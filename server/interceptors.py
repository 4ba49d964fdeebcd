"""One interceptor for every RPC: authentication, logging, metrics and error mapping.

Wrapping the method handler (instead of relying on grpc's interceptor hooks for each
concern) keeps the order explicit: authenticate, run, map any exception to a status with
AIP-193 details, then log one line and record metrics, whatever happened.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc.aio import AbortError

from domain.errors import DeadlineExceeded, Unauthenticated, Violations
from domain.limits import Limiter
from domain.principal import ANONYMOUS, Principal
from server import metrics
from server.context import Ctx, KeyCheck, pending_key_check, set_key_check, set_principal
from server.errors import as_domain_error, to_status

log = logging.getLogger("modelregistry.rpc")

Authenticate = Callable[[str], Awaitable[Principal]]
Behavior = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# RPCs that work without a key. GetManifest takes one optionally: with a key it shows
# the org's manifest, without it the blessed catalog only.
_NO_AUTH_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
OPTIONAL_AUTH = frozenset({"/modelregistry.v1.ModelService/GetManifest"})
# Streams that carry artifact bytes in: capped per org, since each holds buffers and
# object-store uploads open.
UPLOAD_STREAMS = frozenset(
    f"/modelregistry.v1.VersionService/{m}"
    for m in ("UploadArtifacts", "UploadBundle", "UploadAndConvert")
)
# Keys authenticated before, by sha256 of the token: a unary RPC with one of them gets its
# principal from here and has the key checked again in its first transaction (KeyCheck).
KNOWN_KEYS_MAX = 10_000


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The key from `authorization: Bearer <key>`; '' when the header is malformed."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self, authenticate: Authenticate, limiter: Limiter, stream_idle_timeout: float
    ) -> None:
        self._authenticate = authenticate
        self.limiter = limiter
        self.stream_idle_timeout = stream_idle_timeout
        self._known: dict[bytes, Principal] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_NO_AUTH_PREFIXES):
            return handler
        call = _Call(self, method, details.invocation_metadata)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.wrap_unary(self._idle_guarded(handler.stream_unary), streaming=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.wrap_stream(self._idle_guarded(handler.stream_stream)),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _idle_guarded(self, behavior: Behavior) -> Behavior:
        """Client streams that go silent for stream_idle_timeout seconds are closed, so an
        abandoned upload cannot hold its buffers and object-store upload open forever."""
        timeout = self.stream_idle_timeout

        def run(requests: Any, context: Ctx) -> Any:
            return behavior(_counting_uploads(_until_idle(requests, timeout)), context)

        return run

    async def principal_for(
        self, method: str, metadata: Any, *, defer_check: bool = False
    ) -> tuple[Principal, KeyCheck | None]:
        """The caller, with the key check still to run when `defer_check` allowed using
        a key authenticated before (KeyCheck); otherwise the key was checked now."""
        token = bearer_token(metadata)
        if token is None:
            if method in OPTIONAL_AUTH:
                return ANONYMOUS, None
            raise Unauthenticated(
                "missing API key: send metadata 'authorization: Bearer <key>'",
                reason="API_KEY_MISSING",
            )
        if not token:
            raise Unauthenticated(
                "malformed authorization header: expected 'Bearer <key>'",
                reason="API_KEY_MALFORMED",
            )
        digest = hashlib.sha256(token.encode()).digest()
        known = self._known.get(digest)
        if known is not None and defer_check:
            return known, KeyCheck(token, known, self._authenticate)
        try:
            principal = await self._authenticate(token)
        except Unauthenticated:
            self._known.pop(digest, None)
            raise
        if len(self._known) >= KNOWN_KEYS_MAX:
            del self._known[next(iter(self._known))]  # the oldest
        self._known[digest] = principal
        return principal, None

    def forget(self, token: str) -> None:
        """Drop a key whose check failed, so its next use is authenticated in full."""
        self._known.pop(hashlib.sha256(token.encode()).digest(), None)


class _Call:
    """The bookkeeping of one RPC: who called, how it ended, how long it took."""

    def __init__(self, owner: ServerInterceptor, method: str, metadata: Any) -> None:
        self.owner = owner
        self.method = method
        self.metadata = metadata
        self.principal: Principal = ANONYMOUS
        self.code = grpc.StatusCode.OK
        self.upload_org: str | None = None
        self.key_check: KeyCheck | None = None
        self.start = time.perf_counter()
        self.finished = False

    def wrap_unary(self, behavior: Behavior, *, streaming: bool = False) -> Behavior:
        """Unary responses; `streaming` for client-streaming RPCs (counted in flight)."""

        async def run(request: Any, context: Ctx) -> Any:
            self.start = time.perf_counter()
            streams = metrics.STREAMS_IN_FLIGHT.labels(self.method) if streaming else None
            if streams is not None:
                streams.inc()
            try:
                await self._authenticate(defer_check=not streaming)
                if not streaming:
                    reject_nul_text(request)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                await self._verify_key()
                return result
            except BaseException as exc:
                await self._fail(exc, context)
            finally:
                if streams is not None:
                    streams.dec()
                self._finish()

        return run

    def wrap_stream(self, behavior: Behavior) -> Behavior:
        async def run(request: Any, context: Ctx) -> AsyncIterator[Any]:
            self.start = time.perf_counter()
            streams = metrics.STREAMS_IN_FLIGHT.labels(self.method)
            streams.inc()
            try:
                await self._authenticate()
                if isinstance(request, Message):
                    reject_nul_text(request)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                if result is not None:
                    async for item in result:
                        metrics.count_downloaded(item)
                        yield item
            except BaseException as exc:
                await self._fail(exc, context)
            finally:
                streams.dec()
                self._finish()

        return run

    async def _authenticate(self, *, defer_check: bool = False) -> None:
        self.principal, self.key_check = await self.owner.principal_for(
            self.method, self.metadata, defer_check=defer_check
        )
        set_principal(self.principal)
        set_key_check(self.key_check)
        org = self.principal.org_id
        if org is not None:
            self.owner.limiter.admit(org)
            if self.method in UPLOAD_STREAMS:
                self.owner.limiter.open_upload(org)
                self.upload_org = org

    async def _verify_key(self) -> None:
        """Run the RPC's key check if the handler did not (it touched no database)."""
        check = pending_key_check()
        if check is not None:
            await check.verify()

    async def _fail(self, exc: BaseException, context: Ctx) -> None:
        check = self.key_check
        if check is not None and not isinstance(exc, asyncio.CancelledError | Unauthenticated):
            # An error from a handler that ran before its key was checked goes out only
            # for a valid key: a revoked one gets UNAUTHENTICATED, whatever it asked.
            # (A check that cannot run, the database being down, answers its own error.)
            try:
                await self._verify_key()
            except Exception as denied:
                exc = denied
        if check is not None and isinstance(exc, Unauthenticated):
            self.owner.forget(check.token)
            self.principal = ANONYMOUS
        if isinstance(exc, AbortError):
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
            raise exc
        if as_domain_error(exc) is None:
            log.exception("unhandled error in %s", self.method)
        status = to_status(exc)
        self.code = status.code
        # grpc.aio's abort sends the status before it raises: count and log the call first,
        # so a client that saw the error also sees it in /metrics.
        self._finish()
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _finish(self) -> None:
        """Count, time and log the call, once."""
        if self.finished:
            return
        self.finished = True
        if self.upload_org is not None:
            self.owner.limiter.close_upload(self.upload_org)
            self.upload_org = None
        elapsed = time.perf_counter() - self.start
        code = self.code.name
        metrics.RPC_REQUESTS.labels(self.method, code).inc()
        metrics.RPC_LATENCY.labels(self.method).observe(elapsed)
        log.info(
            "rpc",
            extra={
                "rpc_method": self.method,
                "code": code,
                "duration_ms": round(elapsed * 1000, 3),
                "org": self.principal.org_name or "-",
            },
        )


def reject_nul_text(request: Message) -> None:
    """U+0000 in any string of a unary request is INVALID_ARGUMENT, on every backend alike
    (PostgreSQL cannot store it in text or JSON; SQLite would). Streamed messages are not
    walked (telemetry batches are large); a NUL there meets the database's refusal, mapped
    to INVALID_ARGUMENT too (server/errors.py)."""
    found: list[str] = []
    _nul_fields(request, "", found)
    if found:
        v = Violations()
        for path in found[:20]:
            v.add(path, "must not contain NUL (U+0000) characters")
        v.raise_if_any()


_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def _nul_fields(msg: Message, prefix: str, out: list[str]) -> None:
    for fd, value in msg.ListFields():
        name = prefix + fd.name
        if fd.type == _STRING:
            if fd.is_repeated:
                out.extend(f"{name}[{i}]" for i, v in enumerate(value) if "\x00" in v)
            elif "\x00" in value:
                out.append(name)
        elif fd.type == _MESSAGE:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if isinstance(k, str) and "\x00" in k:
                        out.append(name)
                    if isinstance(v, str):
                        if "\x00" in v:
                            out.append(f"{name}[{k!r}]")
                    elif isinstance(v, Message):
                        _nul_fields(v, f"{name}[{k!r}].", out)
            elif fd.is_repeated:
                for i, m in enumerate(value):
                    _nul_fields(m, f"{name}[{i}].", out)
            else:
                _nul_fields(value, name + ".", out)


async def _counting_uploads(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        metrics.count_uploaded(message)
        yield message


async def _until_idle(requests: Any, timeout: float) -> AsyncIterator[Any]:
    iterator = requests.__aiter__()
    while True:
        try:
            # Not asyncio.wait_for: on Python 3.11 it runs the read in another task and
            # swallows a cancellation that lands as the read completes, which is exactly
            # what a client cancelling mid-stream produces (the read ends with EOF, then the
            # RPC is cancelled): the handler would take the stream as half-closed.
            async with asyncio.timeout(timeout):
                item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"no message received for {timeout:g} s; the stream was closed",
                reason="STREAM_IDLE",
            ) from None
        yield item
