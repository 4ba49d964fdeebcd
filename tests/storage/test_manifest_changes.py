"""The manifest change log (migrations 0013 and 0015's triggers,
storage.orm.catalog.ManifestChange): every write of a Model or catalog variant, or under a
variant, marks its name pending for the right scope whoever writes it; a revision bump
stamps the scope's pending names; readers get the names changed after a stamp, pending
ones included, however far back, and are told when a tombstone was pruned past it. And a
manifest patched from the log equals one built from every row, past pruned tombstones
too."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from domain import manifest
from server import manifest_pb
from storage.db import transaction
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ManifestBuildClaim,
    ManifestChange,
    ManifestTail,
    Model,
    Org,
)
from storage.orm.base import utcnow
from storage.orm.catalog import CatalogState
from storage.repos import catalog as repo
from storage.repos import tenancy

Log = set[tuple[str | None, int | None, str]]


def entries(built: manifest_pb.Built) -> list[bytes]:
    """The manifest's map entries as served (generate_time aside, the response's bytes)."""
    return [e[2] + e[3] for e in built.order]


def log(factory: sessionmaker[Session]) -> Log:
    with transaction(factory, readonly=True) as session:
        rows = session.execute(
            select(ManifestChange.org_id, ManifestChange.revision, ManifestChange.name)
        )
        return {(r[0], r[1], r[2]) for r in rows}


def org_revision(factory: sessionmaker[Session], org_id: str) -> int:
    with transaction(factory, readonly=True) as session:
        value = session.scalar(select(Org.revision).where(Org.id == org_id))
    assert value is not None
    return value


def new_org(factory: sessionmaker[Session], name: str = "acme") -> str:
    with transaction(factory) as session:
        org = Org(name=name)
        session.add(org)
        session.flush()
        return org.id


def test_writes_log_names_pending_and_a_bump_stamps_them(
    factory: sessionmaker[Session],
) -> None:
    org = new_org(factory)
    other = new_org(factory, "globex")
    with transaction(factory) as session:
        session.add_all(
            [
                Model(org_id=org, model_id="resnet", framework="onnx"),
                CatalogVariant(org_id=org, name="resnet"),
                CatalogVariant(org_id=None, name="llama"),
                Model(org_id=other, model_id="bert", framework="onnx"),
            ]
        )
    assert log(factory) == {(org, None, "resnet"), (None, None, "llama"), (other, None, "bert")}

    before = org_revision(factory, org)
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)
    assert log(factory) == {
        (org, before + 1, "resnet"),
        (None, None, "llama"),
        (other, None, "bert"),
    }
    with transaction(factory) as session:
        repo.bump_catalog_revision(session)
        catalog = repo.manifest_revisions(session, None)[1]
    assert (None, catalog, "llama") in log(factory)


def test_every_kind_of_write_logs_the_names_it_changes(factory: sessionmaker[Session]) -> None:
    org = new_org(factory)
    with transaction(factory) as session:
        variant = CatalogVariant(org_id=org, name="resnet")
        blessed = CatalogVariant(org_id=None, name="llama")
        session.add_all([Model(org_id=org, model_id="resnet"), variant, blessed])
        session.flush()
        vid, bid = variant.id, blessed.id
    ids: dict[str, str] = {}

    def logs(write: Callable[[Session], object], expected: Log) -> None:
        with transaction(factory) as session:
            session.execute(delete(ManifestChange))
        with transaction(factory) as session:
            write(session)
        assert log(factory) == expected

    def add_version(session: Session) -> None:
        cv = CatalogVersion(variant_id=vid, version="1.0")
        session.add(cv)
        session.flush()
        package = ArtifactPackage(catalog_version_id=cv.id, format="onnx")
        session.add(package)
        session.flush()
        session.add(ArtifactResource(package_id=package.id, kind="weights", file_name="m"))
        ids["cv"], ids["package"] = cv.id, package.id

    resnet: Log = {(org, None, "resnet")}
    logs(add_version, resnet)  # three rows under the variant, one name pending once
    logs(lambda s: s.execute(update(CatalogVersion).values(lifecycle="deprecated")), resnet)
    logs(lambda s: s.execute(update(ArtifactResource).values(size_bytes=9)), resnet)
    logs(lambda s: s.execute(delete(ArtifactPackage)), resnet)
    logs(lambda s: s.execute(update(Model).values(enabled=False)), resnet)
    logs(lambda s: s.execute(update(CatalogVariant).where(CatalogVariant.id == bid)
                             .values(description="x", updated_at=utcnow())),
         {(None, None, "llama")})  # fmt: skip
    # A rename changes both names' entries.
    logs(
        lambda s: s.execute(
            update(CatalogVariant).where(CatalogVariant.id == vid).values(name="resnet-2")
        ),
        {(org, None, "resnet"), (org, None, "resnet-2")},
    )
    logs(lambda s: s.execute(delete(CatalogVariant).where(CatalogVariant.id == vid)),
         {(org, None, "resnet-2")})  # fmt: skip
    logs(lambda s: s.execute(delete(Model)), resnet)


def test_readers_get_names_after_a_stamp_however_far_back_until_a_tombstone_is_pruned(
    factory: sessionmaker[Session],
) -> None:
    org = new_org(factory)
    start = org_revision(factory, org)
    with transaction(factory) as session:
        catalog_start = repo.manifest_revisions(session, org)[1]

    def write(name: str, bump_first: bool = False) -> None:
        with transaction(factory) as session:
            if bump_first:  # as quota-checked writers do
                tenancy.bump_org_revision(session, org)
            session.add(Model(org_id=org, model_id=name))
            session.flush()
            if not bump_first:
                tenancy.bump_org_revision(session, org)

    def changed(since: int, catalog_since: int = catalog_start) -> set[str] | None:
        """The names logged since, or None when they may not be all (a floor above)."""
        with transaction(factory, readonly=True) as session:
            revisions, names, complete = repo.manifest_changes(session, org, since, catalog_since)
            assert revisions == repo.manifest_revisions(session, org)
            return names if complete else None

    def jump(table: type[Org] | type[CatalogState], to: int) -> None:
        with transaction(factory) as session:
            session.execute(update(table).values(revision=to))

    write("a")
    write("b")
    assert changed(start) == {"a", "b"}
    assert changed(start + 1) == {"b"}
    assert changed(start + 2) == set()
    write("c", bump_first=True)
    # Written after its transaction's bump, stamped with that revision as it commits
    # (catalog.revision_bumped): a build at start + 3 has it already.
    assert changed(start + 3) == set() and changed(start + 2) == {"c"}
    with transaction(factory) as session:
        session.add(CatalogVariant(org_id=None, name="llama"))
    assert changed(start + 3) == {"llama"}  # blessed names, pending: no bump stamped it
    with transaction(factory) as session:
        repo.bump_catalog_revision(session)
    catalog = catalog_start + 1
    assert changed(start + 3, catalog) == set()

    # A name written again keeps its one row, at the revision that last changed it.
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)  # start + 4
        session.execute(update(Model).where(Model.model_id == "a").values(description="x"))
    assert {r for r in log(factory) if r[0] == org} == {
        (org, start + 2, "b"), (org, start + 3, "c"), (org, start + 4, "a")
    }  # fmt: skip
    assert changed(start + 3, catalog) == {"a"}
    # Written without a bump (no writer of ours does), a name stays pending until one.
    with transaction(factory) as session:
        session.execute(update(Model).where(Model.model_id == "a").values(description="y"))
    assert changed(start + 4, catalog) == {"a"}

    # However far behind a manifest is, the names changed since are listed.
    jump(Org, 11_996)  # stamps a
    for i in range(4):
        write(f"x{i}")  # revisions 11,997-12,000
    assert changed(start, catalog) == {"a", "b", "c", "x0", "x1", "x2", "x3"}
    assert changed(11_998, catalog) == {"x2", "x3"}
    # A reader that patches at most so many names stops reading past them.
    with transaction(factory, readonly=True) as session:
        for caller, since, count in ((org, (start, catalog), 7), (None, (0, catalog_start), 1)):
            whole = repo.manifest_changes(session, caller, *since)
            assert whole[1] is not None and len(whole[1]) == count
            assert repo.manifest_changes(session, caller, *since, at_most=count) == whole
            capped = repo.manifest_changes(session, caller, *since, at_most=count - 1)
            assert capped == (whole[0], None, True)

    # A deleted name's row tells older manifests to drop its entry, until it is 10,000
    # revisions old at a multiple of 1000: then it goes and the floor rises past it.
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)  # 12,001
        session.execute(delete(Model).where(Model.model_id == "b"))
    jump(Org, 21_999)  # stamps b at 21,999
    write("y")  # 22,000: b is not 10,000 revisions old yet
    assert changed(start, catalog) == {"a", "b", "c", "x0", "x1", "x2", "x3", "y"}
    jump(Org, 31_999)
    write("z")  # 32,000: b (21,999) goes, the floor rises to 22,000
    assert changed(start, catalog) is None  # older manifests also look for names gone
    assert changed(21_999, catalog) is None
    assert changed(22_000, catalog) == {"z"}
    with transaction(factory, readonly=True) as session:  # every name still in the org
        _, names, complete = repo.manifest_changes(session, org, start, catalog)
    assert names == {"a", "c", "x0", "x1", "x2", "x3", "y", "z"} and not complete
    assert {r[2] for r in log(factory) if r[0] == org} == {
        "a",
        "c",
        "x0",
        "x1",
        "x2",
        "x3",
        "y",
        "z",
    }

    # The same for blessed names, per catalog revision.
    with transaction(factory) as session:
        repo.bump_catalog_revision(session)  # catalog + 1
        session.execute(delete(CatalogVariant).where(CatalogVariant.name == "llama"))
    assert changed(22_000, catalog) == {"z", "llama"}
    gone_at = ((catalog + 1) // 1000 + 1) * 1000  # stamped here, the next multiple of 1000
    jump(CatalogState, gone_at)
    assert changed(22_000, catalog) == {"z", "llama"}
    jump(CatalogState, gone_at + 9_999)
    with transaction(factory) as session:
        repo.bump_catalog_revision(session)  # gone_at + 10,000
    assert changed(22_000, catalog) is None
    assert changed(22_000, gone_at) == {"z"}

    # Before a live floor (as migration 0013 left scopes written before it, and its pruning
    # of whole revisions) even names still in the scope may have no row: no names at all.
    with transaction(factory) as session:
        session.execute(update(Org).where(Org.id == org).values(manifest_live_floor=30_000))
    with transaction(factory, readonly=True) as session:
        assert repo.manifest_changes(session, org, 29_999, gone_at)[1:] == (None, False)
        assert repo.manifest_changes(session, org, 30_000, gone_at)[1:] == ({"z"}, True)


def build_whole(
    factory: sessionmaker[Session], org: str
) -> tuple[manifest_pb.Built, manifest.Stamp]:
    """The caller's manifest from every row (no previous build, nothing cached)."""
    with transaction(factory, readonly=True) as session:
        index = manifest.load_index(session, org, lambda keys: set(), manifest_pb.ENTRY_FORMAT)
    return manifest_pb.build(index, {}, utcnow(), None, manifest_pb.TailCache()), index.stamp


