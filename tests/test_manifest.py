"""GetManifest and ResolveModel over a real server, on both backends: contents, override
precedence, deprecation, disabled models, the etag (stable, changes exactly with the
manifest, never because of another org), not_modified, anonymous callers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2
from prometheus_client import REGISTRY
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from domain import manifest as domain_manifest
from modelregistry.v1 import catalog_pb2, manifest_pb2, model_service_pb2_grpc, models_pb2
from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as mpb
from server import manifest_pb, manifest_snapshot
from server.manifest_builds import ManifestBuilds
from storage.db import transaction
from storage.orm import (
    CatalogVariant,
    ManifestBuildClaim,
    ManifestSnapshot,
    ManifestTail,
    Model,
    Org,
    utcnow,
)
from storage.repos import tenancy
from support.catalog import CatalogDb, Pkg, Res, create_variant, unique, update_variant
from support.registry import Client, RunningServer
from support.status import expect_error

ACTIVE = catalog_pb2.CatalogVersion.STATE_ACTIVE
DEPRECATED = catalog_pb2.CatalogVersion.STATE_DEPRECATED
NO_AUTH = [("x-no-auth", "1")]


@pytest.fixture(scope="module")
def db(registry: RunningServer) -> Iterator[CatalogDb]:
    helper = CatalogDb(registry)
    yield helper
    helper.close()


@pytest.fixture
def admin(registry: RunningServer) -> Client:
    return registry.new_org(admin=True)


def manifest(
    c: Client, if_none_match: str = "", anonymous: bool = False
) -> mpb.GetManifestResponse:
    resp: mpb.GetManifestResponse
    resp, call = c.models.GetManifest.with_call(
        mpb.GetManifestRequest(if_none_match=if_none_match),
        metadata=NO_AUTH if anonymous else None,
    )
    assert dict(call.initial_metadata())["etag"] == resp.etag
    assert dict(call.trailing_metadata())["etag"] == resp.etag
    return resp


def create_model(c: Client, model_id: str, framework: str = "onnx", disabled: bool = False) -> None:
    c.models.CreateModel(
        mpb.CreateModelRequest(
            model_id=model_id, model=models_pb2.Model(framework=framework), disabled=disabled
        )
    )


def set_model(c: Client, model_id: str, **fields: object) -> None:
    c.models.UpdateModel(
        mpb.UpdateModelRequest(
            model=models_pb2.Model(name=f"models/{model_id}", **fields),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        )
    )


def deprecate(c: Client, name: str) -> None:
    c.catalog.DeprecateCatalogVersion(cpb.DeprecateCatalogVersionRequest(name=name))


def test_entry_contents_precedence_and_latest(
    client: Client, other_client: Client, admin: Client, db: CatalogDb
) -> None:
    shared = unique("shared")
    blessed = create_variant(admin, shared, blessed=True, task_taxonomy=["vision"])
    db.add_version(blessed.uid, "b1", [Pkg(format="tflite", runtime="tflite")])
    own = create_variant(client, shared, family="mine")
    v1 = db.add_version(own.uid, "1.0", [Pkg(resources=[Res(size_bytes=10, sha256="a" * 64)])])
    v2 = db.add_version(
        own.uid,
        "2.0",
        [Pkg(format="ort", resources=[Res(file_name="m.ort"),
                                      Res(file_name="vocab.txt", kind="vocab", load_order=1)])],
    )  # fmt: skip
    v3 = db.add_version(own.uid, "3.0", [Pkg()])
    deprecate(client, v3)
    create_model(client, shared, framework="pytorch")
    create_model(client, "plain-model")
    create_model(client, "switched-off", disabled=True)

    m = manifest(client)
    e = m.models[shared]
    assert e.model_id == shared and e.model == f"models/{shared}" and e.enabled
    assert e.framework == "pytorch"
    assert e.variant == client.catalog.GetVariant(cpb.GetVariantRequest(name=own.name))
    assert [(v.version_id, v.state) for v in e.versions] == [
        ("3.0", DEPRECATED), ("2.0", ACTIVE), ("1.0", ACTIVE),
    ]  # fmt: skip
    assert e.latest_version == "2.0"  # 3.0 is newer but deprecated
    assert [v.catalog_version for v in e.versions] == [v3, v2, v1]
    listed = client.catalog.ListCatalogVersionPackages(
        cpb.ListCatalogVersionPackagesRequest(parent=v2)
    )
    assert list(e.versions[1].packages) == list(listed.packages)
    assert [r.file_name for r in e.versions[1].packages[0].resources] == ["m.ort", "vocab.txt"]
    r = e.versions[2].packages[0].resources[0]
    assert (r.kind, r.size_bytes, r.sha256, r.required, r.stored) == (
        "weights", 10, "a" * 64, True, False,
    )  # fmt: skip

    plain = m.models["plain-model"]
    assert plain.model == "models/plain-model" and plain.enabled and not plain.HasField("variant")
    assert list(plain.versions) == [] and plain.latest_version == ""
    assert not m.models["switched-off"].enabled

    # the other org sees the blessed row for the shared name, and none of client's models
    theirs = manifest(other_client).models
    assert theirs[shared].variant.uid == blessed.uid and theirs[shared].variant.blessed
    assert theirs[shared].model == "" and theirs[shared].enabled
    assert theirs[shared].framework == "tflite"  # no Model: the latest package's format
    assert [v.version_id for v in theirs[shared].versions] == ["b1"]
    assert "plain-model" not in theirs and "switched-off" not in theirs


def test_anonymous_manifest_is_the_blessed_catalog_only(
    registry: RunningServer, client: Client, admin: Client, db: CatalogDb
) -> None:
    name = unique("anon")
    blessed = create_variant(admin, name, blessed=True)
    db.add_version(blessed.uid, "1", [Pkg()])
    override_only = unique("ovr")
    create_variant(client, override_only)
    create_model(client, unique("model"))
    shadowed = create_variant(client, name)
    anon = manifest(client, anonymous=True)
    assert anon.models[name].variant.uid == blessed.uid
    assert override_only not in anon.models
    assert all(e.variant.blessed and e.model == "" for e in anon.models.values())
    assert manifest(client).models[name].variant.uid == shadowed.uid
    assert manifest(client, anon.etag, anonymous=True).not_modified
    # no key at all is fine here, a bad key is not
    bare = grpc.insecure_channel(registry.address)
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(bare)
        assert stub.GetManifest(mpb.GetManifestRequest()).etag == anon.etag
        expect_error(
            grpc.StatusCode.UNAUTHENTICATED,
            stub.GetManifest,
            mpb.GetManifestRequest(),
            metadata=[("authorization", "Bearer nope")],
        )
    finally:
        bare.close()


def test_etag_stable_and_not_modified(client: Client, admin: Client, db: CatalogDb) -> None:
    create_model(client, "stable")
    first = manifest(client)
    second = manifest(client)
    assert first.etag and first.etag == second.etag and first.models == second.models
    nm = manifest(client, first.etag)
    assert nm.not_modified and nm.etag == first.etag and len(nm.models) == 0
    stale = manifest(client, "m-not-the-current-one")
    assert not stale.not_modified and stale.models == first.models


def test_etag_changes_exactly_with_the_manifest(
    client: Client, other_client: Client, admin: Client, db: CatalogDb
) -> None:
    name = unique("etag")
    create_model(client, name)
    seen = [manifest(client).etag]

    def changed() -> bool:
        etag = manifest(client).etag
        differs = etag != seen[-1]
        seen.append(etag)
        return differs

    # changes that show
    set_model(client, name, enabled=False)
    assert changed()
    set_model(client, name, enabled=True)
    assert changed()
    own = create_variant(client, name)
    assert changed()
    version = db.add_version(own.uid, "1", [Pkg()])
    assert changed()
    deprecate(client, version)
    assert changed()
    update_variant(client, own.name, ["family"], family="new")
    assert changed()
    blessed_name = unique("bl")
    blessed = create_variant(admin, blessed_name, blessed=True)
    assert changed()  # a new blessed variant is in every org's manifest
    create_model(client, unique("another"))
    assert changed()
    assert seen[2] == seen[0], "enabled again: the same manifest, the same etag"
    assert len(set(seen[2:])) == len(seen[2:]), "every other etag is new"

    # changes that do not show: none of them may move the etag
    set_model(client, name, description="not in the manifest", tags=["x"])
    assert not changed()
    create_model(other_client, name)
    theirs = create_variant(other_client, unique("theirs"))
    db.add_version(theirs.uid, "1", [Pkg()])
    assert not changed()
    # a blessed change this org cannot see: it overrides that name
    create_variant(client, blessed_name)
    assert changed()
    update_variant(admin, blessed.name, ["description"], description="shadowed here")
    assert not changed()
    assert manifest(client, seen[-1]).not_modified


def test_two_orgs_sharing_a_blessed_name_are_isolated(
    client: Client, other_client: Client, admin: Client, db: CatalogDb
) -> None:
    name = unique("iso")
    blessed = create_variant(admin, name, blessed=True)
    db.add_version(blessed.uid, "1.0", [Pkg()])
    for c in (client, other_client):
        create_model(c, name)
    before_other = manifest(other_client)
    own = create_variant(client, name)
    secret = db.add_version(own.uid, "9.9-secret", [Pkg(format="gguf")])
    mine = manifest(client).models[name]
    assert mine.variant.uid == own.uid and mine.latest_version == "9.9-secret"
    after_other = manifest(other_client)
    assert after_other.etag == before_other.etag
    entry = after_other.models[name]
    assert entry.variant.uid == blessed.uid
    assert [v.version_id for v in entry.versions] == ["1.0"]
    assert secret not in str(after_other)
    # a blessed change both see moves both etags
    before_mine = manifest(client).etag
    deprecate(admin, f"variants/-/versions/{entry.versions[0].catalog_version.split('/')[-1]}")
    assert manifest(other_client).etag != after_other.etag
    assert manifest(client).etag == before_mine  # client overrides the name: unchanged


def test_resolve_model(client: Client, other_client: Client, admin: Client, db: CatalogDb) -> None:
    name = unique("rslv")
    create_model(client, name)
    got = client.models.ResolveModel(mpb.ResolveModelRequest(model_id=name))
    assert got == manifest(client).models[name]
    blessed_only = unique("bonly")
    b = create_variant(admin, blessed_only, blessed=True)
    db.add_version(b.uid, "1", [Pkg()])
    entry: manifest_pb2.ManifestEntry = client.models.ResolveModel(
        mpb.ResolveModelRequest(model_id=blessed_only)
    )
    assert entry.model == "" and entry.variant.uid == b.uid and entry.latest_version == "1"
    for missing in [name.upper(), name + "x", unique("none")]:
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            client.models.ResolveModel,
            mpb.ResolveModelRequest(model_id=missing),
        )
    theirs = unique("theirs")
    create_variant(other_client, theirs)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        client.models.ResolveModel,
        mpb.ResolveModelRequest(model_id=theirs),
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.models.ResolveModel,
        mpb.ResolveModelRequest(model_id=""),
    )


def page(
    c: Client, page_size: int = 0, page_token: str = "", if_none_match: str = ""
) -> mpb.GetManifestResponse:
    resp: mpb.GetManifestResponse
    resp, call = c.models.GetManifest.with_call(
        mpb.GetManifestRequest(
            page_size=page_size, page_token=page_token, if_none_match=if_none_match
        )
    )
    assert dict(call.initial_metadata())["etag"] == resp.etag
    return resp


def test_pages_carry_one_etag_and_add_up_to_the_manifest(client: Client, admin: Client) -> None:
    for _ in range(5):
        create_model(client, unique("paged"))
    create_variant(admin, unique("paged-blessed"), blessed=True)
    whole = page(client, page_size=5000)
    assert not whole.next_page_token
    assert whole.models == manifest(client).models  # the default page holds them all here
    merged: dict[str, manifest_pb2.ManifestEntry] = {}
    token, pages = "", 0
    while True:
        got = page(client, page_size=2, page_token=token)
        assert got.etag == whole.etag and got.generate_time == whole.generate_time
        assert 1 <= len(got.models) <= 2 and not merged.keys() & got.models.keys()
        merged.update(got.models)
        pages += 1
        token = got.next_page_token
        if not token:
            break
    assert merged == dict(whole.models) and pages == (len(whole.models) + 1) // 2


def test_page_tokens_belong_to_their_caller_and_manifest(
    client: Client, other_client: Client, db: CatalogDb
) -> None:
    name = unique("tok")
    for i in range(3):
        create_model(client, f"{name}-{i}")
    first = page(client, page_size=1)
    token = first.next_page_token
    assert token
    # if_none_match is for first pages: a token pages on whatever it says
    second = page(client, page_size=1, page_token=token, if_none_match=first.etag)
    assert not second.not_modified and second.etag == first.etag and len(second.models) == 1
    for bad in ["garbage", token[:-3]]:
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            client.models.GetManifest,
            mpb.GetManifestRequest(page_token=bad),
        )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.models.GetManifest,
        mpb.GetManifestRequest(page_size=-1),
    )
    for stranger, metadata in [(other_client, None), (client, NO_AUTH)]:
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stranger.models.GetManifest,
            mpb.GetManifestRequest(page_token=token),
            metadata=metadata,
        )
    # a write that shows nothing keeps the manifest, and so the token
    set_model(client, f"{name}-0", description="not in the manifest")
    assert page(client, page_size=1, page_token=token).etag == first.etag
    # one that shows: the token's manifest is gone
    set_model(client, f"{name}-0", enabled=False)
    err = expect_error(
        grpc.StatusCode.ABORTED,
        client.models.GetManifest,
        mpb.GetManifestRequest(page_token=token),
    )
    assert err.reason == "MANIFEST_CHANGED"
    assert err.metadata["etag"] == manifest(client).etag != first.etag


def test_a_second_server_builds_from_stored_subtrees(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    """Each variant's serialized subtree is stored under its content key after a build,
    with the map entry made around it, so a restarted server or another replica neither
    re-serializes it nor makes the entry again; a stored subtree whose variant changed
    since is never served."""
    name = unique("stored")
    own = create_variant(client, name)
    db.add_version(own.uid, "1.0", [Pkg(format="tflite")])
    first = manifest(client)
    shown = {e.variant.uid for e in first.models.values() if e.HasField("variant")}
    deadline = time.monotonic() + 20
    while True:  # stored after the build, in the background
        with transaction(db.sessions) as session:
            stored = {t.variant_id: t for t in session.scalars(select(ManifestTail)).all()}
            current = {
                v.id: (v.content_revision, v.updated_at)
                for v in session.scalars(select(CatalogVariant)).all()
            }
        if shown <= stored.keys():
            break
        assert time.monotonic() < deadline, "the subtrees were not stored"
        time.sleep(0.05)
    for uid in shown:
        t = stored[uid]
        assert (t.content_revision, t.variant_updated_at) == current[uid]
        assert t.entry_format == manifest_pb.ENTRY_FORMAT
    mine = stored[own.uid]  # made for a name without a Model
    assert mine.entry_enabled is None and mine.entry_framework is None
    assert mine.entry_prefix is not None and mine.entry_etag is not None
    # A marker only the stored row carries: the entry's framework (a name without a Model
    # takes it from the variant's subtree), so a second server showing it took the stored
    # entry, not one made from rows. (Without the whole manifest stored: the second server
    # would serve that instead.)
    wait_for_stored_manifest(db, client.org, first.etag)
    scope = org_id(db, client.org)
    assert mine.entry_prefix.count(b"tflite") == 1
    with transaction(db.sessions) as session:
        session.execute(
            update(ManifestTail)
            .where(ManifestTail.variant_id == own.uid)
            .values(entry_prefix=mine.entry_prefix.replace(b"tflite", b"tflitX"))
        )
        session.execute(delete(ManifestSnapshot).where(ManifestSnapshot.scope == scope))
    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        there = Client(replica.channel, client.key, client.org)
        second = manifest(there)
        assert second.models[name].framework == "tflitX"
        second.models[name].framework = "tflite"
        assert second.models == first.models

        # a change moves the variant's key on: the stale row is rebuilt, not served
        db.add_version(own.uid, "2.0", [Pkg(format="ort")])
        third = manifest(there)
        assert third.models[name].framework == "ort"
        assert [v.version_id for v in third.models[name].versions] == ["2.0", "1.0"]
        again = manifest(client)
        assert (third.etag, third.models) == (again.etag, again.models)
    finally:
        replica.stop()


def org_id(db: CatalogDb, org: str) -> str:
    with transaction(db.sessions) as session:
        return session.scalars(select(Org.id).where(Org.name == org)).one()


def wait_for_stored(
    db: CatalogDb,
    scope: str,
    done: Callable[[domain_manifest.Stored], bool],
    what: str,
    seconds: float,
) -> domain_manifest.Stored:
    """Until the org's stored manifest is one `done` accepts (builds store in the
    background), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        with transaction(db.sessions) as session:
            stored = domain_manifest.load_stored(session, scope, manifest_pb.ENTRY_FORMAT)
        if stored is not None and done(stored):
            return stored
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_for_stored_revision(db: CatalogDb, scope: str) -> domain_manifest.Stored:
    """Until the org's manifest at its current org revision is stored (built in the
    background after writes, with no request)."""
    with transaction(db.sessions) as session:
        revision = session.scalars(select(Org.revision).where(Org.id == scope)).one()
    return wait_for_stored(
        db,
        scope,
        lambda stored: stored.stamp[1] == revision,
        "the manifest was not built after the writes",
        seconds=30,
    )


