"""server.manifest_pb assembles GetManifest responses from pre-serialized bytes; on random
manifests (both backends' raw row shapes, unicode and long names, large numbers, many
versions) they must parse to the very message that filling every field gives, with the same
etag, fresh or reusing a previous build, and split into pages that add up to it."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain import manifest
from modelregistry.v1 import model_service_pb2 as pb
from server import manifest_pb, manifest_snapshot
from storage.repos.catalog import ManifestRows

ModelRow = namedtuple("ModelRow", "id model_id framework enabled")
VariantRow = namedtuple(
    "VariantRow",
    "id org_id name family task_taxonomy parameter_count license description created_at "
    "updated_at content_revision",
)
VersionRow = namedtuple("VersionRow", "id variant_id version lifecycle created_at")
PackageRow = namedtuple(
    "PackageRow",
    "id catalog_version_id format quantization runtime source metrics created_at variant_id",
)
ResourceRow = namedtuple(
    "ResourceRow",
    "id package_id kind file_name stored size_bytes sha256 required load_order created_at",
)
GENERATED = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
STAMP: manifest.Stamp = ("org-1", 1, 1)


class World:
    """Random catalog rows, as SQLite (ISO text, JSON text) or PostgreSQL returns them."""

    def __init__(self, seed: int, postgres: bool) -> None:
        self.rnd = random.Random(seed)
        self.postgres = postgres
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)
        self.models: dict[str, ModelRow] = {}
        self.variants: dict[str, VariantRow] = {}
        self.versions: dict[str, list[VersionRow]] = {}
        self.packages: dict[str, list[PackageRow]] = {}
        self.resources: dict[str, list[ResourceRow]] = {}
        # Names written since the last clear: what the change log lists (a superset of
        # the names whose entries changed, as the triggers log).
        self.changed: set[str] = set()
        for _ in range(self.rnd.randint(20, 60)):
            self.add_name()

    def ts(self) -> Any:
        self.clock += timedelta(microseconds=self.rnd.randint(1, 10**9))
        return self.clock if self.postgres else self.clock.replace(tzinfo=None).isoformat(" ")

    def js(self, value: Any) -> Any:
        return value if self.postgres else json.dumps(value)

    def name(self) -> str:
        r = self.rnd
        kind = r.randrange(4)
        if kind == 0:
            return "m-" + uuid.UUID(int=r.getrandbits(128)).hex[: r.randint(1, 32)]
        if kind == 1:
            return "modèle-" + "ü" * r.randint(1, 60)
        if kind == 2:
            return "模型" * r.randint(20, 64)  # up to 384 bytes: two-byte length varints
        return r.choice("abcxyz") + str(r.randint(0, 10**6))

    def add_name(self) -> None:
        r = self.rnd
        name = self.name()
        self.changed.add(name)
        has_model, has_variant = r.choice([(True, False), (False, True), (True, True)])
        if has_model:
            self.models[name] = ModelRow(
                str(uuid.uuid4()), name, r.choice(["", "onnx", "pytorch"]), r.random() < 0.8
            )
        if has_variant:
            self.new_variant(name)

    def new_variant(self, name: str) -> None:
        r = self.rnd
        vid = str(uuid.uuid4())
        self.variants[name] = VariantRow(
            vid,
            None if r.random() < 0.3 else "org-1",
            name,
            r.choice(["", "resnet", "llama"]),
            self.js(r.choice([[], ["vision"], ["text-generation", "chat"]])),
            r.choice([None, 0, 7, 3 * 10**11]),
            r.choice(["", "mit", "apache-2.0"]),
            r.choice(["", "short", "long " * r.randint(30, 400)]),
            self.ts(),
            self.ts(),
            0,
        )
        self.versions[vid] = []
        for _ in range(r.choice([0, 1, 1, 2, 3, 40])):
            self.add_version(name)

    def add_version(self, name: str) -> None:
        r = self.rnd
        variant = self.variants[name]
        cv = VersionRow(
            str(uuid.uuid4()),
            variant.id,
            f"{r.randint(0, 9)}.{r.randint(0, 99)}",
            r.choice(["active", "active", "deprecated"]),
            self.ts(),
        )
        self.versions[variant.id].insert(0, cv)  # newest first
        self.packages[cv.id] = []
        for _ in range(r.choice([0, 1, 1, 2])):
            p = PackageRow(
                str(uuid.uuid4()),
                cv.id,
                r.choice(["onnx", "tflite", "gguf"]),
                r.choice(["none", "int8"]),
                r.choice(["", "onnxruntime"]),
                r.choice(["upload", "conversion"]),
                self.js(r.choice([{}, {"latency_ms": 3.5, "size_ratio": 0.25}])),
                self.ts(),
                variant.id,
            )
            self.packages[cv.id].append(p)
            self.resources[p.id] = [
                ResourceRow(
                    str(uuid.uuid4()),
                    p.id,
                    r.choice(["weights", "vocab", "config"]),
                    r.choice(["model.onnx", "vocab.txt", "ß.bin"]),
                    r.random() < 0.7,
                    r.choice([0, 1, 10**4, 5 * 10**12]),
                    r.choice([None, hashlib.sha256(str(i).encode()).hexdigest()]),
                    r.random() < 0.8,
                    i,
                    self.ts(),
                )
                for i in range(r.choice([0, 1, 2, 3]))
            ]
        self.touch(name)

    def touch(self, name: str) -> None:
        """What the triggers do: a write under the variant bumps its content_revision."""
        v = self.variants[name]
        self.variants[name] = v._replace(content_revision=v.content_revision + 1)
        self.changed.add(name)

    def mutate(self) -> None:
        r = self.rnd
        for _ in range(r.randint(1, 6)):
            step = r.randrange(8)
            if step == 0 and self.models:
                name = r.choice(sorted(self.models))
                m = self.models[name]
                self.models[name] = m._replace(enabled=not m.enabled)
                self.changed.add(name)
            elif step == 1 and self.variants:
                self.add_version(r.choice(sorted(self.variants)))
            elif step == 2 and self.variants:  # UpdateVariant: own fields and updated_at
                name = r.choice(sorted(self.variants))
                v = self.variants[name]
                self.variants[name] = v._replace(description="changed", updated_at=self.ts())
                self.changed.add(name)
            elif step == 3 and self.models:
                name = r.choice(sorted(self.models))
                del self.models[name]
                self.changed.add(name)
            elif step == 5 and self.variants:  # DeleteVariant (the name may leave)
                name = r.choice(sorted(self.variants))
                del self.variants[name]
                self.changed.add(name)
            elif step == 6:  # a write that shows nowhere (a description): logged anyway
                self.changed.add(r.choice(sorted(self.models.keys() | self.variants.keys())))
            elif step == 4 and self.variants:  # deprecate the newest version
                name = r.choice(sorted(self.variants))
                versions = self.versions[self.variants[name].id]
                if versions:
                    versions[0] = versions[0]._replace(lifecycle="deprecated")
                    self.touch(name)
            else:
                self.add_name()

    def rows(self) -> ManifestRows:
        variants = list(self.variants.values())
        versions = [cv for v in variants for cv in self.versions[v.id]]
        packages = [p for cv in versions for p in self.packages[cv.id]]
        resources = [x for p in packages for x in self.resources[p.id]]
        return ManifestRows(list(self.models.values()), variants, versions, packages, resources)

    def data(self) -> manifest.ManifestData:
        rows = self.rows()
        sub = manifest.group_subtrees(rows)
        return manifest.ManifestData(
            STAMP,
            sorted(self.models.keys() | self.variants.keys()),
            dict(self.models),
            dict(self.variants),
            sub.versions,
            sub.packages,
            sub.resources,
        )

    def index(
        self,
        have: set[manifest.VariantKey],
        stored: dict[manifest.VariantKey, manifest.StoredTail] | None = None,
        entries: dict[manifest.VariantKey, manifest.StoredEntry] | None = None,
    ) -> manifest.Index:
        """As domain.manifest.load_index gives it: the stored bytes of keys not in `have`
        that `stored` holds (under their current key) with the entries stored around them,
        subtrees for the others."""
        keys = {name: manifest.variant_key(v) for name, v in self.variants.items()}
        current = {
            key[0]: held
            for key, held in (stored or {}).items()
            if key in keys.values() and key not in have
        }
        around = {key[0]: e for key, e in (entries or {}).items() if key[0] in current}
        rows = self.rows()
        sub = manifest.group_subtrees(
            ManifestRows(
                [],
                [
                    v
                    for v in rows.variants
                    if manifest.variant_key(v) not in have and v.id not in current
                ],
                rows.versions,
                rows.packages,
                rows.resources,
            )
        )
        return manifest.Index(
            STAMP,
            sorted(self.models.keys() | self.variants.keys()),
            {name: (m.framework, m.enabled) for name, m in self.models.items()},
            keys,
            {v.id for v in self.variants.values() if v.org_id is None},
            current,
            around,
            sub,
        )

    def changes(self, have: set[manifest.VariantKey]) -> manifest.Index:
        """As domain.manifest.load_changes gives it: the index of the changed names only."""
        whole = self.index(have)
        names = sorted(self.changed)
        models = {n: m for n, m in whole.models.items() if n in self.changed}
        keys = {n: k for n, k in whole.variants.items() if n in self.changed}
        return manifest.Index(STAMP, names, models, keys, whole.blessed, {}, {}, whole.subtrees)


def reference(data: manifest.ManifestData) -> pb.GetManifestResponse:
    """The manifest as it was built before byte assembly: every entry filled field by
    field, the etag over each name and the entry_digest of the message's deterministic
    serializations."""
    out = pb.GetManifestResponse()
    etag = hashlib.sha256()
    for name in data.names:
        target = out.models[name]
        manifest_pb._fill(target, data, name)
        digest = manifest_pb.message_digest(target)
        encoded = name.encode()
        etag.update(len(encoded).to_bytes(2, "big") + encoded + digest)
    out.etag = f"m-{etag.hexdigest()[:32]}"
    manifest_pb._ts(out.generate_time, GENERATED)
    return out


def build(
    world: World,
    cache: manifest_pb.TailCache,
    previous: manifest_pb.Built | None = None,
    stored: dict[manifest.VariantKey, manifest.StoredTail] | None = None,
    entries: dict[manifest.VariantKey, manifest.StoredEntry] | None = None,
) -> manifest_pb.Built:
    keys = [manifest.variant_key(v) for v in world.variants.values()]
    pinned = cache.pin(keys, previous)
    index = world.index(set(pinned), stored, entries)
    return manifest_pb.build(index, pinned, GENERATED, previous, cache)


def pages(built: manifest_pb.Built, size: int, budget: int) -> list[pb.GetManifestResponse]:
    out, offset = [], 0
    while True:
        page = pb.GetManifestResponse.FromString(
            built.page(offset, size, lambda n: f"next:{n}", budget)
        )
        out.append(page)
        if not page.next_page_token:
            return out
        offset = int(page.next_page_token.split(":")[1])


@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite-rows", "postgres-rows"])
@pytest.mark.parametrize("seed", range(6))
def test_bytes_parse_to_the_field_by_field_manifest(seed: int, postgres: bool) -> None:
    world = World(seed, postgres)
    shared = manifest_pb.TailCache()
    built = build(world, shared)
    expected = reference(world.data())
    assert built.message() == expected
    assert built.etag == expected.etag
    # every entry's bytes are its deterministic serialization
    for name, e in built.entries.items():
        entry_bytes = pb.GetManifestResponse.FromString(e[2] + e[3]).models[name]
        assert entry_bytes == expected.models[name]
    # only blessed variants' tails are shared between callers (an org's own come from its
    # previous build)
    blessed = {v.id for v in world.variants.values() if v.org_id is None}
    assert set(shared.pin(built.tails)) == {key for key in built.tails if key[0] in blessed}
    # a second caller (its own tails stored), and a rebuild with nothing changed
    assert build(world, shared, stored=dict(built.tails)).message() == expected
    assert build(world, manifest_pb.TailCache(), previous=built).etag == expected.etag

    previous = built
    for _ in range(4):
        world.mutate()
        expected = reference(world.data())
        again = build(world, shared, previous)
        assert again.message() == expected and again.etag == expected.etag
        fresh = build(world, manifest_pb.TailCache())
        assert fresh.response() == again.response()
        previous = again


@pytest.mark.parametrize("seed", range(4))
def test_stored_tails_build_the_same_bytes(seed: int) -> None:
    """A cold build from stored tails and the entries stored around them (a restarted
    server or another replica) answers byte for byte what a build from rows does; only
    tails serialized from rows are new, and only entries whose Model row or tail changed
    are made. An entry is stored for an org's own variant, and for a blessed one only
    when made for a name without a Model (the entry every other caller shares)."""
    world = World(seed, postgres=seed % 2 == 1)
    first = build(world, manifest_pb.TailCache())
    assert {key for key, _, _ in first.unsaved()} == set(first.tails)
    stored: dict[manifest.VariantKey, manifest.StoredTail] = {}
    entries: dict[manifest.VariantKey, manifest.StoredEntry] = {}

    def save(built: manifest_pb.Built) -> None:
        for key, t, e in built.unsaved():
            stored[key] = t
            if e is None:
                entries.pop(key, None)
            else:
                entries[key] = e

    save(first)
    for _ in range(4):
        cold = build(world, manifest_pb.TailCache(), stored=stored, entries=entries)
        assert cold.response() == build(world, manifest_pb.TailCache()).response()
        assert cold.message() == reference(world.data())
        # only variants whose key moved on since their tail was stored are serialized
        assert set(cold.fresh) == set(cold.tails) - set(stored)
        models = {name: (m.framework, m.enabled) for name, m in world.models.items()}
        for name, v in world.variants.items():
            key, model, entry = manifest.variant_key(v), models.get(name), cold.entries[name]
            kept = entries.get(key) if key in stored else None
            if kept is not None and kept[0] == model:
                assert entry[2] is kept[1] and key not in cold.made  # taken as stored
            elif v.org_id is not None or model is None:
                assert cold.made[key] == (model, entry[2], entry[4])  # made, to be stored
            else:  # a blessed tail's entry for a caller with a Model of the name
                assert key not in cold.made
        save(cold)
        world.mutate()


@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite-rows", "postgres-rows"])
@pytest.mark.parametrize("seed", range(6))
def test_patching_the_changed_names_gives_the_whole_build(seed: int, postgres: bool) -> None:
    """manifest_pb.patch on the previous build with only the logged names' rows (names
    added, removed, changed, or logged without a visible change) equals a build from
    every row, and the patched build serves as the next one's previous."""
    world = World(seed, postgres)
    shared = manifest_pb.TailCache()
    previous = build(world, shared)
    for _ in range(5):
        world.changed.clear()
        world.mutate()
        changes = world.changes(set())
        keys = list(changes.variants.values())
        patched = manifest_pb.patch(
            previous, changes, shared.pin(keys, previous), GENERATED, shared
        )
        whole = build(world, manifest_pb.TailCache())
        assert patched.response() == whole.response()
        assert patched.names == whole.names and patched.etag == whole.etag
        assert patched.tails.keys() == whole.tails.keys()
        assert patched.message() == reference(world.data())
        previous = patched