def build_patched(
    factory: sessionmaker[Session],
    org: str,
    tails: manifest_pb.TailCache,
    previous: manifest_pb.Built,
    since: manifest.Stamp,
) -> tuple[manifest_pb.Built, manifest.Stamp]:
    """`previous` (built at `since`) patched with the names the log lists since."""
    pinned: dict[manifest.VariantKey, manifest_pb.Tail] = {}

    def cached(keys: list[manifest.VariantKey]) -> dict[manifest.VariantKey, manifest_pb.Tail]:
        pinned.update(tails.pin(keys, previous))
        return pinned

    with transaction(factory, readonly=True) as session:
        changes = manifest.load_changes(
            session, org, since, previous.entries, cached, manifest_pb.ENTRY_FORMAT
        )
    assert changes is not None
    return manifest_pb.patch(previous, changes, pinned, utcnow(), tails), changes.stamp


def test_a_manifest_patched_from_the_log_equals_a_build_from_every_row(
    factory: sessionmaker[Session],
) -> None:
    org = new_org(factory)
    tails = manifest_pb.TailCache()

    def whole() -> tuple[manifest_pb.Built, manifest.Stamp]:
        return build_whole(factory, org)

    def patched(previous: manifest_pb.Built, since: manifest.Stamp) -> manifest_pb.Built:
        return build_patched(factory, org, tails, previous, since)[0]

    with transaction(factory) as session:
        for i in range(6):
            session.add(Model(org_id=org, model_id=f"m{i}", framework="onnx"))
            session.add(CatalogVariant(org_id=org, name=f"m{i}", family="f"))
        session.add(CatalogVariant(org_id=None, name="m1", family="blessed"))
        session.add(CatalogVariant(org_id=None, name="shared", family="blessed"))
        tenancy.bump_org_revision(session, org)
        repo.bump_catalog_revision(session)
    built, at = whole()

    def org_variant(session: Session, name: str) -> str:
        vid = session.scalar(
            select(CatalogVariant.id).where(
                CatalogVariant.org_id == org, CatalogVariant.name == name
            )
        )
        assert vid is not None
        return vid

    steps: list[Callable[[Session], object]] = [
        lambda s: s.add(CatalogVersion(variant_id=org_variant(s, "m0"), version="1")),
        lambda s: s.execute(update(Model).where(Model.model_id == "m2").values(enabled=False)),
        # The override of m1 goes: the blessed m1 resolves now.
        lambda s: s.execute(
            delete(CatalogVariant).where(CatalogVariant.id == org_variant(s, "m1"))
        ),
        lambda s: s.execute(delete(Model).where(Model.model_id == "m3")),
        lambda s: s.execute(
            delete(CatalogVariant).where(CatalogVariant.id == org_variant(s, "m3"))
        ),
        lambda s: s.add(CatalogVariant(org_id=org, name="shared", family="override")),
        lambda s: s.add(Model(org_id=org, model_id="new", framework="tflite")),
        lambda s: s.execute(
            update(CatalogVariant)
            .where(CatalogVariant.id == org_variant(s, "m4"))
            .values(name="m4-renamed", updated_at=utcnow())
        ),
    ]
    for step in steps:
        with transaction(factory) as session:
            step(session)
            tenancy.bump_org_revision(session, org)
        built = patched(built, at)
        expected, at = whole()
        assert entries(built) == entries(expected) and built.etag == expected.etag
        assert built.names == expected.names
    blessed_change = update(CatalogVariant).where(CatalogVariant.org_id.is_(None))
    with transaction(factory) as session:
        session.execute(blessed_change.values(description="new", updated_at=utcnow()))
        repo.bump_catalog_revision(session)
    built = patched(built, at)
    expected, at = whole()
    assert entries(built) == entries(expected) and built.etag == expected.etag


