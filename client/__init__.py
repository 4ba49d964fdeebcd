"""Python client of the registry, behind `modelregistry push` / `modelregistry pull`."""

from client.api import RegistryClient
from client.download import PullResult
from client.errors import ClientError
from client.upload import PushResult, Sidecar

__all__ = ["ClientError", "PullResult", "PushResult", "RegistryClient", "Sidecar"]