@pytest.mark.parametrize(("size", "budget"), [(1, 1 << 30), (7, 1 << 30), (1000, 4096), (3, 1)])
def test_pages_add_up_to_the_manifest(size: int, budget: int) -> None:
    world = World(42, postgres=False)
    built = build(world, manifest_pb.TailCache())
    whole = built.message()
    got = pages(built, size, budget)
    merged: dict[str, Any] = {}
    for page in got:
        assert page.etag == whole.etag and page.generate_time == whole.generate_time
        assert 1 <= len(page.models) <= size
        entry_bytes = sum(
            pb.GetManifestResponse(models={k: v}).ByteSize() for k, v in page.models.items()
        )
        assert len(page.models) == 1 or entry_bytes <= budget
        assert not merged.keys() & page.models.keys()
        merged.update(page.models)
        names = sorted(page.models)
        assert names == list(built.names[built.names.index(names[0]) :][: len(names)])
    assert merged == dict(whole.models)
    assert not got[-1].next_page_token and all(p.next_page_token for p in got[:-1])


def test_tail_cache_is_bounded_and_pinned_tails_survive_eviction() -> None:
    world = World(7, postgres=True)
    cache = manifest_pb.TailCache(max_bytes=1)  # keeps at most the newest tail
    built = build(world, cache)
    assert len(cache) <= 1
    keys = [manifest.variant_key(v) for v in world.variants.values()]
    # the previous build still holds every tail it used
    assert len(cache.pin(keys, built)) == len(keys)
    assert build(world, cache, built).message() == reference(world.data())