def test_patches_chained_while_writers_race_end_equal_to_a_build_from_every_row(
    factory: sessionmaker[Session],
) -> None:
    """Writers that bump the org's revision before their writes (as every writer in the
    server does) and after them, in concurrent transactions, while a reader keeps
    patching its previous build: nothing a writer committed is missed. (Writers bumping
    last still lock the org row first, the order tenancy.bump_org_revision asks of
    every writer: without it they deadlock with the others on PostgreSQL.)"""
    org = new_org(factory)
    with transaction(factory) as session:
        for i in range(8):
            session.add(Model(org_id=org, model_id=f"m{i}", framework="onnx"))
            session.add(CatalogVariant(org_id=org, name=f"m{i}"))
        tenancy.bump_org_revision(session, org)
    with transaction(factory, readonly=True) as session:
        vids = list(session.scalars(select(CatalogVariant.id).where(CatalogVariant.org_id == org)))
    built, at = build_whole(factory, org)
    tails = manifest_pb.TailCache()
    errors: list[BaseException] = []
    created: list[str] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for i in range(12):
                with transaction(factory) as session:
                    first = rnd.random() < 0.5
                    if first:
                        tenancy.bump_org_revision(session, org)
                    else:
                        session.execute(select(Org.id).where(Org.id == org).with_for_update())
                    step = rnd.randrange(3)
                    if step == 0:
                        session.add(Model(org_id=org, model_id=f"w{seed}-{i}"))
                    elif step == 1:
                        session.add(
                            CatalogVersion(variant_id=rnd.choice(vids), version=f"{seed}.{i}")
                        )
                    else:
                        session.execute(
                            update(Model)
                            .where(Model.org_id == org, Model.model_id == f"m{rnd.randrange(8)}")
                            .values(enabled=rnd.random() < 0.5)
                        )
                    session.flush()
                    if not first:
                        tenancy.bump_org_revision(session, org)
                if step == 0:
                    created.append(f"w{seed}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    patches = 0
    while any(thread.is_alive() for thread in threads):
        built, at = build_patched(factory, org, tails, built, at)
        patches += 1
    for thread in threads:
        thread.join()
    assert not errors, errors
    built, at = build_patched(factory, org, tails, built, at)
    expected, expected_at = build_whole(factory, org)
    assert at == expected_at
    assert entries(built) == entries(expected) and built.etag == expected.etag
    assert set(created) <= set(expected.names) and patches > 1


def test_a_large_build_is_ahead_when_nothing_is_stored_or_many_names_changed(
    factory: sessionmaker[Session],
) -> None:
    """What decides whether a server builds a caller's manifest in the background after a
    write (ManifestBuilds.written): no stored manifest in the reader's entry format, or
    over WARM_AT_CHANGES names changed since the stored one."""
    org = new_org(factory)
    mine = manifest_pb.ENTRY_FORMAT

    def add_models(names: list[str]) -> None:
        with transaction(factory) as session:
            tenancy.bump_org_revision(session, org)
            session.add_all([Model(org_id=org, model_id=name) for name in names])

    def ahead() -> tuple[manifest.Stamp | None, manifest.Stamp]:
        with transaction(factory, readonly=True) as session:
            return manifest.large_build_ahead(session, org, mine), manifest.stamp(session, org)

    def store(stamp: manifest.Stamp, entry_format: int) -> None:
        with transaction(factory) as session:
            manifest.save_stored(session, manifest.Stored(stamp, entry_format, b"stored"))

    add_models(["a"])
    found, current = ahead()
    assert found == current  # nothing stored
    store(current, mine + 1)  # by a release that serializes entries otherwise
    assert ahead()[0] == current
    with transaction(factory, readonly=True) as session:
        assert manifest.load_stored(session, org, mine) is None
    store((org, current[1] - 1, current[2]), mine)  # older, but of ours: replaces it
    assert ahead()[0] is None
    store(current, mine + 1)  # the other release's, newer or not, replaces ours again
    assert ahead()[0] == current
    store(current, mine)
    assert ahead()[0] is None
    add_models([f"m{i}" for i in range(manifest.WARM_AT_CHANGES - 1)])
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)  # stamps the pending names
        session.execute(update(Model).where(Model.model_id == "m0").values(description="x"))
        session.execute(update(Model).where(Model.model_id == "a").values(description="x"))
    # m0 changed twice counts once: exactly WARM_AT_CHANGES, which the next request patches
    assert ahead()[0] is None
    add_models(["one-more"])
    found, current = ahead()
    assert found == current


