"""Per-RPC context shared between the interceptor and servicers."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from domain.errors import Unauthenticated
from domain.principal import ANONYMOUS, Principal

# The servicer context of grpc.aio, with the message types left open.
Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "principal", default=ANONYMOUS
)


def principal() -> Principal:
    """The caller of the RPC being served (set by the auth interceptor)."""
    return _principal.get()


def set_principal(value: Principal) -> contextvars.Token[Principal]:
    return _principal.set(value)


class KeyCheck:
    """A key this server authenticated before, used again by a unary RPC: its principal is
    known from memory, and the key is checked again in the database before the RPC's result
    or error leaves the server. The first `Runtime.read`/`write` of the RPC runs the check
    in its own transaction (no extra thread hop or transaction); `Runtime.call`/`transfer`,
    and the interceptor when the handler touched no database, run it on its own first. A
    revoked key is therefore refused from the next request on, as without the cache."""

    __slots__ = ("_authenticate", "principal", "token", "verified")

    def __init__(
        self, token: str, principal: Principal, authenticate: Callable[[str], Awaitable[Principal]]
    ) -> None:
        self.token = token
        self.principal = principal
        self._authenticate = authenticate
        self.verified = False

    def confirm(self, current: Principal) -> None:
        """Accept the key's principal as read now; Unauthenticated when it changed."""
        if current != self.principal:
            raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
        self.verified = True

    async def verify(self) -> None:
        """Check the key in a transaction of its own (Unauthenticated when revoked)."""
        if not self.verified:
            self.confirm(await self._authenticate(self.token))


_key_check: contextvars.ContextVar[KeyCheck | None] = contextvars.ContextVar(
    "key_check", default=None
)


def pending_key_check() -> KeyCheck | None:
    """The RPC's key check while it has not run yet, else None."""
    check = _key_check.get()
    return None if check is None or check.verified else check


def set_key_check(value: KeyCheck | None) -> contextvars.Token[KeyCheck | None]:
    return _key_check.set(value)