@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite-rows", "postgres-rows"])
@pytest.mark.parametrize("seed", range(4))
def test_a_stored_manifest_decodes_to_the_build_and_serves_as_previous(
    seed: int, postgres: bool
) -> None:
    """server.manifest_snapshot: a decoded manifest answers the same bytes as the build it
    encodes, and as the previous build of a later one (a server without it in memory)
    reuses exactly what is unchanged: the same result as rebuilding from rows."""
    world = World(seed, postgres)
    built = build(world, manifest_pb.TailCache())
    for _ in range(3):
        decoded = manifest_snapshot.decode(manifest_snapshot.encode(built))
        assert decoded is not None
        assert decoded.response() == built.response()
        assert (decoded.etag, decoded.names, decoded.generate_time) == (
            built.etag, built.names, built.generate_time,
        )  # fmt: skip
        assert decoded.entries == built.entries and decoded.order == built.order
        assert decoded.tails == {key: built.tails[key] for key in decoded.tails}
        assert decoded.fresh == {}
        # nothing changed: every entry and tail is reused, nothing serialized
        again = build(world, manifest_pb.TailCache(), previous=decoded)
        assert again.response() == built.response() and again.fresh == {}
        world.mutate()
        built = build(world, manifest_pb.TailCache(), previous=decoded)
        assert built.message() == reference(world.data())
        assert built.response() == build(world, manifest_pb.TailCache()).response()