def test_large_orgs_have_over_a_hundred_names_of_their_own(
    factory: sessionmaker[Session],
) -> None:
    """domain.manifest.large_orgs, the orgs a starting server looks at: over
    WARM_AT_CHANGES names of their own, a name with a Model and an override counted once."""
    small, large = new_org(factory), new_org(factory, "globex")
    half = manifest.WARM_AT_CHANGES // 2 + 1
    with transaction(factory) as session:
        for org in (small, large):
            session.add_all([Model(org_id=org, model_id=f"m{i}") for i in range(half)])
            session.add_all(
                [CatalogVariant(org_id=org, name=f"m{i}", family="f") for i in range(half)]
            )
        session.add_all(
            [CatalogVariant(org_id=large, name=f"v{i}", family="f") for i in range(half)]
        )
    with transaction(factory, readonly=True) as session:
        found = set(manifest.large_orgs(session))
    assert large in found and small not in found


def test_a_stored_subtree_is_replaced_by_a_newer_key_only(
    factory: sessionmaker[Session],
) -> None:
    """Two servers storing a variant's subtree race: the one built from the later
    content_revision stays, whichever writes last (repo.save_manifest_tails' upsert),
    in batches of many variants at once."""
    org = new_org(factory)
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)
        session.add_all(CatalogVariant(org_id=org, name=f"v{i}", family="f") for i in range(3))
    built, _ = build_whole(factory, org)
    keys = sorted(built.tails)

    ids = [key[0] for key in keys]

    def save(revision: int, data: bytes) -> None:
        rows: list[repo.TailRow] = [
            (vid, revision, time, data, "onnx", b"d" * 32, None, None, None, None)
            for vid, _, time in keys
        ]
        with transaction(factory) as session:
            repo.save_manifest_tails(session, rows, manifest_pb.ENTRY_FORMAT)

    def stored() -> set[tuple[int, bytes]]:
        with transaction(factory, readonly=True) as session:
            rows = session.execute(
                select(ManifestTail.content_revision, ManifestTail.data).where(
                    ManifestTail.variant_id.in_(ids)
                )
            )
            return {(r[0], r[1]) for r in rows}

    save(5, b"five")
    save(3, b"three")  # an older build's, stored last
    assert stored() == {(5, b"five")}
    save(7, b"seven")
    assert stored() == {(7, b"seven")}
    with transaction(factory, readonly=True) as session:
        count = session.scalar(
            select(func.count()).select_from(ManifestTail).where(ManifestTail.variant_id.in_(ids))
        )
    assert count == len(keys) == 3


