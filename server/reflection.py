"""Server reflection that carries the protos' doc comments.

grpcio-reflection answers file-descriptor requests with the descriptors the generated
`_pb2` modules registered, and protoc strips those of `source_code_info`, so
`grpcurl describe` showed no comments. `make generate` therefore also writes a
FileDescriptorSet with source info (`modelregistry/v1/descriptor_set.binpb`, next to the
generated modules), and this servicer puts that source info back into the files it serves.

Lookups stay the library's own, on the default pool the generated code registered in (so
reflection answers for exactly the messages and services the server runs, health and
reflection included); only the serialized files in each answer are swapped. A file gets
its comments only when the set's copy equals the generated one apart from source info and
protoc's default `json_name`s; otherwise (a stale set) it is served as before, without
comments, and the server logs which file. Passing a pool built from the set (`pool=`)
would not do: python protobuf's upb backend drops `source_code_info` when it builds a
pool, so `CopyToProto` and `serialized_pb` come back without comments either way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

# The aio servicer, public as reflection.aio.ReflectionServicer; grpc-stubs lacks it.
from grpc_reflection.v1alpha._async import ReflectionServicer as AioReflectionServicer

log = logging.getLogger("modelregistry.server")

DESCRIPTOR_SET_PACKAGE = "modelregistry.v1"
DESCRIPTOR_SET_NAME = "descriptor_set.binpb"

SERVICE_NAME: str = reflection.SERVICE_NAME


def load_descriptor_set() -> descriptor_pb2.FileDescriptorSet | None:
    """The FileDescriptorSet `make generate` wrote, or None when it is not installed."""
    try:
        data = resources.files(DESCRIPTOR_SET_PACKAGE).joinpath(DESCRIPTOR_SET_NAME).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def default_json_name(field_name: str) -> str:
    """protoc's json_name for a field without a `json_name` option (lowerCamelCase)."""
    out: list[str] = []
    upper_next = False
    for c in field_name:
        if c == "_":
            upper_next = True
        elif upper_next:
            out.append(c.upper())
            upper_next = False
        else:
            out.append(c)
    return "".join(out)


def _clear_default_json_names(fields: Iterable[descriptor_pb2.FieldDescriptorProto]) -> None:
    for field in fields:
        if field.HasField("json_name") and field.json_name == default_json_name(field.name):
            field.ClearField("json_name")


def _clear_message_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    _clear_default_json_names(message.field)
    _clear_default_json_names(message.extension)
    for nested in message.nested_type:
        _clear_message_json_names(nested)


def comparable(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """`file` without source info and without the json_names that only repeat the default:
    protoc's descriptor sets and protobuf's own well-known-type modules spell those out,
    modules generated here leave them out, and both mean the same."""
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(file)
    bare.ClearField("source_code_info")
    _clear_default_json_names(bare.extension)
    for message in bare.message_type:
        _clear_message_json_names(message)
    return bare


def registered_file(
    pool: descriptor_pool.DescriptorPool, name: str
) -> descriptor_pb2.FileDescriptorProto | None:
    """The file `name` as `pool` has it (what reflection serves without comments)."""
    try:
        descriptor = pool.FindFileByName(name)
    except KeyError:
        return None
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def commented_files(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> tuple[dict[str, bytes], list[str]]:
    """(file name -> the pool's file with the set's source info, serialized; names of the
    set's files left out because the pool lacks them or has them with other content)."""
    pool = pool or descriptor_pool.Default()
    served: dict[str, bytes] = {}
    mismatched: list[str] = []
    for file in descriptor_set.file:
        registered = registered_file(pool, file.name)
        if registered is None or comparable(registered) != comparable(file):
            mismatched.append(file.name)
            continue
        registered.source_code_info.CopyFrom(file.source_code_info)
        served[file.name] = registered.SerializeToString()
    return served, mismatched


class MethodResolvingPool:
    """`pool`, whose FindFileContainingSymbol also finds RPC methods (`pkg.Service.Method`),
    as the reflection protocol asks: python protobuf's pools find messages, fields, enums,
    services and extensions but not methods, so `grpcurl describe pkg.Service.Method`
    answered NOT_FOUND. Everything else is `pool`'s own."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            service = self._pool.FindServiceByName(service_name)  # KeyError when none
            if method not in service.methods_by_name:
                raise
            return service.file


class CommentedReflectionServicer(AioReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's aio servicer, answering with `files` (name -> serialized
    FileDescriptorProto with source info) in place of the same files without comments."""

    def __init__(self, service_names: Iterable[str], files: Mapping[str, bytes]) -> None:
        super().__init__(service_names, pool=MethodResolvingPool(descriptor_pool.Default()))
        self._files = dict(files)

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            yield self.with_comments(response)

    def with_comments(
        self, response: reflection_pb2.ServerReflectionResponse
    ) -> reflection_pb2.ServerReflectionResponse:
        if not response.HasField("file_descriptor_response"):
            return response
        protos = response.file_descriptor_response.file_descriptor_proto
        for i, serialized in enumerate(protos):
            name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
            commented = self._files.get(name)
            if commented is not None:
                protos[i] = commented
        return response


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Reflection for `service_names` (include SERVICE_NAME), with the protos' comments."""
    descriptor_set = load_descriptor_set()
    files: dict[str, bytes] = {}
    if descriptor_set is None:
        log.warning(
            "%s/%s not found: reflection serves descriptors without doc comments",
            DESCRIPTOR_SET_PACKAGE.replace(".", "/"),
            DESCRIPTOR_SET_NAME,
        )
    else:
        files, mismatched = commented_files(descriptor_set)
        if mismatched:
            log.warning(
                "%s differs from the generated code (run make generate): reflection serves "
                "%s without doc comments",
                DESCRIPTOR_SET_NAME,
                ", ".join(mismatched),
            )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        CommentedReflectionServicer(service_names, files), server
    )