def test_a_stored_manifest_of_another_layout_is_not_used() -> None:
    data = manifest_snapshot.encode(build(World(3, postgres=False), manifest_pb.TailCache()))
    assert manifest_snapshot.decode(b"MRM\x00" + data[4:]) is None
    assert manifest_snapshot.decode(b"") is None
    header = len(manifest_snapshot.MAGIC) + manifest_snapshot._HEADER.size
    assert manifest_snapshot.decode(data[:header] + b"\xff" * 16 + data[header + 16 :]) is None


def test_a_stored_manifest_of_another_entry_format_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A manifest stored by a release that serialized entries otherwise is rebuilt, not
    served (manifest_pb.ENTRY_FORMAT)."""
    built = build(World(3, postgres=False), manifest_pb.TailCache())
    data = manifest_snapshot.encode(built)
    assert manifest_snapshot.decode(data) is not None
    monkeypatch.setattr(manifest_snapshot, "ENTRY_FORMAT", manifest_pb.ENTRY_FORMAT + 1)
    assert manifest_snapshot.decode(data) is None


# The sha256 of fixed_world()'s whole manifest, per manifest_pb.ENTRY_FORMAT. When the test
# below fails, the same rows serialize to other bytes than the format's: bump ENTRY_FORMAT
# (servers then ignore what older releases stored) and add the new digest here.
MANIFEST_DIGESTS = {
    1: "3ddb689ee9a0d4266f38e7e4404e9880e8453adaa63082d89af04a9abe097132",
}


def fixed_world() -> World:
    """Every field of an entry filled (and a few left empty), with fixed ids and times:
    an org's model with its own variant (two versions, a package of two resources), a
    disabled model without a variant, and a blessed variant without a model."""
    world = World(0, postgres=False)
    world.changed.clear()
    at = "2026-01-02 03:04:05.678901"
    world.models = {
        "detector": ModelRow("m-1", "detector", "", True),
        "off": ModelRow("m-2", "off", "pytorch", False),
    }
    world.variants = {
        "detector": VariantRow(
            "v-1", "org-1", "detector", "yolo", '["vision", "detection"]', 3_000_000, "mit",
            "finds things", at, "2026-01-03 00:00:00", 4,
        ),
        "llama": VariantRow(
            "v-2", None, "llama", "", "[]", None, "", "", at, at, 1,
        ),
    }  # fmt: skip
    world.versions = {
        "v-1": [
            VersionRow("cv-2", "v-1", "2.0", "active", "2026-01-05 00:00:00"),
            VersionRow("cv-1", "v-1", "1.0", "deprecated", at),
        ],
        "v-2": [VersionRow("cv-3", "v-2", "7", "active", at)],
    }
    world.packages = {
        "cv-2": [
            PackageRow(
                "p-1", "cv-2", "onnx", "int8", "onnxruntime", "conversion",
                '{"latency_ms": 3.5}', at, "v-1",
            )
        ],
        "cv-1": [],
        "cv-3": [PackageRow("p-2", "cv-3", "gguf", "none", "", "upload", "{}", at, "v-2")],
    }  # fmt: skip
    world.resources = {
        "p-1": [
            ResourceRow("r-1", "p-1", "weights", "model.onnx", True, 12345, "ab" * 32, True, 0, at),
            ResourceRow("r-2", "p-1", "config", "config.json", False, 0, None, False, 1, at),
        ],
        "p-2": [],
    }  # fmt: skip
    return world


def test_the_entry_format_names_the_bytes() -> None:
    built = build(fixed_world(), manifest_pb.TailCache())
    assert built.message() == reference(fixed_world().data())
    digest = hashlib.sha256(built.response()).hexdigest()
    assert digest == MANIFEST_DIGESTS.get(manifest_pb.ENTRY_FORMAT), (
        "the same rows serialize to other bytes than those of "
        f"manifest_pb.ENTRY_FORMAT {manifest_pb.ENTRY_FORMAT}: bump it and add {digest!r} "
        "to MANIFEST_DIGESTS"
    )


def test_store_schedule_stores_a_new_stamp_at_most_every_interval() -> None:
    """domain.manifest.StoreSchedule: the first build of a stamp not stored is stored at
    once; within the interval a newer one waits (and is asked about again), an older or
    equal one never is; a failed store is retried by the next build."""
    schedule = manifest.StoreSchedule(every=10.0)
    org: manifest.Stamp = ("org-1", 5, 1)
    assert schedule.claim(org, now=100.0) == 0.0
    assert schedule.claim(org, now=101.0) is None  # stored (being stored)
    assert schedule.claim(("org-1", 6, 1), now=104.0) == pytest.approx(6.0)
    assert schedule.claim(("org-1", 6, 1), now=110.0) == 0.0
    assert schedule.claim(("org-1", 5, 1), now=200.0) is None  # older than stored
    assert schedule.claim(("org-2", 1, 1), now=110.5) == 0.0  # callers are apart
    schedule.failed(("org-2", 1, 1))
    assert schedule.claim(("org-2", 1, 1), now=111.0) == 0.0
    # what another server stored, read back: nothing to store until the stamp moves on
    schedule.seen((None, 0, 9))
    assert schedule.claim((None, 0, 9), now=300.0) is None
    assert schedule.claim((None, 0, 10), now=300.0) == 0.0


def test_manifest_cache_keeps_bodies_up_to_a_byte_budget() -> None:
    """Many small manifests are kept beside each other, a large one pushes out the least
    recently used, and the newest is kept whatever its size; etags outlive bodies."""
    cache: manifest.ManifestCache[bytes] = manifest.ManifestCache(len, max_body_bytes=10)
    for org in "abc":
        cache.put((org, 1, 1), f"e-{org}", b"x" * 4)
    assert cache.body(("a", 1, 1)) is None  # 12 bytes: the oldest went
    assert cache.body(("b", 1, 1)) == ("e-b", b"xxxx") and cache.last("c") == (("c", 1, 1), b"xxxx")
    cache.put(("d", 1, 1), "e-d", b"y" * 50)
    assert cache.body(("d", 1, 1)) == ("e-d", b"y" * 50)
    assert [cache.last(o) for o in "bc"] == [None, None]
    assert cache.etag(("a", 1, 1)) == "e-a" and cache.etag(("a", 2, 1)) is None
    cache.put(("d", 2, 1), "e-d2", b"z")  # a caller's new build replaces its old one
    assert cache.last("d") == (("d", 2, 1), b"z") and cache.body(("d", 1, 1)) is None