def test_stored_subtrees_are_read_only_in_the_readers_entry_format(
    factory: sessionmaker[Session],
) -> None:
    """A subtree stored by a release that serializes entries otherwise (another
    manifest_pb.ENTRY_FORMAT) is built again from rows, not served; storing it in the
    reader's format replaces it (one row per variant)."""
    org = new_org(factory)
    with transaction(factory) as session:
        session.add(Model(org_id=org, model_id="m", framework="onnx"))
        session.add(CatalogVariant(org_id=org, name="m", family="f"))
        tenancy.bump_org_revision(session, org)
    built, _ = build_whole(factory, org)
    variant_ids = {key[0] for key in built.fresh}
    assert len(variant_ids) == 1
    mine = manifest_pb.ENTRY_FORMAT

    def index(entry_format: int) -> manifest.Index:
        with transaction(factory, readonly=True) as session:
            return manifest.load_index(session, org, lambda keys: set(), entry_format)

    with transaction(factory) as session:
        manifest.save_built(session, built.unsaved(), mine + 1)
    other = index(mine)
    assert other.stored == {} and set(other.subtrees.variants) == variant_ids
    assert set(index(mine + 1).stored) == variant_ids

    with transaction(factory) as session:
        manifest.save_built(session, built.unsaved(), mine)
    assert set(index(mine).stored) == variant_ids
    assert index(mine + 1).stored == {}


