"""VersionService CRUD, paging, isolation, publish rules and the monthly quota, over a real
server on both backends."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import models_pb2
from modelregistry.v1 import version_service_pb2 as vpb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.uploads import F, row_counts, store_of, upload

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DRAFT = models_pb2.ModelVersion.STATE_DRAFT
PUBLISHED = models_pb2.ModelVersion.STATE_PUBLISHED


def model(c: Client, model_id: str = "m", **kw: object) -> models_pb2.Model:
    return c.models.CreateModel(
        mpb.CreateModelRequest(model_id=model_id, model=models_pb2.Model(framework="onnx"), **kw)
    )


def version(c: Client, model_id: str, version_id: str, **kw: object) -> models_pb2.ModelVersion:
    return c.versions.CreateVersion(
        vpb.CreateVersionRequest(
            parent=f"models/{model_id}",
            version_id=version_id,
            version=models_pb2.ModelVersion(**kw),
        )
    )


def get(c: Client, name: str) -> models_pb2.ModelVersion:
    return c.versions.GetVersion(vpb.GetVersionRequest(name=name))


def list_ids(c: Client, model_id: str) -> list[str]:
    resp = c.versions.ListVersions(
        vpb.ListVersionsRequest(parent=f"models/{model_id}", page_size=1000)
    )
    return [v.version_id for v in resp.versions]


def test_create_get_by_name_and_by_uid(client: Client) -> None:
    model(client, "resnet")
    created = version(client, "resnet", "1.0.0", description="first", labels={"run": "42"})
    assert created.name == "models/resnet/versions/1.0.0"
    assert created.version_id == "1.0.0"
    assert created.state == DRAFT
    assert created.description == "first"
    assert dict(created.labels) == {"run": "42"}
    assert created.uid and created.etag and created.create_time.seconds > 0
    assert not created.HasField("publish_time")
    assert created.catalog_version == ""
    assert get(client, "models/resnet/versions/1.0.0") == created
    assert get(client, f"models/-/versions/{created.uid}") == created
    m = client.models.GetModel(mpb.GetModelRequest(name="models/resnet"))
    assert m.version_count == 1


def test_create_needs_an_existing_model_and_a_fresh_version(client: Client) -> None:
    err = expect_error(NOT_FOUND, version, client, "ghost", "1")
    assert err.metadata["resource_name"] == "models/ghost"
    model(client, "m")
    version(client, "m", "1")
    err = expect_error(grpc.StatusCode.ALREADY_EXISTS, version, client, "m", "1")
    assert err.metadata["resource_name"] == "models/m/versions/1"


@pytest.mark.parametrize(
    ("parent", "version_id", "kw", "bad_field"),
    [
        ("models/m", "", {}, "version_id"),
        ("models/m", "has space", {}, "version_id"),
        ("models/m", "-x", {}, "version_id"),
        ("models/m", "v" * 65, {}, "version_id"),
        ("models/m", "1/2", {}, "version_id"),
        ("model/m", "1", {}, "parent"),
        ("models/M", "1", {}, "parent"),
        ("models/m", "1", {"description": "d" * 5000}, "version.description"),
        ("models/m", "1", {"labels": {f"k{i}": "v" for i in range(65)}}, "version.labels"),
    ],
)
def test_bad_create_is_invalid_and_writes_nothing(
    client: Client, parent: str, version_id: str, kw: dict[str, object], bad_field: str
) -> None:
    model(client, "m")
    err = expect_error(
        INVALID,
        client.versions.CreateVersion,
        vpb.CreateVersionRequest(
            parent=parent, version_id=version_id, version=models_pb2.ModelVersion(**kw)
        ),
    )
    assert bad_field in err.field_violations
    assert list_ids(client, "m") == []


def test_list_newest_first_with_paging(client: Client) -> None:
    model(client, "m")
    ids = [f"1.{i}" for i in range(12)]
    for v in ids:
        version(client, "m", v)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = client.versions.ListVersions(
            vpb.ListVersionsRequest(parent="models/m", page_size=5, page_token=token)
        )
        assert len(resp.versions) <= 5
        seen += [v.version_id for v in resp.versions]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    assert pages == 3
    first = client.versions.ListVersions(vpb.ListVersionsRequest(parent="models/m", page_size=1))
    model(client, "other")
    err = expect_error(
        INVALID,
        client.versions.ListVersions,
        vpb.ListVersionsRequest(
            parent="models/other", page_size=1, page_token=first.next_page_token
        ),
    )
    assert "page_token" in err.field_violations
    expect_error(
        NOT_FOUND, client.versions.ListVersions, vpb.ListVersionsRequest(parent="models/nope")
    )


def test_versions_are_isolated_between_orgs(client: Client, other_client: Client) -> None:
    model(client, "shared-name")
    mine = version(client, "shared-name", "1")
    model(other_client, "shared-name")
    assert list_ids(other_client, "shared-name") == []
    for name in ["models/shared-name/versions/1", f"models/-/versions/{mine.uid}"]:
        expect_error(NOT_FOUND, get, other_client, name)
        expect_error(
            NOT_FOUND, other_client.versions.DeleteVersion, vpb.DeleteVersionRequest(name=name)
        )
        expect_error(
            NOT_FOUND,
            other_client.versions.PublishVersion,
            vpb.PublishVersionRequest(name=name),
        )
    assert get(client, mine.name) == mine


def test_get_malformed_names(client: Client) -> None:
    for name in ["", "models/m", "models/m/versions", "models/-/versions/not-a-uid", "x/y/z/w"]:
        err = expect_error(INVALID, get, client, name)
        assert "name" in err.field_violations


def test_delete_cascades_and_keeps_bytes(registry: RunningServer, client: Client) -> None:
    resp = upload(client, "models/m/versions/1", F("model.onnx", b"weights" * 100))
    key_count = len(list(store_of(registry).list()))
    v = get(client, "models/m/versions/1")
    assert v.catalog_version == resp.catalog_version.name
    before = row_counts(registry, client)
    assert before["packages"] == 1 and before["resources"] == 1
    err = expect_error(
        grpc.StatusCode.ABORTED,
        client.versions.DeleteVersion,
        vpb.DeleteVersionRequest(name=v.name, etag="stale"),
    )
    assert err.reason == "ETAG_MISMATCH"
    client.versions.DeleteVersion(vpb.DeleteVersionRequest(name=v.name, etag=v.etag))
    expect_error(NOT_FOUND, get, client, v.name)
    after = row_counts(registry, client)
    assert after["versions"] == after["catalog_versions"] == 0
    assert after["packages"] == after["resources"] == 0
    assert after["models"] == 1 and after["variants"] == 1  # the model and variant stay
    assert len(list(store_of(registry).list())) == key_count  # bytes are left for the GC
    expect_error(NOT_FOUND, client.versions.DeleteVersion, vpb.DeleteVersionRequest(name=v.name))


def test_delete_by_uid(client: Client) -> None:
    model(client, "m")
    v = version(client, "m", "2")
    client.versions.DeleteVersion(vpb.DeleteVersionRequest(name=f"models/-/versions/{v.uid}"))
    assert list_ids(client, "m") == []


def test_publish_needs_an_artifact(client: Client) -> None:
    model(client, "m")
    v = version(client, "m", "1")
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        client.versions.PublishVersion,
        vpb.PublishVersionRequest(name=v.name),
    )
    assert [x.type for x in err.precondition_violations] == ["NO_ARTIFACTS"]
    assert err.precondition_violations[0].subject == v.name
    assert get(client, v.name).state == DRAFT


def test_publish_flips_draft_once(client: Client) -> None:
    upload(client, "models/m/versions/1", F("model.onnx", b"x" * 1000))
    draft = get(client, "models/m/versions/1")
    published = client.versions.PublishVersion(vpb.PublishVersionRequest(name=draft.name))
    assert published.state == PUBLISHED
    assert published.HasField("publish_time")
    assert published.etag != draft.etag
    assert get(client, draft.name) == published
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        client.versions.PublishVersion,
        vpb.PublishVersionRequest(name=draft.name),
    )
    assert err.reason == "VERSION_NOT_DRAFT"
    # A published version takes no more artifacts.
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        upload,
        client,
        "models/m/versions/1",
        F("more.onnx", b"y" * 10),
    )
    assert err.reason == "VERSION_NOT_DRAFT"


def test_publish_refuses_a_missing_object(registry: RunningServer, client: Client) -> None:
    resp = upload(client, "models/m/versions/1", F("model.onnx", b"z" * 4096))
    resource = resp.packages[0].resources[0]
    # Lose the bytes behind the server's back.
    from support.uploads import objects

    (key,) = objects(registry, client)
    store_of(registry).delete(key)
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        client.versions.PublishVersion,
        vpb.PublishVersionRequest(name="models/m/versions/1"),
    )
    assert [(x.type, x.subject) for x in err.precondition_violations] == [
        ("OBJECT_MISSING", resource.name)
    ]
    assert get(client, "models/m/versions/1").state == DRAFT


def test_monthly_version_quota(registry: RunningServer) -> None:
    c = registry.new_org(plan="free")  # 20 new versions per month
    model(c, "m")
    for i in range(19):
        version(c, "m", f"0.{i}")
    upload(c, "models/m/versions/1.0", F("model.onnx", b"w" * 100))  # the 20th
    # Adding to an existing version creates none: still fine.
    upload(c, "models/m/versions/1.0", F("second.onnx", b"v" * 100))
    err = expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, version, c, "m", "over")
    assert err.reason == "QUOTA_EXCEEDED"
    assert err.quota_violations and "model_versions_monthly" in err.quota_violations[0].description
    before = row_counts(registry, c)
    err = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        upload,
        c,
        "models/m/versions/over",
        F("model.onnx", b"w" * 100),
    )
    assert err.quota_violations
    assert row_counts(registry, c) == before
    # Deleting a version frees its slot.
    c.versions.DeleteVersion(vpb.DeleteVersionRequest(name="models/m/versions/0.0"))
    version(c, "m", "again")


def test_concurrent_writers_of_one_model_all_succeed(client: Client) -> None:
    """Model updates and version creates race on one model: every call succeeds. (On
    PostgreSQL an update that locked the model row before the org's, against a create
    holding the org's and writing the model row, deadlocked and failed one of them.)"""
    model(client, "busy")
    failures: list[grpc.RpcError] = []

    def updater(n: int) -> None:
        for i in range(10):
            try:
                client.models.UpdateModel(
                    mpb.UpdateModelRequest(
                        model=models_pb2.Model(name="models/busy", description=f"{n}.{i}"),
                        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                    )
                )
            except grpc.RpcError as exc:
                failures.append(exc)

    def creator(n: int) -> None:
        for i in range(10):
            try:
                version(client, "busy", f"{n}.{i}")
            except grpc.RpcError as exc:
                failures.append(exc)

    threads = [
        threading.Thread(target=fn, args=(n,)) for n in range(2) for fn in (updater, creator)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, [(f.code(), f.details()) for f in failures]
    assert len(list_ids(client, "busy")) == 20
