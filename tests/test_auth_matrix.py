"""Every RPC of every service, enumerated from the descriptors, refuses callers without a
valid key. A new RPC is covered automatically; a new public RPC must be listed here."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor, message_factory

from modelregistry.v1 import (
    catalog_service_pb2,
    model_service_pb2,
    telemetry_service_pb2,
    version_service_pb2,
)
from support.registry import RunningServer
from support.status import rich

PUBLIC = {"/modelregistry.v1.ModelService/GetManifest"}
FILES = [model_service_pb2, version_service_pb2, catalog_service_pb2, telemetry_service_pb2]


def all_methods() -> Iterator[descriptor.MethodDescriptor]:
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            yield from service.methods


METHODS = list(all_methods())


def call(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, metadata: list[tuple[str, str]]
) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    if method.client_streaming and method.server_streaming:
        list(
            channel.stream_stream(path, **kwargs)(
                iter([request_cls()]), metadata=metadata, timeout=10
            )
        )
    elif method.client_streaming:
        channel.stream_unary(path, **kwargs)(iter([request_cls()]), metadata=metadata, timeout=10)
    elif method.server_streaming:
        list(channel.unary_stream(path, **kwargs)(request_cls(), metadata=metadata, timeout=10))
    else:
        channel.unary_unary(path, **kwargs)(request_cls(), metadata=metadata, timeout=10)


def test_every_service_has_methods() -> None:
    assert len(METHODS) >= 40
    assert {m.containing_service.name for m in METHODS} == {
        "ModelService",
        "VersionService",
        "CatalogService",
        "TelemetryService",
    }


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_every_rpc_refuses_missing_bad_and_revoked_keys(
    registry: RunningServer, method: descriptor.MethodDescriptor
) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    org = registry.new_org()
    revoked = registry.add_key(org.org)
    registry.revoke_key(revoked)
    cases = {
        "missing": [],
        "malformed": [("authorization", "Token abc")],
        "unknown": [("authorization", "Bearer mr_0123456789abcdef_" + "x" * 43)],
        "revoked": [("authorization", f"Bearer {revoked}")],
    }
    for case, metadata in cases.items():
        if path in PUBLIC and case == "missing":
            continue
        with pytest.raises(grpc.RpcError) as info:
            call(registry.channel, method, metadata)
        err = rich(info.value)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED, f"{case}: {err.code} {err.message}"
        assert err.reason.startswith("API_KEY_"), case


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_every_rpc_refuses_a_key_revoked_after_use(
    registry: RunningServer, method: descriptor.MethodDescriptor
) -> None:
    """The server remembers keys it authenticated (a unary RPC then checks the key inside
    its own transaction): a key revoked after it was used is refused from the next request
    on, whatever the RPC and whether its handler reaches the database or fails before."""
    org = registry.new_org()
    key = registry.add_key(org.org)
    metadata = [("authorization", f"Bearer {key}")]
    models = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
    call(registry.channel, models.methods_by_name["ListModels"], metadata)
    registry.revoke_key(key)
    for attempt in range(2):
        with pytest.raises(grpc.RpcError) as info:
            call(registry.channel, method, metadata)
        err = rich(info.value)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED, f"{attempt}: {err.code} {err.message}"
        assert err.reason == "API_KEY_INVALID", attempt