def test_entries_are_stored_around_subtrees_for_the_model_row_they_were_made_with(
    factory: sessionmaker[Session],
) -> None:
    """A build stores, beside each subtree it serialized, the map entry it made around it
    and the Model row it was made with (an org's own variant: the org's Model; a blessed
    one: none); the next cold build takes them as they are, and makes (and stores again)
    only an entry whose Model row changed since."""
    org = new_org(factory)
    with transaction(factory) as session:
        session.add(Model(org_id=org, model_id="m", framework="onnx"))
        session.add(CatalogVariant(org_id=org, name="m", family="f"))
        session.add(CatalogVariant(org_id=None, name=f"b-{org}", family="f"))
        tenancy.bump_org_revision(session, org)
        repo.bump_catalog_revision(session)

    def cold() -> tuple[manifest.Index, manifest_pb.Built]:
        with transaction(factory, readonly=True) as session:
            index = manifest.load_index(session, org, lambda keys: set(), manifest_pb.ENTRY_FORMAT)
        return index, manifest_pb.build(index, {}, utcnow(), None, manifest_pb.TailCache())

    def save(built: manifest_pb.Built) -> None:
        with transaction(factory) as session:
            manifest.save_built(session, built.unsaved(), manifest_pb.ENTRY_FORMAT)

    def same(a: manifest_pb.Built, b: manifest_pb.Built) -> bool:
        """The same etag and entries' bytes (generate_time apart)."""
        return a.etag == b.etag and a.order == b.order

    first, _ = build_whole(factory, org)
    assert {e[0] for e in first.made.values()} == {("onnx", True), None}
    save(first)
    index, again = cold()
    mine, blessed = first.entries["m"], first.entries[f"b-{org}"]
    assert index.entries == {
        mine[1][0]: (("onnx", True), mine[2], mine[4]),
        blessed[1][0]: (None, blessed[2], blessed[4]),
    }
    assert again.made == {} and same(again, first)

    with transaction(factory) as session:
        session.execute(update(Model).where(Model.org_id == org).values(enabled=False))
        tenancy.bump_org_revision(session, org)
    _, changed = cold()
    assert list(changed.made) == [mine[1]] and changed.made[mine[1]][0] == ("onnx", False)
    assert same(changed, build_whole(factory, org)[0])
    save(changed)
    index, last = cold()
    assert index.entries[mine[1][0]][0] == ("onnx", False) and last.made == {}