def wait_for_stored_manifest(db: CatalogDb, org: str, etag: str) -> None:
    """Until the org's manifest with that etag is stored (a build stores it in the
    background)."""

    def has_etag(stored: domain_manifest.Stored) -> bool:
        built = manifest_snapshot.decode(stored.data)
        return built is not None and built.etag == etag

    wait_for_stored(db, org_id(db, org), has_etag, "the manifest was not stored", seconds=20)


def test_a_second_server_serves_the_stored_manifest(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    """A server without the caller's manifest in memory (restarted, a new replica) serves
    the stored one while the caller's stamp is the one it was stored under (its
    generate_time shows it was not rebuilt), and after a change reuses it for a build
    that answers what the first server answers; it then stores the new manifest."""
    name = unique("snap")
    own = create_variant(client, name)
    db.add_version(own.uid, "1.0", [Pkg(format="tflite")])
    create_model(client, f"{name}-model")
    first = manifest(client)
    wait_for_stored_manifest(db, client.org, first.etag)

    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        there = Client(replica.channel, client.key, client.org)
        served = manifest(there)
        assert served == first  # generate_time included: the stored manifest itself
        assert manifest(there, if_none_match=first.etag).not_modified
    finally:
        replica.stop()

    # one change behind: a new replica reuses the stored manifest's unchanged entries
    db.add_version(own.uid, "2.0", [Pkg(format="ort")])
    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        there = Client(replica.channel, client.key, client.org)
        rebuilt = manifest(there)
        here = manifest(client)
        assert (rebuilt.etag, rebuilt.models) == (here.etag, here.models) != (
            first.etag, first.models,
        )  # fmt: skip
        assert [v.version_id for v in rebuilt.models[name].versions] == ["2.0", "1.0"]
        assert rebuilt.generate_time != first.generate_time
        wait_for_stored_manifest(db, client.org, rebuilt.etag)
    finally:
        replica.stop()


def test_stored_manifests_are_per_caller(
    client: Client, other_client: Client, db: CatalogDb
) -> None:
    """Each org's manifest is stored under its own scope (and the anonymous caller's under
    its own), never served to another caller."""
    create_model(client, unique("mine"))
    create_model(other_client, unique("theirs"))
    mine, theirs = manifest(client), manifest(other_client)
    anonymous = manifest(client, anonymous=True)
    wait_for_stored_manifest(db, client.org, mine.etag)
    wait_for_stored_manifest(db, other_client.org, theirs.etag)
    ids = org_id(db, client.org), org_id(db, other_client.org)
    with transaction(db.sessions) as session:
        scopes = dict(
            session.execute(
                select(ManifestSnapshot.scope, ManifestSnapshot.org_id).where(
                    ManifestSnapshot.org_id.in_(ids) | ManifestSnapshot.org_id.is_(None)
                )
            ).all()
        )
    assert scopes[ids[0]] == ids[0] and scopes[ids[1]] == ids[1]
    assert "anonymous" in scopes and scopes["anonymous"] is None
    assert len({mine.etag, theirs.etag, anonymous.etag}) == 3


def test_a_write_gets_the_manifest_built_and_stored_before_anyone_asks(
    client: Client, db: CatalogDb
) -> None:
    """After writes commit, the server builds the written org's manifest in the background
    (Settings.manifest_warm_seconds) and stores it: the first GetManifest after them, on
    any server, finds it built. A burst of writes ends with a build of the last one."""
    names = [unique("warm") for _ in range(5)]
    for name in names:
        create_model(client, name)
    stored = wait_for_stored_revision(db, org_id(db, client.org))
    built = manifest_snapshot.decode(stored.data)
    assert built is not None and set(names) <= set(built.names)
    served = manifest(client)
    assert served.etag == built.etag and set(served.models) == set(built.names)


def test_one_server_builds_after_writes_through_several(
    registry: RunningServer, client: Client, db: CatalogDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes to one org through two servers: both look at its next build after them,
    and one builds it while the other skips it (storage.orm.catalog.ManifestBuildClaim)
    instead of making the same build. Builds are slowed so that both look while the
    first one builds."""
    build = ManifestBuilds._build

    async def slow_build(
        self: ManifestBuilds, stamp: domain_manifest.Stamp
    ) -> tuple[manifest_pb.Built, domain_manifest.Stamp, str]:
        await asyncio.sleep(1.5)
        return await build(self, stamp)

    monkeypatch.setattr(ManifestBuilds, "_build", slow_build)
    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        there = Client(replica.channel, client.key, client.org)
        create_model(client, unique("here"))
        create_model(there, unique("there"))
        scope = org_id(db, client.org)
        with transaction(db.sessions) as session:
            revision = session.scalars(select(Org.revision).where(Org.id == scope)).one()
        servers = [registry.server.model_service.manifests, replica.server.model_service.manifests]
        deadline = time.monotonic() + 30
        while any(scope in s._warming for s in servers):
            assert time.monotonic() < deadline, "the builds after the writes did not end"
            time.sleep(0.05)
        built = [s for s in servers if s.manifests.last(scope) is not None]
        assert len(built) == 1
        with transaction(db.sessions) as session:
            stored = domain_manifest.load_stored(session, scope, manifest_pb.ENTRY_FORMAT)
        assert stored is not None and stored.stamp[1] == revision
    finally:
        replica.stop()


def test_an_orgs_first_manifest_starts_from_the_anonymous_one(
    registry: RunningServer, client: Client, admin: Client, db: CatalogDb
) -> None:
    """An org with no manifest of its own (in memory or stored) gets the anonymous caller's,
    which the server holds, patched with the org's own names: no build from every name's
    row, and the same manifest as one."""
    create_variant(admin, unique("blessed"), blessed=True)
    manifest(client, anonymous=True)  # the server holds the anonymous manifest
    scope = org_id(db, client.org)
    with transaction(db.sessions) as session:  # written without the server: nothing built
        tenancy.bump_org_revision(session, scope)
        session.add(Model(org_id=scope, model_id=unique("own"), framework="onnx"))

    def builds(source: str) -> float:
        labels = {"source": source, "trigger": "request"}
        return REGISTRY.get_sample_value("modelregistry_manifest_build_seconds_count", labels) or 0

    before = {source: builds(source) for source in ("patch", "index")}
    mine = manifest(client)
    assert builds("patch") == before["patch"] + 1 and builds("index") == before["index"]
    with transaction(db.sessions, readonly=True) as session:
        index = domain_manifest.load_index(
            session, scope, lambda keys: set(), manifest_pb.ENTRY_FORMAT
        )
    whole = manifest_pb.build(index, {}, utcnow(), None, manifest_pb.TailCache())
    assert mine.etag == whole.etag and set(mine.models) == set(whole.names)


def test_a_build_another_server_claimed_is_looked_at_again(client: Client, db: CatalogDb) -> None:
    """A server whose build after writes was refused (another server's claim, here one that
    died holding it) looks again until it can claim the build or finds it stored."""
    scope = org_id(db, client.org)
    with transaction(db.sessions) as session:
        session.add(
            ManifestBuildClaim(
                scope=scope, org_id=scope, holder="gone", until=utcnow() + timedelta(seconds=3)
            )
        )
    looks = "modelregistry_manifest_background_looks_total"
    claimed = REGISTRY.get_sample_value(looks, {"outcome": "claimed"}) or 0
    create_model(client, unique("claimed"))
    wait_for_stored_revision(db, scope)
    assert (REGISTRY.get_sample_value(looks, {"outcome": "claimed"}) or 0) > claimed
    with transaction(db.sessions) as session:
        assert session.get(ManifestBuildClaim, scope) is None  # released after the build


def test_a_server_stopping_while_it_claims_a_build_leaves_no_claim(
    registry: RunningServer, client: Client, db: CatalogDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server stopped while its claim on a build after writes is being taken (the claim's
    transaction waiting for the database) drops the claim once it lands: left behind, it
    would make every server skip the caller's build until it expired."""
    scope = org_id(db, client.org)
    claim = domain_manifest.claim_build
    claiming = threading.Event()

    def slow_claim(session: Session, caller: str | None, holder: str) -> bool:
        if caller == scope:
            claiming.set()
            time.sleep(1.0)
        return claim(session, caller, holder)

    monkeypatch.setattr(domain_manifest, "claim_build", slow_claim)
    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        create_model(Client(replica.channel, client.key, client.org), unique("claiming"))
        assert claiming.wait(30), "no build was claimed after the write"
    finally:
        replica.stop()
    with transaction(db.sessions) as session:
        assert session.get(ManifestBuildClaim, scope) is None


def many_names_then_a_write(db: CatalogDb, c: Client) -> str:
    """Over WARM_AT_CHANGES names added to the org without the server (so its next build
    is large), then a write through it (so it builds after it); the org's id."""
    scope = org_id(db, c.org)
    with transaction(db.sessions) as session:
        tenancy.bump_org_revision(session, scope)
        session.add_all(
            Model(org_id=scope, model_id=unique("bulk"), framework="onnx")
            for _ in range(domain_manifest.WARM_AT_CHANGES + 1)
        )
    create_model(c, unique("write"))
    return scope


def test_a_delayed_store_does_not_hold_back_another_orgs_build(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    """A build after writes whose store the schedule delays (this server stored the
    caller's manifest less than STORE_EVERY_SECONDS ago) keeps its claim until it is
    stored, but not the server's one background-build slot: another org's build after a
    write runs meanwhile instead of waiting for that store."""

    first = many_names_then_a_write(db, client)
    wait_for_stored_revision(db, first)  # stored by this server just now
    many_names_then_a_write(db, client)
    time.sleep(0.5)  # the first org's build looks first and takes the slot
    second = many_names_then_a_write(db, registry.new_org())
    wait_for_stored_revision(db, second)
    with transaction(db.sessions) as session:
        revision = session.scalars(select(Org.revision).where(Org.id == first)).one()
        stored = domain_manifest.load_stored(session, first, manifest_pb.ENTRY_FORMAT)
    assert stored is not None and stored.stamp[1] < revision, "the second build waited"
    wait_for_stored_revision(db, first)  # the delayed store lands all the same


def test_a_server_stopping_while_a_build_waits_for_its_store_drops_the_claim(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    """A build after writes holds its claim until its store lands, which the schedule may
    delay by seconds (the caller stored by this server just before); a server stopped
    meanwhile drops the claim instead of leaving it for every server to skip the caller's
    build until it expired."""
    replica = RunningServer(registry.database_url, registry.object_store, manifest_warm_seconds=0.5)
    try:
        there = Client(replica.channel, client.key, client.org)
        scope = many_names_then_a_write(db, there)
        wait_for_stored_revision(db, scope)
        many_names_then_a_write(db, there)
        with transaction(db.sessions) as session:
            revision = session.scalars(select(Org.revision).where(Org.id == scope)).one()
        builds = replica.server.model_service.manifests
        deadline = time.monotonic() + 30
        while True:  # built, its claim held until the store lands
            last = builds.manifests.last(scope)
            if last is not None and last[0][1] == revision and builds._releasing:
                break
            assert time.monotonic() < deadline, "no build after the writes"
            time.sleep(0.02)
        with transaction(db.sessions) as session:
            assert session.get(ManifestBuildClaim, scope) is not None
    finally:
        replica.stop()
    with transaction(db.sessions) as session:
        assert session.get(ManifestBuildClaim, scope) is None
        stored = domain_manifest.load_stored(session, scope, manifest_pb.ENTRY_FORMAT)
    assert stored is not None and stored.stamp[1] < revision  # stopped before storing


def test_a_starting_server_builds_large_orgs_nothing_usable_is_stored_for(
    registry: RunningServer, client: Client, db: CatalogDb
) -> None:
    """An org with many names of its own whose stored manifest no server of this release
    can use (stored in another entry format, as before an upgrade that serializes entries
    otherwise) gets it built and stored by a server as it starts, before any request:
    otherwise each of its devices' first GetManifest would wait for a build from every
    name's row."""
    scope = org_id(db, client.org)
    names = [unique("many") for _ in range(domain_manifest.WARM_AT_CHANGES + 1)]
    with transaction(db.sessions) as session:  # written without a server: nothing built
        tenancy.bump_org_revision(session, scope)
        session.add_all([Model(org_id=scope, model_id=name, framework="onnx") for name in names])
    with transaction(db.sessions) as session:
        old = domain_manifest.Stored(
            domain_manifest.stamp(session, scope), manifest_pb.ENTRY_FORMAT + 1, b"old"
        )
        domain_manifest.save_stored(session, old)
    replica = RunningServer(registry.database_url, registry.object_store)
    try:
        stored = wait_for_stored_revision(db, scope)
        built = manifest_snapshot.decode(stored.data)
        assert built is not None and set(names) <= set(built.names)
        there = Client(replica.channel, client.key, client.org)
        assert manifest(there).etag == built.etag
    finally:
        replica.stop()
