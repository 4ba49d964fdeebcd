"""ModelService over a real server, on both backends."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2
from support.registry import Client, RunningServer
from support.status import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def create(c: Client, model_id: str, framework: str = "onnx", **kw: object) -> models_pb2.Model:
    disabled = bool(kw.pop("disabled", False))
    return c.models.CreateModel(
        pb.CreateModelRequest(
            model_id=model_id, model=models_pb2.Model(framework=framework, **kw), disabled=disabled
        )
    )


def list_all(c: Client, **kw: object) -> list[str]:
    return [
        m.model_id for m in c.models.ListModels(pb.ListModelsRequest(page_size=1000, **kw)).models
    ]


def test_create_get_roundtrip(client: Client) -> None:
    created = create(
        client, "resnet50", description="an image classifier", tags=["vision", "cnn", "vision"]
    )
    assert created.name == "models/resnet50"
    assert created.model_id == "resnet50"
    assert created.framework == "onnx"
    assert list(created.tags) == ["vision", "cnn"]  # duplicates removed, order kept
    assert created.enabled
    assert created.uid and created.etag
    assert created.create_time.seconds > 0
    got = client.models.GetModel(pb.GetModelRequest(name="models/resnet50"))
    assert got == created


def test_create_disabled(client: Client) -> None:
    assert not create(client, "quiet", disabled=True).enabled


def test_duplicate_is_already_exists(client: Client) -> None:
    create(client, "dup")
    err = expect_error(grpc.StatusCode.ALREADY_EXISTS, create, client, "dup")
    assert err.metadata["resource_name"] == "models/dup"


@pytest.mark.parametrize(
    ("model_id", "framework", "bad_field"),
    [
        ("", "onnx", "model_id"),
        ("Bad Name", "onnx", "model_id"),
        ("UPPER", "onnx", "model_id"),
        ("-leading", "onnx", "model_id"),
        ("x" * 65, "onnx", "model_id"),
        ("../etc", "onnx", "model_id"),
        ("ok", "", "model.framework"),
        ("ok", "Py Torch", "model.framework"),
    ],
)
def test_bad_create_is_invalid_and_writes_nothing(
    client: Client, model_id: str, framework: str, bad_field: str
) -> None:
    err = expect_error(INVALID, create, client, model_id, framework)
    assert bad_field in err.field_violations
    assert list_all(client) == []


def test_bad_tags_and_long_description(client: Client) -> None:
    err = expect_error(INVALID, create, client, "m", tags=["ok", "Not OK"], description="d" * 5000)
    assert set(err.field_violations) == {"model.tags[1]", "model.description"}
    assert list_all(client) == []


def test_get_unknown_and_malformed_names(client: Client) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND, client.models.GetModel, pb.GetModelRequest(name="models/nope")
    )
    for name in ["", "nope", "models/", "models/a/b", "projects/x", "models/Bad"]:
        err = expect_error(INVALID, client.models.GetModel, pb.GetModelRequest(name=name))
        assert "name" in err.field_violations


def test_paging_through_more_than_one_page(client: Client) -> None:
    ids = [f"m{i:03d}" for i in range(23)]
    for model_id in ids:
        create(client, model_id)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = client.models.ListModels(
            pb.ListModelsRequest(
                page_size=5, page_token=token, order_by=pb.MODEL_ORDER_MODEL_ID_ASC
            )
        )
        assert resp.total_size == 23
        assert len(resp.models) <= 5
        seen += [m.model_id for m in resp.models]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert seen == ids
    assert pages == 5


def test_page_token_bound_to_filters(client: Client) -> None:
    for i in range(3):
        create(client, f"p{i}")
    first = client.models.ListModels(pb.ListModelsRequest(page_size=1))
    assert first.next_page_token
    err = expect_error(
        INVALID,
        client.models.ListModels,
        pb.ListModelsRequest(page_size=1, page_token=first.next_page_token, framework="pytorch"),
    )
    assert "page_token" in err.field_violations
    for token in ["garbage", "!!!", "eyJvIjogLTF9"]:
        err = expect_error(
            INVALID, client.models.ListModels, pb.ListModelsRequest(page_token=token)
        )
        assert "page_token" in err.field_violations


def test_negative_page_size(client: Client) -> None:
    err = expect_error(INVALID, client.models.ListModels, pb.ListModelsRequest(page_size=-1))
    assert "page_size" in err.field_violations


def test_filters(client: Client) -> None:
    create(client, "detector", "onnx", tags=["vision"], description="Finds OBJECTS")
    create(client, "speller", "pytorch", tags=["text"])
    create(client, "old-detector", "onnx", tags=["vision", "legacy"], disabled=True)
    assert sorted(list_all(client, framework="onnx")) == ["detector", "old-detector"]
    assert list_all(client, framework="tflite") == []
    assert sorted(list_all(client, tag="vision")) == ["detector", "old-detector"]
    assert list_all(client, tag="legacy") == ["old-detector"]
    assert list_all(client, enabled=False) == ["old-detector"]
    assert sorted(list_all(client, enabled=True)) == ["detector", "speller"]
    assert list_all(client, search="objects") == ["detector"]
    assert sorted(list_all(client, search="detect")) == ["detector", "old-detector"]
    assert sorted(list_all(client, search="DeTeCt")) == ["detector", "old-detector"]
    assert list_all(client, search="100%") == []
    assert list_all(client, framework="onnx", tag="vision", enabled=True) == ["detector"]
    assert list_all(client, order_by=pb.MODEL_ORDER_MODEL_ID_DESC) == [
        "speller",
        "old-detector",
        "detector",
    ]


def test_bad_filter_values(client: Client) -> None:
    for req, bad in [
        (pb.ListModelsRequest(framework="Not A Framework"), "framework"),
        (pb.ListModelsRequest(tag="Bad Tag"), "tag"),
        (pb.ListModelsRequest(capability="no spaces"), "capability"),
        (pb.ListModelsRequest(search="x" * 200), "search"),
        (pb.ListModelsRequest(order_by=99), "order_by"),  # type: ignore[arg-type]
    ]:
        err = expect_error(INVALID, client.models.ListModels, req)
        assert bad in err.field_violations


def update(c: Client, model: models_pb2.Model, *paths: str) -> models_pb2.Model:
    return c.models.UpdateModel(
        pb.UpdateModelRequest(model=model, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    )


def test_update_with_mask(client: Client) -> None:
    m = create(client, "upd", description="before", tags=["a"])
    changed = update(
        client,
        models_pb2.Model(name=m.name, description="after", framework="ignored!"),
        "description",
    )
    assert changed.description == "after"
    assert changed.framework == "onnx"  # not in the mask: untouched (even though invalid)
    assert list(changed.tags) == ["a"]
    assert changed.etag != m.etag
    disabled = update(client, models_pb2.Model(name=m.name, enabled=False), "enabled")
    assert not disabled.enabled
    everything = update(
        client,
        models_pb2.Model(
            name=m.name, framework="pytorch", description="", tags=["b"], enabled=True
        ),
        "*",
    )
    assert (
        everything.framework,
        everything.description,
        list(everything.tags),
        everything.enabled,
    ) == (
        "pytorch",
        "",
        ["b"],
        True,
    )


def test_update_rejects_bad_masks_and_stale_etags(client: Client) -> None:
    m = create(client, "strict")
    for paths in [[], ["name"], ["uid"], ["create_time"], ["nonsense"]]:
        err = expect_error(INVALID, update, client, models_pb2.Model(name=m.name), *paths)
        assert "update_mask" in err.field_violations
    err = expect_error(
        INVALID, update, client, models_pb2.Model(name=m.name, framework=""), "framework"
    )
    assert "model.framework" in err.field_violations
    update(client, models_pb2.Model(name=m.name, description="v2", etag=m.etag), "description")
    err = expect_error(
        grpc.StatusCode.ABORTED,
        update,
        client,
        models_pb2.Model(name=m.name, description="v3", etag=m.etag),
        "description",
    )
    assert err.reason == "ETAG_MISMATCH"
    assert client.models.GetModel(pb.GetModelRequest(name=m.name)).description == "v2"
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        update,
        client,
        models_pb2.Model(name="models/ghost"),
        "description",
    )


def test_delete(client: Client) -> None:
    m = create(client, "gone")
    expect_error(
        grpc.StatusCode.ABORTED,
        client.models.DeleteModel,
        pb.DeleteModelRequest(name=m.name, etag="stale"),
    )
    client.models.DeleteModel(pb.DeleteModelRequest(name=m.name, etag=m.etag))
    expect_error(grpc.StatusCode.NOT_FOUND, client.models.GetModel, pb.GetModelRequest(name=m.name))
    expect_error(
        grpc.StatusCode.NOT_FOUND, client.models.DeleteModel, pb.DeleteModelRequest(name=m.name)
    )
    create(client, "gone")  # the id is free again


def test_filter_options(client: Client) -> None:
    create(client, "a", "onnx", tags=["vision", "edge"])
    create(client, "b", "pytorch", tags=["text"])
    create(client, "c", "onnx")
    opts = client.models.ListModelFilterOptions(pb.ListModelFilterOptionsRequest())
    assert list(opts.frameworks) == ["onnx", "pytorch"]
    assert list(opts.tags) == ["edge", "text", "vision"]
    assert list(opts.capabilities) == []


def test_org_isolation(client: Client, other_client: Client) -> None:
    m = create(client, "secret")
    assert list_all(other_client) == []
    for call, req in [
        (other_client.models.GetModel, pb.GetModelRequest(name=m.name)),
        (other_client.models.DeleteModel, pb.DeleteModelRequest(name=m.name)),
        (
            other_client.models.UpdateModel,
            pb.UpdateModelRequest(
                model=models_pb2.Model(name=m.name, description="pwned"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
        ),
    ]:
        expect_error(grpc.StatusCode.NOT_FOUND, call, req)
    assert client.models.GetModel(pb.GetModelRequest(name=m.name)).description == ""
    # The same id is free for the other org.
    assert create(other_client, "secret").uid != m.uid
    assert other_client.models.ListModelFilterOptions(
        pb.ListModelFilterOptionsRequest()
    ).frameworks == ["onnx"]


def test_missing_bad_and_revoked_keys(registry: RunningServer, client: Client) -> None:
    from modelregistry.v1 import model_service_pb2_grpc

    bare = model_service_pb2_grpc.ModelServiceStub(registry.channel)
    req = pb.ListModelsRequest()
    err = expect_error(grpc.StatusCode.UNAUTHENTICATED, bare.ListModels, req)
    assert err.reason == "API_KEY_MISSING"
    for header in [
        "Bearer mr_0000000000000000_" + "A" * 43,
        "Bearer nonsense",
        "Basic abc",
        "Bearer",
    ]:
        err = expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            bare.ListModels,
            req,
            metadata=[("authorization", header)],
        )
        assert err.reason in {"API_KEY_INVALID", "API_KEY_MALFORMED"}
    token = registry.add_key(client.org)
    assert bare.ListModels(req, metadata=[("authorization", f"Bearer {token}")]).total_size == 0
    registry.revoke_key(token)
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        bare.ListModels,
        req,
        metadata=[("authorization", f"Bearer {token}")],
    )
