"""Per-RPC context shared between the interceptor and servicers."""

from __future__ import annotations

import contextvars
from typing import Any, TypeAlias

import grpc

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
