"""`make bench-manifest`: the manifest of an org with 10,000 models.

Measures, server-side (in this process, the code GetManifest runs, no network):
- full build: load the caller's rows + build the protobuf map + hash it for the etag
  (what a cache miss costs: the first request after a change);
- not-modified check: read the (org, catalog) revision stamp in a read transaction and look
  the etag up in the cache (what a polling device with a current etag costs);
and, for context, the same two over gRPC against a real server on this machine (adds
authentication of the key, serialization and the loopback round trip).

Shapes: `typical` (default) gives each of the 10,000 models its own variant (as an upload
creates it) with one active catalog version, one package and one weights resource;
`heavy` gives each two versions (one deprecated), each with one package of two resources.
20 blessed variants are visible too. Goals (issue 4): full build < 150 ms, not-modified
check < 2 ms at p99.

Timings are wall-clock; CPU time of this process is printed beside the full build since
the machine may be shared (the load average is printed too).

    python bench/bench_manifest.py [--models N] [--shape typical|heavy] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import insert
from sqlalchemy.orm import Session

from domain import keys, manifest
from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import model_service_pb2_grpc
from server import manifest_pb
from server.app import RegistryServer
from server.settings import Settings
from storage.db import create_engine_for, session_factory, transaction
from storage.migrate import upgrade
from storage.orm import (
    ArtifactPackage,
    ArtifactResource,
    CatalogVariant,
    CatalogVersion,
    Model,
    utcnow,
)
from storage.repos import catalog as catalog_repo

GOAL_BUILD_MS = 150.0
GOAL_CHECK_P99_MS = 2.0


def seed(session: Session, org_id: str, n: int, heavy: bool) -> None:
    now = utcnow()
    models, variants, versions, packages, resources = [], [], [], [], []
    for i in range(n):
        name = f"model-{i:05d}"
        models.append(
            {"id": str(uuid.uuid4()), "org_id": org_id, "model_id": name, "framework": "onnx",
             "description": "", "tags": ["bench"], "enabled": i % 50 != 0, "revision": 1,
             "created_at": now, "updated_at": now}
        )  # fmt: skip
        vid = str(uuid.uuid4())
        variants.append(
            {"id": vid, "org_id": org_id, "name": name, "family": "bench",
             "task_taxonomy": ["image-classification"], "parameter_count": 1_000_000 + i,
             "license": "apache-2.0", "description": f"variant {i}",
             "created_at": now, "updated_at": now}
        )  # fmt: skip
        for j, lifecycle in enumerate(("deprecated", "active") if heavy else ("active",)):
            cvid = str(uuid.uuid4())
            versions.append(
                {"id": cvid, "variant_id": vid, "version": f"1.{j}", "lifecycle": lifecycle,
                 "model_version_id": None, "deprecated_at": now if j == 0 else None,
                 "created_at": now + timedelta(microseconds=j)}
            )  # fmt: skip
            pid = str(uuid.uuid4())
            packages.append(
                {"id": pid, "catalog_version_id": cvid, "format": "onnx", "quantization": "none",
                 "runtime": "onnxruntime", "source": "upload", "metrics": {}, "created_at": now}
            )  # fmt: skip
            files = (
                (("weights", "model.onnx"), ("vocab", "l.txt")) if heavy else (("weights", "m"),)
            )
            for k, (kind, file_name) in enumerate(files):
                resources.append(
                    {"id": str(uuid.uuid4()), "package_id": pid, "kind": kind,
                     "file_name": file_name, "storage_key": f"{org_id}/{name}/1.{j}/{file_name}",
                     "size_bytes": 1000 + i, "sha256": uuid.uuid4().hex * 2, "required": True,
                     "load_order": k, "created_at": now}
                )  # fmt: skip
    for _ in range(20):
        variants.append(
            {"id": str(uuid.uuid4()), "org_id": None, "name": f"blessed-{uuid.uuid4().hex[:8]}",
             "family": "bench", "task_taxonomy": ["text-generation"], "parameter_count": None,
             "license": "mit", "description": "", "created_at": now, "updated_at": now}
        )  # fmt: skip
    for table, rows in (
        (Model, models), (CatalogVariant, variants), (CatalogVersion, versions),
        (ArtifactPackage, packages), (ArtifactResource, resources),
    ):  # fmt: skip
        session.execute(insert(table), rows)
    catalog_repo.bump_catalog_revision(session)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return pct(50), pct(99), statistics.fmean(ordered)


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


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
    ap.add_argument("--builds", type=int, default=30)
    ap.add_argument("--checks", type=int, default=3000)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
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
    print(f"manifest benchmark: {args.models} models, {args.shape} shape, {url.split(':')[0]} "
          f"(seeded in {time.perf_counter() - start:.1f} s; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip

    # --- server-side, in process ------------------------------------------------------
    cpu: list[float] = []

    def build(previous: manifest_pb.Built | None = None) -> manifest_pb.Built:
        started = time.process_time()
        with transaction(sessions, readonly=True) as session:
            data = manifest.load(session, org_id)
        built = manifest_pb.response(data, utcnow(), previous)
        cpu.append((time.process_time() - started) * 1000)
        return built

    built = build()
    body = built.response
    entries = len(body.models)
    size = body.ByteSize()
    cache: manifest.ManifestCache[manifest_pb.Built] = manifest.ManifestCache()
    with transaction(sessions, readonly=True) as session:
        stamp = manifest.stamp(session, org_id)
    cache.put(stamp, body.etag, built)

    def load_only() -> None:
        with transaction(sessions, readonly=True) as session:
            manifest.load(session, org_id)

    def check() -> None:
        with transaction(sessions, readonly=True) as session:
            current = manifest.stamp(session, org_id)
        assert cache.etag(current) == body.etag

    cpu.clear()
    builds = timed(build, args.builds)
    build_cpu = cpu[-args.builds :]
    cpu.clear()
    rebuilds = timed(lambda: build(built), args.builds)
    rebuild_cpu = cpu[-args.builds :]
    loads = timed(load_only, args.builds)
    checks = timed(check, args.checks, warmup=50)
    print(f" server-side ({entries} entries, {size / 1e6:.1f} MB serialized):")
    print(line("full build, cold (rows + protobuf + etag)", builds, GOAL_BUILD_MS))
    print(line("  the same, CPU time of this process", build_cpu))
    print(line("full build reusing the previous build", rebuilds, GOAL_BUILD_MS))
    print(line("  the same, CPU time of this process", rebuild_cpu))
    print(line("  of either: loading the rows", loads))
    print(line("not-modified check (stamp + cache lookup)", checks, GOAL_CHECK_P99_MS))

    # --- over gRPC, for context -------------------------------------------------------
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    async def make() -> RegistryServer:
        return RegistryServer(
            Settings(
                listen="127.0.0.1:0",
                database_url=url,
                object_store=str(tmp / "blobs"),
                max_message_bytes=256 << 20,  # a 10,000-model manifest passes 16 MB
            )
        )

    server = run(make())
    port = run(server.start())
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 << 20)]
    )
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")]
    try:
        etag = stub.GetManifest(pb.GetManifestRequest(), metadata=auth).etag

        def rpc_not_modified() -> None:
            assert stub.GetManifest(
                pb.GetManifestRequest(if_none_match=etag), metadata=auth
            ).not_modified

        def rpc_cached() -> None:
            stub.GetManifest(pb.GetManifestRequest(), metadata=auth)

        def rpc_rebuild() -> None:
            with transaction(sessions) as session:  # a change: the next call rebuilds
                catalog_repo.bump_catalog_revision(session)
            stub.GetManifest(pb.GetManifestRequest(), metadata=auth)

        print(" over gRPC on loopback (includes API key check, serialization, transfer):")
        print(line("not-modified GetManifest", timed(rpc_not_modified, args.checks // 3, 20)))
        print(line("full GetManifest, built manifest cached", timed(rpc_cached, args.builds)))
        print(line("full GetManifest after a change (rebuild)", timed(rpc_rebuild, args.builds)))
    finally:
        channel.close()
        run(server.stop(1.0))
        loop.call_soon_threadsafe(loop.stop)
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
