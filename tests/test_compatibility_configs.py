"""ModelService.Get/PutOptimizedConfig over a real server, on both backends."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from modelregistry.v1 import compatibility_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2
from support.registry import Client
from support.status import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NAME = "models/vision/optimizedConfigs/pixel-8"


def struct(doc: dict[str, object]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(doc)
    return s


def put(c: Client, name: str, doc: dict[str, object] | None) -> cpb.OptimizedConfig:
    oc = cpb.OptimizedConfig(name=name)
    if doc is not None:
        oc.config.CopyFrom(struct(doc))
    return c.models.PutOptimizedConfig(pb.PutOptimizedConfigRequest(optimized_config=oc))


def get(c: Client, name: str) -> cpb.OptimizedConfig:
    return c.models.GetOptimizedConfig(pb.GetOptimizedConfigRequest(name=name))


@pytest.fixture
def model(client: Client) -> str:
    client.models.CreateModel(
        pb.CreateModelRequest(model_id="vision", model=models_pb2.Model(framework="onnx"))
    )
    return "vision"


CONFIG = {
    "execution_provider": "nnapi",
    "threads": 4,
    "graph_optimization_level": "all",
    "inputs": [{"name": "image", "shape": [1, 3, 224, 224]}],
    "fp16_relaxed": True,
    "notes": None,
}


def test_put_get_revisions_latest_wins(client: Client, model: str) -> None:
    first = put(client, NAME, CONFIG)
    assert first.name == NAME and first.revision == 1
    assert first.create_time.seconds > 0
    assert json_format.MessageToDict(first.config) == CONFIG
    assert get(client, NAME) == first
    second = put(client, NAME, {**CONFIG, "threads": 2})
    assert second.revision == 2
    got = get(client, NAME)
    assert got == second and got.config["threads"] == 2
    # Device types are independent.
    other = put(client, "models/vision/optimizedConfigs/raspberry-pi-5", {"threads": 4})
    assert other.revision == 1
    assert get(client, NAME).revision == 2


def test_none_stored_is_not_found_with_a_clear_message(client: Client, model: str) -> None:
    err = expect_error(grpc.StatusCode.NOT_FOUND, get, client, NAME)
    assert err.message == (
        "no optimized config stored for device type 'pixel-8' of model 'models/vision': "
        "store one with PutOptimizedConfig"
    )
    assert err.metadata["resource_name"] == NAME


def test_foreign_and_unknown_models(client: Client, other_client: Client, model: str) -> None:
    put(client, NAME, CONFIG)
    expect_error(grpc.StatusCode.NOT_FOUND, get, other_client, NAME)
    expect_error(grpc.StatusCode.NOT_FOUND, put, other_client, NAME, CONFIG)
    err = expect_error(
        grpc.StatusCode.NOT_FOUND, put, client, "models/nope/optimizedConfigs/x", {"a": 1}
    )
    assert err.metadata["resource_name"] == "models/nope"
    assert get(client, NAME).revision == 1


@pytest.mark.parametrize(
    ("name", "doc", "fields"),
    [
        (NAME, None, {"optimized_config.config"}),
        (NAME, {}, {"optimized_config.config"}),
        (NAME, {"x": math.nan}, {"optimized_config.config"}),
        (NAME, {"x": math.inf}, {"optimized_config.config"}),
        (NAME, {"blob": "x" * (256 * 1024)}, {"optimized_config.config"}),
        ("models/vision/optimizedConfigs/Pixel 8", {"a": 1}, {"optimized_config.name"}),
        ("models/vision/configs/pixel-8", {"a": 1}, {"optimized_config.name"}),
        ("", {}, {"optimized_config.name", "optimized_config.config"}),
    ],
)
def test_bad_puts_store_nothing(
    client: Client, model: str, name: str, doc: dict[str, object] | None, fields: set[str]
) -> None:
    err = expect_error(INVALID, put, client, name, doc)
    assert set(err.field_violations) == fields
    expect_error(grpc.StatusCode.NOT_FOUND, get, client, NAME)


def test_size_cap_is_256_kib_of_compact_json(client: Client, model: str) -> None:
    # {"blob":"..."} is 11 bytes of JSON around the string.
    assert put(client, NAME, {"blob": "x" * (256 * 1024 - 11)}).revision == 1
    err = expect_error(INVALID, put, client, NAME, {"blob": "x" * (256 * 1024 - 10)})
    assert "262145 bytes" in err.field_violations["optimized_config.config"]


def test_deep_nesting_is_rejected(client: Client, model: str) -> None:
    # Lists nest two protobuf levels deep each (Value, ListValue): 40 stay under
    # protobuf's own limit of 100, and exceed ours of 32.
    nested: object = [1]
    for _ in range(40):
        nested = [nested]
    doc = {"n": nested}
    err = expect_error(INVALID, put, client, NAME, doc)
    assert "nests deeper" in err.field_violations["optimized_config.config"]


def test_malformed_get_names(client: Client) -> None:
    for bad in (
        "",
        "models/vision",
        "models/vision/optimizedConfigs/",
        "models/x/optimizedConfigs/A",
    ):
        expect_error(INVALID, get, client, bad)
