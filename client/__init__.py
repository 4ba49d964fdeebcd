"""Python client of the registry, behind `modelregistry push` / `modelregistry pull`."""

from client.api import (
    ClientError,
    PullResult,
    PushResult,
    RegistryClient,
    Sidecar,
)

__all__ = ["ClientError", "PullResult", "PushResult", "RegistryClient", "Sidecar"]