def test_one_holder_at_a_time_claims_a_callers_background_build(
    factory: sessionmaker[Session],
) -> None:
    """domain.manifest.claim_build: taken when absent, refused while another holder's is
    current, taken over once it expired; a holder drops only its own claim; each caller
    (an org, the anonymous caller) has its own; a deleted org's is never taken."""
    org = new_org(factory)

    def claim(caller: str | None, holder: str) -> bool:
        with transaction(factory) as session:
            return manifest.claim_build(session, caller, holder)

    def release(caller: str | None, holder: str) -> None:
        with transaction(factory) as session:
            manifest.release_build(session, caller, holder)

    assert claim(org, "a") and not claim(org, "b")
    release(org, "b")  # not b's
    assert not claim(org, "b")
    release(org, "a")
    assert claim(org, "b")
    assert claim(None, "x") and not claim(None, "y")  # the anonymous caller's, apart
    with transaction(factory) as session:  # b's server died an hour ago
        session.execute(
            update(ManifestBuildClaim)
            .where(ManifestBuildClaim.org_id == org)
            .values(until=utcnow() - timedelta(hours=1))
        )
    assert claim(org, "c") and not claim(org, "b")
    release(org, "b")  # the expired holder's release leaves c's claim
    assert not claim(org, "d")
    with transaction(factory) as session:
        session.execute(delete(Org).where(Org.id == org))
    assert not claim(org, "e")


def test_an_orgs_first_manifest_patched_from_the_anonymous_one_equals_a_build_from_every_row(
    factory: sessionmaker[Session],
) -> None:
    """server.manifest_builds: an org with no manifest of its own starts from the anonymous
    caller's at (org, 0, its catalog revision), patched with the names the log lists since
    (every name the org ever wrote, and blessed names changed since): the same bytes and
    etag as building the org's from every row, also with tombstones pruned past revision
    0. An org whose log may miss live names since revision 0 (a live floor above it) gets
    None: its whole index is read instead."""
    with transaction(factory) as session:
        for name in ("b1", "b2", "shared", "gone"):
            session.add(CatalogVariant(org_id=None, name=name, family="blessed"))
        repo.bump_catalog_revision(session)
    with transaction(factory) as session:
        b1 = session.scalar(select(CatalogVariant.id).where(CatalogVariant.name == "b1"))
        session.add(CatalogVersion(variant_id=b1, version="1"))
        repo.bump_catalog_revision(session)
    anonymous, (_, _, catalog_revision) = build_whole(factory, None)
    org = new_org(factory)
    writes: list[Callable[[Session], object]] = [
        lambda s: s.add(Model(org_id=org, model_id="b1", framework="onnx")),  # a blessed name
        lambda s: s.add(Model(org_id=org, model_id="own", framework="tflite")),
        lambda s: s.add(CatalogVariant(org_id=org, name="own", family="mine")),
        lambda s: s.add(CatalogVariant(org_id=org, name="shared", family="override")),
        lambda s: s.add(Model(org_id=org, model_id="brief")),
        lambda s: s.execute(delete(Model).where(Model.model_id == "brief")),  # a tombstone
    ]
    for write in writes:
        with transaction(factory) as session:
            tenancy.bump_org_revision(session, org)
            write(session)
    with transaction(factory) as session:  # blessed writes after the anonymous build
        session.add(CatalogVariant(org_id=None, name="late", family="blessed"))
        session.execute(delete(CatalogVariant).where(CatalogVariant.name == "gone"))
        repo.bump_catalog_revision(session)
    derived, at = build_patched(
        factory, org, manifest_pb.TailCache(), anonymous, (org, 0, catalog_revision)
    )
    expected, expected_at = build_whole(factory, org)
    assert at == expected_at and derived.names == expected.names
    assert entries(derived) == entries(expected) and derived.etag == expected.etag
    assert {"b1", "own", "shared", "late"} <= set(derived.names)
    assert not {"brief", "gone"} & set(derived.names)

    # Tombstones pruned past revision 0: the names deleted before the floor are found from
    # what every entry comes from. The same manifest.
    with transaction(factory) as session:
        session.execute(update(Org).where(Org.id == org).values(manifest_changes_floor=1))
    derived, at = build_patched(
        factory, org, manifest_pb.TailCache(), anonymous, (org, 0, catalog_revision)
    )
    assert at == expected_at and entries(derived) == entries(expected)
    assert derived.etag == expected.etag

    # As migration 0013 left orgs written before it: even live names may have no row.
    with transaction(factory) as session:
        session.execute(update(Org).where(Org.id == org).values(manifest_live_floor=1))
    with transaction(factory, readonly=True) as session:
        assert (
            manifest.load_changes(
                session,
                org,
                (org, 0, catalog_revision),
                anonymous.entries,
                lambda keys: set(),
                manifest_pb.ENTRY_FORMAT,
            )
            is None
        )


