"""CatalogService over a real server, on both backends: variants and their scopes,
override precedence, catalog versions and deprecation, packages, download URLs; plus
ModelService.ListModelArtifactPackages, which resolves through the same rule."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from modelregistry.v1 import catalog_pb2, models_pb2
from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as mpb
from support.catalog import CatalogDb, Pkg, Res, create_variant, sha, unique, update_variant
from support.registry import Client, RunningServer
from support.status import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ACTIVE = catalog_pb2.CatalogVersion.STATE_ACTIVE
DEPRECATED = catalog_pb2.CatalogVersion.STATE_DEPRECATED


@pytest.fixture(scope="module")
def db(registry: RunningServer) -> Iterator[CatalogDb]:
    helper = CatalogDb(registry)
    yield helper
    helper.close()


@pytest.fixture
def admin(registry: RunningServer) -> Client:
    return registry.new_org(admin=True)


def list_variants(c: Client, **kw: object) -> list[catalog_pb2.Variant]:
    return list(c.catalog.ListVariants(cpb.ListVariantsRequest(page_size=1000, **kw)).variants)


def production(registry: RunningServer) -> bool:
    return registry.object_store.startswith("s3://")


# ---------------------------------------------------------------------------------------
# variants


def test_blessed_create_needs_an_admin_key_and_writes_nothing_without(
    client: Client, admin: Client
) -> None:
    name = unique("blessed")
    err = expect_error(DENIED, create_variant, client, name, blessed=True)
    assert err.reason == "ADMIN_KEY_REQUIRED"
    assert name not in {v.model_id for v in list_variants(client, search=name)}
    created = create_variant(
        admin, name, blessed=True, family="mobilenet", task_taxonomy=["image-classification"]
    )
    assert created.blessed and created.model_id == name
    assert created.name == f"variants/{created.uid}"
    # visible to every org, including one that was not involved
    assert client.catalog.GetVariant(cpb.GetVariantRequest(name=created.name)) == created


def test_override_with_ordinary_key_and_duplicates(client: Client, admin: Client) -> None:
    name = unique("shared")
    blessed = create_variant(admin, name, blessed=True)
    own = create_variant(client, name, family="custom", parameter_count=7, license="mit")
    assert not own.blessed and own.uid != blessed.uid
    assert (own.family, own.parameter_count, own.license) == ("custom", 7, "mit")
    err = expect_error(grpc.StatusCode.ALREADY_EXISTS, create_variant, client, name)
    assert err.metadata["resource_name"] == name
    expect_error(grpc.StatusCode.ALREADY_EXISTS, create_variant, admin, name, blessed=True)


def test_bad_variant_fields_are_invalid_and_write_nothing(client: Client) -> None:
    err = expect_error(
        INVALID,
        create_variant,
        client,
        "Bad Name",
        task_taxonomy=["ok", "Not OK"],
        parameter_count=-1,
        license="x" * 65,
        family="f" * 65,
        description="d" * 5000,
    )
    assert set(err.field_violations) == {
        "variant.model_id",
        "variant.task_taxonomy[1]",
        "variant.parameter_count",
        "variant.license",
        "variant.family",
        "variant.description",
    }
    assert list_variants(client, scope=cpb.VARIANT_SCOPE_ORG) == []


def test_foreign_override_is_not_found_everywhere(
    client: Client, other_client: Client, db: CatalogDb
) -> None:
    name = unique("private")
    theirs = create_variant(other_client, name)
    version = db.add_version(theirs.uid, "1.0", [Pkg()])
    calls = [
        (client.catalog.GetVariant, cpb.GetVariantRequest(name=theirs.name)),
        (client.catalog.ResolveVariant, cpb.ResolveVariantRequest(model_id=name)),
        (client.catalog.ListCatalogVersions, cpb.ListCatalogVersionsRequest(parent=theirs.name)),
        (client.catalog.GetCatalogVersion, cpb.GetCatalogVersionRequest(name=version)),
        (
            client.catalog.GetCatalogVersion,
            cpb.GetCatalogVersionRequest(name="variants/-/versions/" + version.split("/")[-1]),
        ),
        (
            client.catalog.DeprecateCatalogVersion,
            cpb.DeprecateCatalogVersionRequest(name=version),
        ),
        (
            client.catalog.GetCatalogVersionDownloadUrls,
            cpb.GetCatalogVersionDownloadUrlsRequest(name=version),
        ),
        (
            client.catalog.ListCatalogVersionPackages,
            cpb.ListCatalogVersionPackagesRequest(parent=version),
        ),
    ]
    for method, request in calls:
        expect_error(NOT_FOUND, method, request)
    expect_error(NOT_FOUND, update_variant, client, theirs.name, ["family"], family="x")
    assert name not in {v.model_id for v in list_variants(client, search=name)}
    # still theirs, untouched
    got = other_client.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=version))
    assert got.state == ACTIVE


def test_malformed_names_are_invalid(client: Client) -> None:
    for name in ["", "variants", "variants/abc", "models/x", "variants/-"]:
        err = expect_error(INVALID, client.catalog.GetVariant, cpb.GetVariantRequest(name=name))
        assert "name" in err.field_violations
    for name in ["variants/-/versions/-", "variants/x/versions/y", "variants/-/versions"]:
        expect_error(
            INVALID, client.catalog.GetCatalogVersion, cpb.GetCatalogVersionRequest(name=name)
        )
    expect_error(
        NOT_FOUND,
        client.catalog.GetVariant,
        cpb.GetVariantRequest(name="variants/00000000-0000-4000-8000-000000000000"),
    )


def test_list_scopes_filters_order_and_paging(client: Client, admin: Client) -> None:
    tag = unique("lst")
    for suffix in ["a", "b", "c"]:
        create_variant(admin, f"{tag}-{suffix}", blessed=True, task_taxonomy=["vision"])
    create_variant(client, f"{tag}-b", task_taxonomy=["speech"])
    create_variant(client, f"{tag}-d", task_taxonomy=["vision"])

    def scoped(scope: int, **kw: object) -> list[tuple[str, bool]]:
        return [
            (v.model_id[-1], v.blessed)
            for v in list_variants(client, search=tag, scope=scope, **kw)
        ]

    assert scoped(cpb.VARIANT_SCOPE_UNSPECIFIED) == [
        ("a", True), ("b", False), ("b", True), ("c", True), ("d", False),
    ]  # fmt: skip
    assert scoped(cpb.VARIANT_SCOPE_BLESSED) == [("a", True), ("b", True), ("c", True)]
    assert scoped(cpb.VARIANT_SCOPE_ORG) == [("b", False), ("d", False)]
    assert scoped(cpb.VARIANT_SCOPE_RESOLVED) == [
        ("a", True), ("b", False), ("c", True), ("d", False),
    ]  # fmt: skip
    assert scoped(cpb.VARIANT_SCOPE_RESOLVED, task="vision") == [
        ("a", True), ("c", True), ("d", False),
    ]  # fmt: skip
    # another org sees only the blessed rows
    other = [v.model_id[-1] for v in list_variants(admin, search=tag)]
    assert other == ["a", "b", "c"]

    seen: list[str] = []
    token = ""
    while True:
        resp = client.catalog.ListVariants(
            cpb.ListVariantsRequest(page_size=2, page_token=token, search=tag)
        )
        assert len(resp.variants) <= 2
        seen += [v.uid for v in resp.variants]
        token = resp.next_page_token
        if not token:
            break
    assert seen == [v.uid for v in list_variants(client, search=tag)]
    err = expect_error(
        INVALID,
        client.catalog.ListVariants,
        cpb.ListVariantsRequest(page_size=2, page_token=token or "bogus", search="other"),
    )
    assert "page_token" in err.field_violations
    err = expect_error(INVALID, client.catalog.ListVariants, cpb.ListVariantsRequest(task="Bad!"))
    assert "task" in err.field_violations


def test_update_variant_mask_permissions_and_etag(client: Client, admin: Client) -> None:
    name = unique("upd")
    blessed = create_variant(admin, name, blessed=True, family="old")
    own = create_variant(client, unique("own"), family="old", description="keep")
    updated = update_variant(client, own.name, ["family", "task_taxonomy"], family="new",
                             task_taxonomy=["a", "a", "b"], description="ignored")  # fmt: skip
    assert (updated.family, list(updated.task_taxonomy), updated.description) == (
        "new", ["a", "b"], "keep",
    )  # fmt: skip
    assert updated.etag != own.etag
    err = expect_error(DENIED, update_variant, client, blessed.name, ["family"], family="x")
    assert err.reason == "ADMIN_KEY_REQUIRED"
    assert client.catalog.GetVariant(cpb.GetVariantRequest(name=blessed.name)).family == "old"
    assert update_variant(admin, blessed.name, ["*"], family="x").family == "x"
    err = expect_error(INVALID, update_variant, client, own.name, ["model_id"])
    assert "update_mask" in err.field_violations
    expect_error(INVALID, update_variant, client, own.name, [])
    err = expect_error(
        grpc.StatusCode.ABORTED,
        update_variant,
        client,
        own.name,
        ["family"],
        family="stale",
        etag=own.etag,
    )
    assert err.reason == "ETAG_MISMATCH"
    assert update_variant(client, own.name, ["family"], family="z", etag=updated.etag).family == "z"


def test_resolve_override_beats_blessed_only_for_its_org(
    client: Client, other_client: Client, admin: Client
) -> None:
    name = unique("res")
    blessed = create_variant(admin, name, blessed=True)
    assert (
        client.catalog.ResolveVariant(cpb.ResolveVariantRequest(model_id=name)).uid == blessed.uid
    )
    own = create_variant(client, name)
    assert client.catalog.ResolveVariant(cpb.ResolveVariantRequest(model_id=name)).uid == own.uid
    assert (
        other_client.catalog.ResolveVariant(cpb.ResolveVariantRequest(model_id=name)).uid
        == blessed.uid
    )
    expect_error(
        NOT_FOUND, client.catalog.ResolveVariant, cpb.ResolveVariantRequest(model_id=unique("no"))
    )
    expect_error(
        NOT_FOUND, client.catalog.ResolveVariant, cpb.ResolveVariantRequest(model_id=name.upper())
    )
    expect_error(INVALID, client.catalog.ResolveVariant, cpb.ResolveVariantRequest(model_id=""))


# ---------------------------------------------------------------------------------------
# catalog versions and deprecation


def test_versions_newest_first_get_by_both_names(client: Client, db: CatalogDb) -> None:
    v = create_variant(client, unique("ver"))
    names = [
        db.add_version(
            v.uid,
            f"1.{i}",
            [Pkg(resources=[Res(size_bytes=100 + i), Res(file_name="t.json", size_bytes=5)])],
        )
        for i in range(3)
    ]
    listed = client.catalog.ListCatalogVersions(cpb.ListCatalogVersionsRequest(parent=v.name))
    assert [x.version_id for x in listed.versions] == ["1.2", "1.1", "1.0"]
    assert [x.name for x in listed.versions] == names[::-1]
    assert [x.total_size_bytes for x in listed.versions] == [107, 106, 105]
    assert all(x.state == ACTIVE and not x.HasField("deprecate_time") for x in listed.versions)
    page = client.catalog.ListCatalogVersions(
        cpb.ListCatalogVersionsRequest(parent=v.name, page_size=2)
    )
    assert len(page.versions) == 2 and page.next_page_token
    rest = client.catalog.ListCatalogVersions(
        cpb.ListCatalogVersionsRequest(parent=v.name, page_size=2, page_token=page.next_page_token)
    )
    assert [x.version_id for x in rest.versions] == ["1.0"] and not rest.next_page_token

    got = client.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=names[0]))
    uid = names[0].split("/")[-1]
    by_uid = client.catalog.GetCatalogVersion(
        cpb.GetCatalogVersionRequest(name=f"variants/-/versions/{uid}")
    )
    assert got == by_uid == listed.versions[2]
    other = create_variant(client, unique("other"))
    expect_error(
        NOT_FOUND,
        client.catalog.GetCatalogVersion,
        cpb.GetCatalogVersionRequest(name=f"{other.name}/versions/{uid}"),
    )


def test_deprecate_only_active_and_blessed_needs_admin(
    client: Client, admin: Client, db: CatalogDb
) -> None:
    own = create_variant(client, unique("dep"))
    name = db.add_version(own.uid, "1.0")
    deprecated = client.catalog.DeprecateCatalogVersion(
        cpb.DeprecateCatalogVersionRequest(name=name)
    )
    assert deprecated.state == DEPRECATED and deprecated.HasField("deprecate_time")
    err = expect_error(
        PRECONDITION,
        client.catalog.DeprecateCatalogVersion,
        cpb.DeprecateCatalogVersionRequest(name=name),
    )
    assert err.reason == "NOT_ACTIVE"
    assert [v.type for v in err.precondition_violations] == ["LIFECYCLE"]
    # the failed call changed nothing
    again = client.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=name))
    assert again == deprecated

    blessed = create_variant(admin, unique("depb"), blessed=True)
    bname = db.add_version(blessed.uid, "2.0")
    err = expect_error(
        DENIED,
        client.catalog.DeprecateCatalogVersion,
        cpb.DeprecateCatalogVersionRequest(name=bname),
    )
    assert err.reason == "ADMIN_KEY_REQUIRED"
    assert (
        client.catalog.GetCatalogVersion(cpb.GetCatalogVersionRequest(name=bname)).state == ACTIVE
    )
    uid = bname.split("/")[-1]
    done = admin.catalog.DeprecateCatalogVersion(
        cpb.DeprecateCatalogVersionRequest(name=f"variants/-/versions/{uid}")
    )
    assert done.state == DEPRECATED
    expect_error(
        NOT_FOUND,
        client.catalog.DeprecateCatalogVersion,
        cpb.DeprecateCatalogVersionRequest(
            name="variants/-/versions/00000000-0000-4000-8000-000000000000"
        ),
    )


# ---------------------------------------------------------------------------------------
# packages


def test_version_packages_empty_list_and_contents(client: Client, db: CatalogDb) -> None:
    v = create_variant(client, unique("pkg"))
    empty = db.add_version(v.uid, "0.1")
    resp = client.catalog.ListCatalogVersionPackages(
        cpb.ListCatalogVersionPackagesRequest(parent=empty)
    )
    assert list(resp.packages) == [] and not resp.next_page_token
    full = db.add_version(
        v.uid,
        "0.2",
        [
            Pkg(resources=[Res(load_order=1, file_name="b.txt", kind="vocab"), Res()]),
            Pkg(format="onnx-int8", quantization="int8", runtime="onnxruntime-mobile"),
        ],
    )
    resp = client.catalog.ListCatalogVersionPackages(
        cpb.ListCatalogVersionPackagesRequest(parent=full)
    )
    assert [(p.format, p.quantization) for p in resp.packages] == [
        ("onnx", "none"), ("onnx-int8", "int8"),
    ]  # fmt: skip
    first = resp.packages[0]
    assert first.name.startswith(full + "/packages/")
    assert [(r.file_name, r.load_order) for r in first.resources] == [
        ("model.onnx", 0), ("b.txt", 1),
    ]  # fmt: skip
    assert all(r.name.startswith(first.name + "/resources/") for r in first.resources)
    page = client.catalog.ListCatalogVersionPackages(
        cpb.ListCatalogVersionPackagesRequest(parent=full, page_size=1)
    )
    assert len(page.packages) == 1 and page.next_page_token


def test_model_artifact_packages_follow_resolution(
    client: Client, other_client: Client, admin: Client, db: CatalogDb
) -> None:
    name = unique("map")
    expect_error(
        NOT_FOUND,
        client.models.ListModelArtifactPackages,
        mpb.ListModelArtifactPackagesRequest(name=f"models/{name}"),
    )
    for c in (client, other_client):
        c.models.CreateModel(
            mpb.CreateModelRequest(model_id=name, model=models_pb2.Model(framework="onnx"))
        )
    none = client.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(name=f"models/{name}")
    )
    assert list(none.packages) == [] and none.variant == ""

    blessed = create_variant(admin, name, blessed=True)
    db.add_version(blessed.uid, "b1", [Pkg(format="tflite", runtime="tflite")])
    own = create_variant(client, name)
    db.add_version(own.uid, "1", [Pkg(format="onnx")])
    db.add_version(own.uid, "2", [Pkg(format="ort"), Pkg(format="onnx-fp16", quantization="fp16")])

    mine = client.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(name=f"models/{name}")
    )
    assert mine.variant == own.name
    assert [p.format for p in mine.packages] == ["ort", "onnx-fp16", "onnx"]
    theirs = other_client.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(name=f"models/{name}")
    )
    assert theirs.variant == blessed.name
    assert [p.format for p in theirs.packages] == ["tflite"]
    paged = client.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(name=f"models/{name}", page_size=2)
    )
    rest = client.models.ListModelArtifactPackages(
        mpb.ListModelArtifactPackagesRequest(
            name=f"models/{name}", page_size=2, page_token=paged.next_page_token
        )
    )
    assert [p.uid for p in [*paged.packages, *rest.packages]] == [p.uid for p in mine.packages]


# ---------------------------------------------------------------------------------------
# download URLs


def test_download_urls_empty_when_nothing_is_stored(client: Client, db: CatalogDb) -> None:
    v = create_variant(client, unique("nourl"))
    name = db.add_version(v.uid, "1", [Pkg(resources=[Res(storage_key=None)])])
    resp = client.catalog.GetCatalogVersionDownloadUrls(
        cpb.GetCatalogVersionDownloadUrlsRequest(name=name)
    )
    assert resp.source == "catalog"
    assert list(resp.resources) == [] and resp.skipped_count == 0


def test_download_urls_fetch_the_stored_bytes(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    model_id = unique("url")
    v = create_variant(client, model_id)
    weights = b"\x08\x01" * 5000 + b"weights"
    vocab = b"hello\nworld\n"
    prefix = f"test/{model_id}"
    name = db.add_version(
        v.uid,
        "1",
        [
            Pkg(
                resources=[
                    Res(storage_key=f"{prefix}/model.onnx", data=weights),
                    Res(file_name="vocab.txt", kind="vocab", load_order=1,
                        storage_key=f"{prefix}/vocab.txt", data=vocab),
                    Res(file_name="not-stored.bin", kind="data", load_order=2),
                    # a key the store refuses: presigning fails, the resource is skipped
                    Res(file_name="broken.bin", kind="data", load_order=3,
                        storage_key=f"{prefix}/../escape", size_bytes=1),
                ]
            )
        ],
    )  # fmt: skip
    request = cpb.GetCatalogVersionDownloadUrlsRequest(name=name)
    if not production(registry):
        err = expect_error(PRECONDITION, client.catalog.GetCatalogVersionDownloadUrls, request)
        assert err.reason == "PRESIGN_UNSUPPORTED"
        return
    resp = client.catalog.GetCatalogVersionDownloadUrls(request)
    assert resp.source == "catalog"
    assert resp.skipped_count == 1
    assert resp.expire_time.seconds > 0
    assert [u.resource.file_name for u in resp.resources] == ["model.onnx", "vocab.txt"]
    for u, data in zip(resp.resources, [weights, vocab], strict=True):
        assert u.package.startswith(name + "/packages/")
        assert u.resource.stored and u.resource.sha256 == sha(data)
        with urllib.request.urlopen(u.url, timeout=10) as http:
            body = http.read()
        assert hashlib.sha256(body).hexdigest() == u.resource.sha256


def test_download_urls_refused_for_a_disabled_model(client: Client, db: CatalogDb) -> None:
    model_id = unique("off")
    client.models.CreateModel(
        mpb.CreateModelRequest(
            model_id=model_id, model=models_pb2.Model(framework="onnx"), disabled=True
        )
    )
    v = create_variant(client, model_id)
    name = db.add_version(v.uid, "1", [Pkg()])
    err = expect_error(
        PRECONDITION,
        client.catalog.GetCatalogVersionDownloadUrls,
        cpb.GetCatalogVersionDownloadUrlsRequest(name=name),
    )
    assert err.reason == "MODEL_DISABLED"
