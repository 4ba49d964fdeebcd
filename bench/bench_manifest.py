"""`make bench-manifest`: the manifest of an org with 10,000 models.

Measures, server-side (in this process, the code GetManifest runs, no network):
- full build: what GetManifest runs when the caller's manifest at its current stamp is
  not in this process's memory (server.manifest_builds.ManifestBuilds itself). Cases: the
  common one, a rebuild after a change (here a new catalog version under one model) on a
  server holding the previous build (the names the change log lists, patched in); cold (a
  restarted server or a new replica) with the caller's whole manifest stored under the
  current stamp (one row read and decoded), stored one change behind (decoded, then the
  change log's names patched in), stored 1,500 revisions behind with 10 models changed
  (the same), stored further behind than the change log reaches (tombstones pruned past
  it: decoded, then the names the log still lists and those whose Model or variant is gone
  patched in), and stored with over a quarter of the names changed since (decoded, then
  every name's index row read and each unchanged entry reused); and a
  caller's first build, with no stored manifest: with every variant's subtree stored
  (every name's index row and stored subtree read, 10,000 entries joined), and with
  nothing stored (every subtree serialized from its rows; also timed: its reads alone,
  the least such a build can cost). Storing the whole manifest
  (done in the background after builds) is timed too;
- for comparison, the field-by-field build this replaced (every row loaded, every entry
  filled as a protobuf message), measured in the same run;
- not-modified check: read the (org, catalog) revision stamp (outside a transaction on
  PostgreSQL, as the server does) and look the etag up in the cache (what a polling device
  with a current etag costs);
and, for context, GetManifest over gRPC against a real server on this machine (adds
authentication of the key, the transfer, and the client's parsing): not-modified, the first
page, every page, and every page after a change; and a new server's first GetManifest with
nothing stored (as after a bulk import or an upgrade), on the request, once the build a
write through that server started is stored (server.manifest_builds.ManifestBuilds.written),
and once the build its start made is stored (ManifestBuilds.watch_catalog).

Then, on a database of its own, an org with 10 models of its own on a blessed catalog of
10,000 variants (run_blessed): the org's first GetManifest derived from the anonymous
caller's manifest, stored or held in memory, against the build from every name's row it
replaced, timed in the same run.

Each case also reports the most time one call spent in the garbage collector (collections
run wherever allocations trigger them). The process freezes what exists before the cases
start, as server.app.serve does once the server has started.

Shapes: `typical` (default) gives each of the 10,000 models its own variant (as an upload
creates it) with one active catalog version, one package and one weights resource;
`heavy` gives each two versions (one deprecated), each with one package of two resources.
20 blessed variants are visible too. Goals (issue 4): full build < 150 ms, not-modified
check < 2 ms at p99.

Timings are wall-clock, with the CPU time of this process beside them since the machine
may be shared (the load average is printed too).

    python bench/bench_manifest.py [--models N] [--shape typical|heavy]
                                   [--postgres | --database-url URL]

`make bench-manifest` runs it on SQLite (the embedded default) and on a throwaway
PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from domain import keys, manifest
from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import model_service_pb2_grpc, models_pb2
from server import manifest_pb, manifest_snapshot
from server.app import RegistryServer
from server.manifest_builds import ManifestBuilds
from server.runtime import Runtime
from server.settings import Settings
from storage.db import create_engine_for, session_factory, single_reads, transaction
from storage.migrate import upgrade
from storage.objectstore import open_store
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    ManifestSnapshot,
    ManifestTail,
    Model,
    Org,
    utcnow,
)
from storage.repos import catalog as catalog_repo
from storage.repos import tenancy

T = TypeVar("T")
GOAL_BUILD_MS = 150.0
GOAL_CHECK_P99_MS = 2.0
MANY_REVISIONS, MANY_CHANGED = 1500, 10
FIRST_EVER_RUNS = 5
WARM_SECONDS = 0.5


Rows = dict[str, list[dict[str, Any]]]


def variant_rows(rows: Rows, owner: str | None, name: str, i: int, heavy: bool) -> None:
    """A variant named `name` of `owner` (None: blessed) with its versions, packages and
    resources, appended to `rows` by table."""
    now = utcnow()
    vid = str(uuid.uuid4())
    rows["variants"].append(
        {"id": vid, "org_id": owner, "name": name, "family": "bench",
         "task_taxonomy": ["image-classification"], "parameter_count": 1_000_000 + i,
         "license": "apache-2.0", "description": f"variant {i}",
         "created_at": now, "updated_at": now}
    )  # fmt: skip
    for j, lifecycle in enumerate(("deprecated", "active") if heavy else ("active",)):
        cvid = str(uuid.uuid4())
        rows["versions"].append(
            {"id": cvid, "variant_id": vid, "version": f"1.{j}", "lifecycle": lifecycle,
             "model_version_id": None, "deprecated_at": now if j == 0 else None,
             "created_at": now + timedelta(microseconds=j)}
        )  # fmt: skip
        pid = str(uuid.uuid4())
        rows["packages"].append(
            {"id": pid, "catalog_version_id": cvid, "format": "onnx", "quantization": "none",
             "runtime": "onnxruntime", "source": "upload", "metrics": {}, "created_at": now}
        )  # fmt: skip
        files = (("weights", "model.onnx"), ("vocab", "l.txt")) if heavy else (("weights", "m"),)
        for k, (kind, file_name) in enumerate(files):
            rows["resources"].append(
                {"id": str(uuid.uuid4()), "package_id": pid, "kind": kind,
                 "file_name": file_name, "storage_key": f"{owner}/{name}/1.{j}/{file_name}",
                 "size_bytes": 1000 + i, "sha256": uuid.uuid4().hex * 2, "required": True,
                 "load_order": k, "created_at": now}
            )  # fmt: skip


def model_row(rows: Rows, org_id: str, name: str, i: int) -> None:
    now = utcnow()
    rows["models"].append(
        {"id": str(uuid.uuid4()), "org_id": org_id, "model_id": name, "framework": "onnx",
         "description": "", "tags": ["bench"], "enabled": i % 50 != 0, "revision": 1,
         "created_at": now, "updated_at": now}
    )  # fmt: skip


def insert_rows(session: Session, rows: Rows, org_id: str | None) -> None:
    """Insert `rows`, then bump the revisions as every write does (which also stamps the
    change log's rows of the names written)."""
    for table, name in (
        (Model, "models"), (CatalogVariant, "variants"), (CatalogVersion, "versions"),
        (ArtifactPackage, "packages"), (ArtifactResource, "resources"),
    ):  # fmt: skip
        if rows[name]:
            session.execute(insert(table), rows[name])
    catalog_repo.bump_catalog_revision(session)
    if org_id is not None:
        tenancy.bump_org_revision(session, org_id)


def new_rows() -> Rows:
    return {name: [] for name in ("models", "variants", "versions", "packages", "resources")}


def seed(session: Session, org_id: str, n: int, heavy: bool) -> None:
    """`n` models of the org, each with its own variant, and 20 blessed variants."""
    rows = new_rows()
    for i in range(n):
        name = f"model-{i:05d}"
        model_row(rows, org_id, name, i)
        variant_rows(rows, org_id, name, i, heavy)
    for _ in range(20):
        rows["variants"].append(
            {"id": str(uuid.uuid4()), "org_id": None, "name": f"blessed-{uuid.uuid4().hex[:8]}",
             "family": "bench", "task_taxonomy": ["text-generation"], "parameter_count": None,
             "license": "mit", "description": "", "created_at": utcnow(),
             "updated_at": utcnow()}
        )  # fmt: skip
    insert_rows(session, rows, org_id)


def build_from_rows(sessions: Any, caller: str | None) -> manifest_pb.Built:
    """The caller's build from the whole index with nothing in memory (ManifestBuilds' last
    resort), without ManifestBuilds around it: stored subtrees, else rows."""
    tails = manifest_pb.TailCache()
    pinned: dict[manifest.VariantKey, manifest_pb.Tail] = {}

    def cached(keys: list[manifest.VariantKey]) -> dict[manifest.VariantKey, Any]:
        pinned.update(tails.pin(keys))
        return pinned

    with manifest_pb.gc_pause(), transaction(sessions, readonly=True) as session:
        index = manifest.load_index(session, caller, cached, manifest_pb.ENTRY_FORMAT)
        built = manifest_pb.build(index, pinned, utcnow(), None, tails)
    return built


def save_built_tails(sessions: Any, built: manifest_pb.Built) -> None:
    """What ManifestBuilds._save_tails stores after a build (in the background)."""
    with transaction(sessions) as session:
        manifest.save_built(session, built.unsaved(), manifest_pb.ENTRY_FORMAT)


def store_built(sessions: Any, caller: str | None, built: manifest_pb.Built) -> None:
    """What ManifestBuilds stores after a build (in the background), under the caller's
    current stamp."""
    with transaction(sessions, readonly=True) as session:
        current = manifest.stamp(session, caller)
    data = manifest_snapshot.encode(built)
    with transaction(sessions) as session:
        manifest.save_stored(session, manifest.Stored(current, manifest_pb.ENTRY_FORMAT, data))


class NeverStore(manifest.StoreSchedule):
    """A store schedule with nothing ever to store (see run_bench's without_stores)."""

    def claim(self, stamp: manifest.Stamp, now: float) -> float | None:
        return None


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return pct(50), pct(99), statistics.fmean(ordered)


_gc_ms = [0.0]  # milliseconds this process has spent in the garbage collector
_gc_started = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_ms[0] += (time.perf_counter() - _gc_started[0]) * 1000


gc.callbacks.append(_on_gc)


class Samples:
    """Milliseconds per measured call: wall-clock, CPU time of this process, and of that
    the garbage collector's (collections run wherever allocations trigger them, so a
    build's objects may be walked during the next call)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.gc: list[float] = []

    def measure(self, fn: Callable[[], T]) -> T:
        collected, start, started = _gc_ms[0], time.perf_counter(), time.process_time()
        result = fn()
        self.cpu.append((time.process_time() - started) * 1000)
        self.wall.append((time.perf_counter() - start) * 1000)
        self.gc.append(_gc_ms[0] - collected)
        return result

    def lines(self, label: str, goal: float | None = None) -> list[str]:
        cpu = line("  the same, CPU time of this process", self.cpu)
        return [line(label, self.wall, goal), f"{cpu}   in gc: max {max(self.gc):.0f} ms"]


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> Samples:
    for _ in range(warmup):
        fn()
    samples = Samples()
    for _ in range(repeat):
        samples.measure(fn)
    return samples


def line(label: str, samples: list[float], goal: float | None = None) -> str:
    p50, p99, mean = percentiles(samples)
    text = f"  {label:<44} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   mean {mean:8.2f} ms"
    if goal is not None:
        text += f"   goal p99 < {goal:g} ms: {'met' if p99 < goal else 'MISSED'}"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--shape", choices=("typical", "heavy"), default="typical")
    ap.add_argument("--database-url", default="")
    ap.add_argument(
        "--postgres", action="store_true", help="on a throwaway PostgreSQL (tests/support)"
    )
    ap.add_argument("--builds", type=int, default=30)
    ap.add_argument("--checks", type=int, default=3000)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from support.services import PostgresServer

        pg = PostgresServer().start()
        try:
            code = run_bench(args, tmp, pg.new_database())
            run_blessed(args, tmp, pg.new_database())
            return code
        finally:
            pg.stop()
    code = run_bench(args, tmp, args.database_url or f"sqlite:///{tmp / 'bench.db'}")
    if not args.database_url:
        run_blessed(args, tmp, f"sqlite:///{tmp / 'blessed.db'}")
    return code


def analyze(engine: Any) -> None:
    """On PostgreSQL, refresh the planner's statistics after seeding, as autovacuum does
    within a minute of a bulk load (bench/seed.py does the same). Measured without it, the
    index read planned the org's 10,000 overrides as a 37-row guess and hashed them all to
    test 20 blessed rows: 25 instead of 11 ms. SQLite keeps no statistics unless told to
    (ANALYZE), which the server never does, so it is left as a server leaves it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def in_process(
    engine: Any, sessions: Any, tmp: Path
) -> tuple[asyncio.AbstractEventLoop, Callable[[Any], Any], Runtime]:
    """An event loop on a thread of its own, a function running a coroutine on it, and a
    Runtime as the server's (then gc.freeze, as server.app.serve does once started)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    defaults = Settings()
    rt = Runtime(
        engine=engine,
        sessions=sessions,
        store=open_store(str(tmp / "blobs")),
        executor=ThreadPoolExecutor(defaults.worker_threads, thread_name_prefix="rpc-io"),
        transfers=ThreadPoolExecutor(defaults.transfer_threads, thread_name_prefix="store-io"),
    )
    gc.collect()
    gc.freeze()
    return loop, run, rt


def run_bench(args: argparse.Namespace, tmp: Path, url: str) -> int:
    upgrade(url)
    engine = create_engine_for(url, pool_size=4)
    sessions = session_factory(engine)
    org_name = f"bench-{uuid.uuid4().hex[:8]}"
    with transaction(sessions) as session:
        org = keys.create_org(session, org_name, "team")
        token = keys.create_key(session, org_name).token
        org_id = org.id
    start = time.perf_counter()
    with transaction(sessions) as session:
        seed(session, org_id, args.models, args.shape == "heavy")
    analyze(engine)
    print(f"manifest benchmark: {args.models} models, {args.shape} shape, {url.split(':')[0]} "
          f"(seeded in {time.perf_counter() - start:.1f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip

    # --- server-side, in process ------------------------------------------------------
    loop, run, rt = in_process(engine, sessions, tmp)

    def build() -> manifest_pb.Built:
        return build_from_rows(sessions, org_id)

    def save_tails(built: manifest_pb.Built) -> None:
        save_built_tails(sessions, built)

    def forget_stored() -> None:
        with transaction(sessions) as session:
            session.execute(delete(ManifestTail))
            session.execute(delete(ManifestSnapshot))

    def forget_stored_manifest() -> None:
        with transaction(sessions) as session:
            session.execute(delete(ManifestSnapshot))

    def store(built: manifest_pb.Built) -> None:
        store_built(sessions, org_id, built)

    def without_stores(builds: ManifestBuilds) -> ManifestBuilds:
        """`builds` storing no whole manifest in the background: the cases store explicitly
        (`store`), and a cancelled store's encoding would run on in its worker thread into
        the next sample (~40 ms of CPU; storing is timed as a case of its own)."""
        builds.schedule = NeverStore()
        return builds

    def served_cold() -> manifest_pb.Built:
        """GetManifest on a server without the caller's manifest in memory (restarted, or
        a new replica): the stamp read, then ManifestBuilds.get (the stored manifest,
        served or reused, else the stored subtrees)."""

        async def once() -> manifest_pb.Built:
            builds = without_stores(ManifestBuilds(rt))
            try:
                return await builds.get(await rt.read(manifest.stamp, org_id))
            finally:
                await builds.close()

        result: manifest_pb.Built = run(once())
        return result

    def cold_one_change_behind() -> Samples:
        nonlocal built
        samples = Samples()
        for _ in range(args.builds):
            store(built)
            change()
            built = samples.measure(served_cold)
        return samples

    def many_revisions_behind() -> Samples:
        """A server without the caller's manifest in memory, its stored manifest
        MANY_REVISIONS behind with MANY_CHANGED models changed among them (a busy hour of
        an org's uploads between two fetches): decoded, then the changed names patched in
        (before migration 0015 the log kept 1,000 revisions: the whole index was read)."""
        nonlocal built
        samples = Samples()
        for _ in range(max(3, args.builds // 3)):
            store(built)
            for i in range(MANY_REVISIONS):
                # One write per transaction, as writers make them (1,500 updates of the
                # org's row in one transaction leave PostgreSQL a chain of row versions
                # that the next read of the row prunes, which no server sees).
                with transaction(sessions) as session:
                    tenancy.bump_org_revision(session, org_id)
                    if i % (MANY_REVISIONS // MANY_CHANGED) == 0:
                        session.add(
                            CatalogVersion(
                                variant_id=rnd.choice(variant_ids), version=uuid.uuid4().hex[:12]
                            )
                        )
            built = samples.measure(served_cold)
        return samples

    def beyond_the_log() -> None:
        """The change log no longer reaches back to any earlier build (as when a deleted
        name's tombstone was pruned past it, or over a quarter of the names changed):
        raise the org's floor."""
        with transaction(sessions) as session:
            session.execute(
                update(Org).where(Org.id == org_id).values(manifest_changes_floor=Org.revision)
            )

    def cold_beyond_the_log() -> Samples:
        """A server without the caller's manifest in memory, its stored manifest behind by
        more than the change log reaches: ManifestBuilds decodes it, reads the names the
        log lists and what every entry comes from (the org's Model names, the resolving
        variants' ids: domain.manifest.gone_sources), and patches those names."""
        nonlocal built
        samples = Samples()
        for _ in range(args.builds):
            store(built)
            change()
            beyond_the_log()
            built = samples.measure(served_cold)
        return samples

    model_names = _org_model_names(sessions, org_id)

    def cold_quarter_changed() -> Samples:
        """A server without the caller's manifest in memory, its stored manifest behind by
        one write that changed over a quarter of the names (CHANGES_SHARE; a bulk update):
        ManifestBuilds decodes it, reads every name's index row, and reuses each entry
        whose rows are unchanged (each sample changes another quarter)."""
        return cold_bulk_changed(int(len(built.names) * manifest.CHANGES_SHARE) + 1)

    def cold_largest_patch() -> Samples:
        """The same with as many names changed as a patch takes (CHANGES_SHARE): the
        changed names' rows read by name, the other entries taken from the stored one."""
        return cold_bulk_changed(int(len(built.names) * manifest.CHANGES_SHARE))

    def cold_bulk_changed(many: int) -> Samples:
        """Each sample: the stored manifest current, then one write changing the framework
        of `many` models (another run of names each time), then served_cold."""
        nonlocal built
        samples = Samples()
        for i in range(args.builds):
            store(built)
            start = i * many % len(model_names)
            names = (model_names * 2)[start : start + many]
            with transaction(sessions) as session:
                tenancy.bump_org_revision(session, org_id)
                for j in range(0, len(names), 500):
                    session.execute(
                        update(Model)
                        .where(Model.org_id == org_id, Model.model_id.in_(names[j : j + 500]))
                        .values(framework=f"bulk-{i}")
                    )
            built = samples.measure(served_cold)
        return samples

    def first_build_ever() -> tuple[Samples, Samples]:
        """Nothing stored, nothing in memory: a caller's first build when no server has
        serialized its variants yet (every variant from its rows; their subtrees stored
        afterwards, untimed), and, before each, what it reads alone (every row of every
        entry: the least such a build can cost)."""
        samples, reads = Samples(), Samples()
        for _ in range(max(3, args.builds // 5)):
            forget_stored()
            reads.measure(load_index_only)
            save_tails(samples.measure(build))
        return samples, reads

    def field_by_field(check: bool = False) -> str:
        """The build this replaced: every row loaded, every entry filled, serialized and
        hashed. With `check`, entries are hashed as the etag defines it (message_digest,
        which serializes each entry's two halves apart: slower, so not timed). Under the
        garbage-collector pause the new build runs under, for a fair comparison."""
        with manifest_pb.gc_pause():
            return _field_by_field(check)

    def _field_by_field(check: bool) -> str:
        with transaction(sessions, readonly=True) as session:
            data = manifest.load(session, org_id)
        out = pb.GetManifestResponse()
        etag = hashlib.sha256()
        for name in data.names:
            target = out.models[name]
            manifest_pb._fill(target, data, name)
            if check:
                digest = manifest_pb.message_digest(target)
            else:
                digest = hashlib.sha256(target.SerializeToString(deterministic=True)).digest()
            encoded = name.encode()
            etag.update(len(encoded).to_bytes(2, "big") + encoded + digest)
        return f"m-{etag.hexdigest()[:32]}"

    def cpu_reference() -> float:
        """Milliseconds of CPU for a fixed pure-Python loop: how fast this machine was
        during the run (shared hosts vary), to compare runs by."""
        started, x = time.process_time(), 0
        for i in range(3_000_000):
            x += i * i
        return (time.process_time() - started) * 1000

    built = build()
    save_tails(built)
    assert field_by_field(check=True) == built.etag, "both builds must give the same etag"
    entries = len(built.names)
    size = len(built.response())
    cache = manifest.ManifestCache(manifest_pb.Built.byte_size)
    with transaction(sessions, readonly=True) as session:
        stamp = manifest.stamp(session, org_id)
    cache.put(stamp, built.etag, built)
    variant_ids = _org_variants(sessions, org_id)
    rnd = random.Random(1)

    def change() -> None:
        """A new catalog version under one model (its trigger bumps the variant's
        content_revision), as an upload would record it."""
        with transaction(sessions) as session:
            tenancy.bump_org_revision(session, org_id)
            session.add(
                CatalogVersion(variant_id=rnd.choice(variant_ids), version=uuid.uuid4().hex[:12])
            )

    warm_server = without_stores(ManifestBuilds(rt))

    def rebuild_after_change() -> Samples:
        """GetManifest on a server holding the caller's previous build: the stamp read,
        then ManifestBuilds.get (the names changed since, from the change log, patched
        in)."""
        nonlocal built

        async def once() -> manifest_pb.Built:
            try:
                return await warm_server.get(await rt.read(manifest.stamp, org_id))
            finally:
                await warm_server.close()

        run(once())  # holds the current build
        samples = Samples()
        for _ in range(args.builds):
            change()
            built = samples.measure(lambda: run(once()))
        return samples

    def load_index_only() -> None:
        """What a caller's first build reads, nothing held in memory: every name's index
        row and every variant's stored subtree (with the entry stored around it), or its
        rows (versions, packages, resources) when none is stored."""
        with manifest_pb.gc_pause(), transaction(sessions, readonly=True) as session:
            manifest.load_index(session, org_id, lambda keys: (), manifest_pb.ENTRY_FORMAT)

    speed_before = cpu_reference()
    never, never_reads = first_build_ever()
    forget_stored_manifest()
    cold = timed(served_cold, args.builds, warmup=1)
    storing = timed(lambda: store(built), max(3, args.builds // 5), warmup=1)
    cold_stored = timed(served_cold, args.builds, warmup=1)
    rebuilds = rebuild_after_change()
    cold_behind = cold_one_change_behind()
    cold_many_behind = many_revisions_behind()
    cold_far_behind = cold_beyond_the_log()
    cold_largest = cold_largest_patch()
    cold_quarter = cold_quarter_changed()
    loads = timed(load_index_only, args.builds)
    baseline = timed(field_by_field, max(3, args.builds // 5), warmup=1)
    with transaction(sessions, readonly=True) as session:
        stamp = manifest.stamp(session, org_id)
    cache.put(stamp, built.etag, built)

    def check() -> None:
        """As GetManifest's not-modified path (Runtime.read_single): the stamp read outside
        a transaction on PostgreSQL."""
        with single_reads(sessions, rt.autocommit) as session:
            current = manifest.stamp(session, org_id)
        assert cache.etag(current) == built.etag

    checks = timed(check, args.checks, warmup=50)
    first_page = len(built.page(0, manifest.DEFAULT_PAGE_SIZE, lambda n: "x" * 120))
    print(
        f" server-side ({entries} entries, {size / 1e6:.1f} MB serialized; default pages of "
        f"up to {manifest.DEFAULT_PAGE_SIZE} entries, the first {first_page / 1e6:.2f} MB):"
    )
    print(
        f"  machine speed reference (3M-iteration Python loop, CPU time): {speed_before:.0f} ms "
        f"before these runs, {cpu_reference():.0f} ms after"
    )
    cases: list[tuple[str, Samples, float | None]] = [
        ("cold (restart or new replica), stored manifest", cold_stored, GOAL_BUILD_MS),
        ("cold, stored manifest one change behind", cold_behind, GOAL_BUILD_MS),
        (
            f"cold, stored {MANY_REVISIONS:,} revs behind, {MANY_CHANGED} changed",
            cold_many_behind,
            GOAL_BUILD_MS,
        ),
        ("cold, stored manifest beyond the change log", cold_far_behind, GOAL_BUILD_MS),
        ("cold, stored, a quarter changed less one: patch", cold_largest, GOAL_BUILD_MS),
        ("cold, stored, a quarter changed: whole index", cold_quarter, GOAL_BUILD_MS),
        ("a caller's first build, subtrees stored", cold, GOAL_BUILD_MS),
        ("  of that: reading the index and subtrees", loads, None),
        ("a caller's first build, nothing stored", never, None),
        ("  of that: reading every row", never_reads, None),
        ("rebuild after a change (previous build)", rebuilds, GOAL_BUILD_MS),
        ("storing the manifest (after builds, async)", storing, None),
        ("baseline: field-by-field build (replaced)", baseline, None),
        ("not-modified check (stamp + cache lookup)", checks, GOAL_CHECK_P99_MS),
    ]
    for label, samples, goal in cases:
        print("\n".join(samples.lines(label, goal)))

    # --- over gRPC, for context -------------------------------------------------------
    async def make(manifest_warm_seconds: float = 0.0) -> RegistryServer:
        return RegistryServer(
            Settings(
                listen="127.0.0.1:0",
                database_url=url,
                object_store=str(tmp / "blobs"),
                conversion_workers=0,
                manifest_warm_seconds=manifest_warm_seconds,
            )
        )

    def stop(server: RegistryServer) -> None:
        """Stop it, and wait for the database work its worker threads had started (a
        background store a cancelled task left running would land in the next case)."""
        run(server.stop(1.0))
        server.runtime.executor.shutdown(wait=True)

    server = run(make())
    port = run(server.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # default 4 MiB receive limit
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")]
    try:
        etag = stub.GetManifest(pb.GetManifestRequest(), metadata=auth).etag

        def rpc_not_modified() -> None:
            assert stub.GetManifest(
                pb.GetManifestRequest(if_none_match=etag), metadata=auth
            ).not_modified

        def rpc_first_page() -> None:
            stub.GetManifest(pb.GetManifestRequest(), metadata=auth)

        def rpc_all_pages() -> None:
            token, seen = "", 0
            while True:
                got = stub.GetManifest(pb.GetManifestRequest(page_token=token), metadata=auth)
                seen += len(got.models)
                token = got.next_page_token
                if not token:
                    break
            assert seen == entries, (seen, entries)

        def rpc_rebuild() -> Samples:
            samples = Samples()
            for _ in range(args.builds):
                change()  # the next call rebuilds
                samples.measure(rpc_first_page)
            return samples

        def rpc_first_ever(wait_for: str) -> Samples:
            """The first GetManifest of a fresh server with nothing stored (as after a
            bulk import of every model, or an upgrade that serializes entries otherwise):
            `wait_for` "nothing", built on that request; "write", a write went through
            the server first and the request comes once the build it started in the
            background is stored (ManifestBuilds.written); "start", no write, the request
            comes once the build the server's start made (ManifestBuilds.watch_catalog's
            look at orgs with many names) is stored."""
            samples = Samples()
            for i in range(FIRST_EVER_RUNS):
                forget_stored()
                fresh = run(make(manifest_warm_seconds=WARM_SECONDS))
                fresh_port = run(fresh.start())
                with grpc.insecure_channel(f"127.0.0.1:{fresh_port}") as fresh_channel:
                    there = model_service_pb2_grpc.ModelServiceStub(fresh_channel)
                    if wait_for == "start":
                        wait_until_stored()
                    elif wait_for == "write":
                        there.UpdateModel(
                            pb.UpdateModelRequest(
                                model=models_pb2.Model(
                                    name="models/model-00001", description=f"run {i}"
                                ),
                                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                            ),
                            metadata=auth,
                        )
                        wait_until_stored()
                    first = partial(there.GetManifest, pb.GetManifestRequest(), metadata=auth)
                    samples.measure(first)
                stop(fresh)
            return samples

        def wait_until_stored() -> None:
            """Until the org's manifest at its current stamp is stored."""
            with transaction(sessions, readonly=True) as session:
                current = manifest.stamp(session, org_id)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with transaction(sessions, readonly=True) as session:
                    stored = manifest.load_stored(session, org_id, manifest_pb.ENTRY_FORMAT)
                if stored is not None and manifest.at_least(stored.stamp, current):
                    return
                time.sleep(0.05)
            raise RuntimeError("the manifest was not built after the write")

        print(
            " over gRPC on loopback (includes API key check, transfer, client parsing; "
            "CPU is client and server):"
        )
        for label, rpc in (
            ("not-modified GetManifest", timed(rpc_not_modified, args.checks // 3, 20)),
            ("first page (default size), manifest built", timed(rpc_first_page, args.builds)),
            ("every page, manifest built", timed(rpc_all_pages, args.builds)),
            ("first page after a change (rebuild)", rpc_rebuild()),
        ):
            print("\n".join(rpc.lines(label)))
    finally:
        channel.close()
        stop(server)
    try:
        # With no other server running: one's background store would make "nothing
        # stored" false.
        for label, rpc in (
            ("new server, nothing stored: first page", rpc_first_ever("nothing")),
            ("  the same after a write to the server", rpc_first_ever("write")),
            ("  the same once the server's start built it", rpc_first_ever("start")),
        ):
            print("\n".join(rpc.lines(label)))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        engine.dispose()
    return 0


OWN_MODELS = 10


def run_blessed(args: argparse.Namespace, tmp: Path, url: str) -> None:
    """An org with OWN_MODELS models (half of them named like blessed variants) and one
    override, on a blessed catalog of args.models variants, and its first GetManifest on a
    server (no manifest of its own in memory or stored; the anonymous caller's stored, as
    servers leave it): since 6fe9163 the anonymous manifest patched with the org's names
    (decoded from the stored one, or held in memory), before that every name's row read
    and every entry joined (the baseline, timed in the same run)."""
    upgrade(url)
    engine = create_engine_for(url, pool_size=4)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        org_id = keys.create_org(session, f"bench-{uuid.uuid4().hex[:8]}", "team").id
    rows = new_rows()
    for i in range(args.models):
        variant_rows(rows, None, f"blessed-{i:05d}", i, args.shape == "heavy")
    for i in range(OWN_MODELS):
        model_row(rows, org_id, f"blessed-{i:05d}" if i % 2 else f"own-{i}", i)
    variant_rows(rows, org_id, "blessed-00001", 1, args.shape == "heavy")
    with transaction(sessions) as session:
        insert_rows(session, rows, org_id)
    analyze(engine)
    loop, run, rt = in_process(engine, sessions, tmp)
    anonymous = build_from_rows(sessions, None)
    save_built_tails(sessions, anonymous)
    store_built(sessions, None, anonymous)
    with transaction(sessions, readonly=True) as session:
        anonymous_stamp = manifest.stamp(session, None)
    mine = build_from_rows(sessions, org_id)
    save_built_tails(sessions, mine)

    def first_get(holding_anonymous: bool) -> manifest_pb.Built:
        async def once() -> manifest_pb.Built:
            builds = ManifestBuilds(rt)
            builds.schedule = NeverStore()
            if holding_anonymous:
                builds.manifests.put(anonymous_stamp, anonymous.etag, anonymous)
            try:
                return await builds.get(await rt.read(manifest.stamp, org_id))
            finally:
                await builds.close()

        built: manifest_pb.Built = run(once())
        assert built.etag == mine.etag, "the derived manifest must be the org's"
        return built

    derived_stored = timed(lambda: first_get(False), args.builds)
    derived_held = timed(lambda: first_get(True), args.builds)
    from_rows = timed(lambda: build_from_rows(sessions, org_id), args.builds)
    print(
        f" an org's first build, {OWN_MODELS} models of its own on {args.models:,} blessed "
        f"variants ({len(mine.names):,} entries; the anonymous manifest stored):"
    )
    for label, samples, goal in (
        ("from every name's row (before 6fe9163)", from_rows, GOAL_BUILD_MS),
        ("from the stored anonymous manifest", derived_stored, GOAL_BUILD_MS),
        ("from the anonymous manifest held in memory", derived_held, GOAL_BUILD_MS),
    ):
        print("\n".join(samples.lines(label, goal)))
    base = percentiles(from_rows.wall)[0]
    print(
        f"  ratio of p50s, from rows / derived: {base / percentiles(derived_stored.wall)[0]:.1f}x "
        f"(stored), {base / percentiles(derived_held.wall)[0]:.1f}x (held)"
    )
    loop.call_soon_threadsafe(loop.stop)
    engine.dispose()


def _org_model_names(sessions: Any, org_id: str) -> list[str]:
    with transaction(sessions, readonly=True) as session:
        return list(session.scalars(select(Model.model_id).where(Model.org_id == org_id)))


def _org_variants(sessions: Any, org_id: str) -> list[str]:
    with transaction(sessions, readonly=True) as session:
        return list(
            session.scalars(select(CatalogVariant.id).where(CatalogVariant.org_id == org_id))
        )


if __name__ == "__main__":
    sys.exit(main())