def test_a_patch_past_pruned_tombstones_equals_a_build_from_every_row(
    factory: sessionmaker[Session],
) -> None:
    """A manifest older than the log's floors (the deleted names' rows pruned since, as
    the triggers prune tombstones 10,000 revisions old) is still patched, not rebuilt from
    every row: the names whose Model or variant is gone are found from what every entry
    comes from (domain.manifest.gone_sources). Each kind of deletion whose row is pruned:
    a Model; an org's override whose name the blessed variant serves again; a blessed
    variant whose name the org's Model keeps; a variant renamed."""
    org = new_org(factory)
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)
        repo.bump_catalog_revision(session)
        for name in ("shared", "kept"):
            session.add(CatalogVariant(org_id=None, name=name, family="blessed"))
        session.add(CatalogVariant(org_id=org, name="shared", family="override"))
        session.add(CatalogVariant(org_id=org, name="before", family="mine"))
        for name in ("dropped", "kept", "live"):
            session.add(Model(org_id=org, model_id=name, framework="onnx"))
    previous, since = build_whole(factory, org)
    with transaction(factory) as session:
        tenancy.bump_org_revision(session, org)
        repo.bump_catalog_revision(session)
        session.execute(delete(Model).where(Model.model_id == "dropped"))
        session.execute(
            delete(CatalogVariant).where(
                CatalogVariant.org_id == org, CatalogVariant.name == "shared"
            )
        )
        session.execute(
            delete(CatalogVariant).where(
                CatalogVariant.org_id.is_(None), CatalogVariant.name == "kept"
            )
        )
        session.execute(
            update(CatalogVariant).where(CatalogVariant.name == "before").values(name="after")
        )
        session.execute(update(Model).where(Model.model_id == "live").values(framework="tflite"))
    gone = {"dropped", "shared", "kept", "before"}
    with transaction(factory) as session:  # what pruning leaves: no tombstones, floors up
        session.execute(delete(ManifestChange).where(ManifestChange.name.in_(gone)))
        session.execute(
            update(Org).where(Org.id == org).values(manifest_changes_floor=Org.revision)
        )
        session.execute(update(CatalogState).values(manifest_changes_floor=CatalogState.revision))
    with transaction(factory, readonly=True) as session:
        _, logged, complete = repo.manifest_changes(session, org, since[1], since[2])
    assert not complete and not gone & logged and {"after", "live"} <= logged
    patched, at = build_patched(factory, org, manifest_pb.TailCache(), previous, since)
    expected, expected_at = build_whole(factory, org)
    assert at == expected_at and patched.names == expected.names
    assert entries(patched) == entries(expected) and patched.etag == expected.etag
    assert "dropped" not in patched.names and "before" not in patched.names
