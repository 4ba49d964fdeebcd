"""Server reflection serves the protos with their doc comments (server/reflection.py).

The served files must be exactly the generated code's (what the server runs) plus the
source info from generated/python/modelregistry/v1/descriptor_set.binpb, and `grpcurl
describe` must print the comments written in protos/. One in-process server on the
embedded backend: reflection does not depend on the backend.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

# The generated modules the server registers its services from (and their imports).
from modelregistry.v1 import (  # noqa: F401
    catalog_service_pb2,
    model_service_pb2,
    telemetry_service_pb2,
    version_service_pb2,
)
from server.reflection import commented_files, comparable, load_descriptor_set, registered_file
from support.proto_comments import PROTO_DIR, has_block, leading_comment
from support.registry import RunningServer
from support.services import tools_bin_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("reflection")
    running = RunningServer(f"sqlite:///{tmp / 'registry.db'}", str(tmp / "blobs"))
    try:
        yield running
    finally:
        running.stop()


def reflect(channel: grpc.Channel, **request: str) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10
    )
    return response


def served_files(
    response: reflection_pb2.ServerReflectionResponse,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    return {f.name: f for f in files}


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    loaded = load_descriptor_set()
    assert loaded is not None, "descriptor_set.binpb missing: run make generate"
    return loaded


def test_descriptor_set_holds_every_proto_with_source_info() -> None:
    files = {f.name: f for f in descriptor_set().file}
    ours = {name for name in files if name.startswith("modelregistry/")}
    assert ours == {f"modelregistry/v1/{p.name}" for p in PROTO_DIR.glob("*.proto")}
    for name, file in files.items():
        assert file.source_code_info.location, name
    # Every import is in the set too (served with comments as well).
    for file in files.values():
        assert set(file.dependency) <= set(files), file.name


def test_served_files_are_the_generated_ones_plus_source_info(server: RunningServer) -> None:
    """Each file of the set, asked for by name: the generated code's descriptor exactly
    (what the server runs), carrying the set's source info; and the set is fresh (equal to
    the generated code apart from source info and default json_names)."""
    for file in descriptor_set().file:
        served = served_files(reflect(server.channel, file_by_filename=file.name))[file.name]
        generated = registered_file(descriptor_pool.Default(), file.name)
        assert generated is not None, f"{file.name} is not registered by the generated code"
        assert comparable(file) == comparable(generated), f"{file.name}: run make generate"
        assert served.source_code_info == file.source_code_info, file.name
        served.ClearField("source_code_info")
        assert served == generated, file.name
    assert commented_files(descriptor_set())[1] == []


def test_symbol_answers_carry_comments_for_every_file(server: RunningServer) -> None:
    files = served_files(reflect(server.channel, file_containing_symbol="modelregistry.v1.Model"))
    assert "modelregistry/v1/models.proto" in files
    for name, file in files.items():
        assert file.source_code_info.location, name


def test_a_method_symbol_resolves_to_its_file(server: RunningServer) -> None:
    """The reflection protocol's symbols include methods; grpcio-reflection's pools did not
    know them, so `grpcurl describe Service.Method` answered NOT_FOUND."""
    files = served_files(
        reflect(server.channel, file_containing_symbol="modelregistry.v1.ModelService.GetModel")
    )
    assert "modelregistry/v1/model_service.proto" in files
    for missing in ["modelregistry.v1.ModelService.NoSuchMethod", "modelregistry.v1.Nope.Get"]:
        response = reflect(server.channel, file_containing_symbol=missing)
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], missing


def test_health_and_reflection_are_still_described(server: RunningServer) -> None:
    for symbol, name in [
        ("grpc.health.v1.Health", "grpc_health/v1/health.proto"),
        ("grpc.reflection.v1alpha.ServerReflection", "grpc_reflection/v1alpha/reflection.proto"),
    ]:
        assert name in served_files(reflect(server.channel, file_containing_symbol=symbol))


def test_a_stale_set_leaves_the_changed_file_without_comments() -> None:
    stale = descriptor_pb2.FileDescriptorSet()
    stale.CopyFrom(descriptor_set())
    changed = next(f for f in stale.file if f.name == "modelregistry/v1/models.proto")
    changed.message_type[0].field[0].name += "_renamed"
    files, mismatched = commented_files(stale)
    assert mismatched == ["modelregistry/v1/models.proto"]
    assert "modelregistry/v1/models.proto" not in files
    assert "modelregistry/v1/model_service.proto" in files


# --- grpcurl -----------------------------------------------------------------------------


def grpcurl(server: RunningServer, *args: str) -> str:
    exe = tools_bin_dir() / "grpcurl"
    found = str(exe) if exe.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail(f"grpcurl not found in {tools_bin_dir()}: run `make tools`")
    done = subprocess.run(
        [found, "-plaintext", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"grpcurl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def assert_printed(output: str, comment: list[str]) -> None:
    assert has_block(output, comment), f"{comment} not in:\n{output}"


def test_grpcurl_describe_rpc_prints_its_comment(server: RunningServer) -> None:
    out = grpcurl(server, "describe", "modelregistry.v1.ModelService.GetModel")
    assert "modelregistry.v1.ModelService.GetModel is a method:" in out
    assert_printed(out, leading_comment("model_service.proto", r"^\s*rpc GetModel\("))
    out = grpcurl(server, "describe", "modelregistry.v1.VersionService.UploadArtifacts")
    assert_printed(out, leading_comment("version_service.proto", r"^\s*rpc UploadArtifacts\("))


def test_grpcurl_describe_message_prints_message_and_field_comments(
    server: RunningServer,
) -> None:
    out = grpcurl(server, "describe", "modelregistry.v1.ListModelsRequest")
    assert "modelregistry.v1.ListModelsRequest is a message:" in out
    message = r"^message ListModelsRequest \{"
    assert_printed(out, leading_comment("model_service.proto", message))
    for field in ["page_size", "page_token", "framework"]:
        comment = leading_comment("model_service.proto", rf"^\s+\S+ {field} = \d+;", after=message)
        assert_printed(out, comment)


def test_grpcurl_describe_field_and_service(server: RunningServer) -> None:
    out = grpcurl(server, "describe", "modelregistry.v1.Model.framework")
    assert_printed(
        out, leading_comment("models.proto", r"^\s+string framework = ", after=r"^message Model ")
    )
    out = grpcurl(server, "describe", "modelregistry.v1.ModelService")
    assert_printed(out, leading_comment("model_service.proto", r"^service ModelService \{"))
    assert_printed(out, leading_comment("model_service.proto", r"^\s*rpc CreateModel\("))
