"""`make load`: a bounded load run on loopback, then an audit of every acknowledged upload.

Starts a throwaway PostgreSQL and MinIO (or, with --backend embedded, SQLite and a local
directory) and `modelregistry serve` as its own process, then for --duration seconds drives:

- --uploads concurrent UploadArtifacts streams (each in a loop: a file of random size
  between --min-size and --max-size, unique bytes, declared sha256), spread over --orgs orgs
  so no org passes its cap of concurrent upload streams;
- unary traffic at --rate requests/s in total (GetModel, ListModels, ListVersions,
  GetVersion, QueryUploadStatus, ListVariants, CreateModel, GetManifest, and a deliberate
  over-cap burst: one org opening more upload streams than its cap, whose
  RESOURCE_EXHAUSTED answers are counted apart as deliberate rejections).

Then it re-reads every acknowledged artifact with DownloadArtifact and compares sha256 and
size with what the client sent, and checks the storage invariants (no row without its
object, every orphan reclaimable by gc). Prints requests, errors by code, p50/p99 latency,
bytes, lost and corrupt counts; exits non-zero when anything was lost or corrupt or an
error other than a deliberate rejection occurred. Stops by itself: the run, the drain and
the audit are each bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(ROOT / "generated" / "python")]

from domain import keys  # noqa: E402
from modelregistry.v1 import (  # noqa: E402
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    models_pb2,
    version_service_pb2,
    version_service_pb2_grpc,
)
from storage.db import create_engine_for, session_factory, transaction  # noqa: E402
from storage.migrate import upgrade  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    deliberate: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    acked: list[tuple[str, str, int, str]] = field(default_factory=list)  # org key, name, size, sha
    bad_acks: int = 0

    def record(self, kind: str, started: float, code: grpc.StatusCode) -> None:
        self.latencies[kind].append(time.perf_counter() - started)
        self.codes[(kind, code.name)] += 1


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))] * 1000


class Org:
    def __init__(self, name: str, key: str, channel: grpc.aio.Channel) -> None:
        self.name = name
        self.key = key
        self.md = (("authorization", f"Bearer {key}"),)
        self.models = model_service_pb2_grpc.ModelServiceStub(channel)
        self.versions = version_service_pb2_grpc.VersionServiceStub(channel)
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        self.known_versions: list[str] = []
        self.upload_ids: list[str] = []


POOL = os.urandom(8 * MiB)


def payload(size: int) -> bytes:
    start = random.randrange(0, len(POOL) - size) if size < len(POOL) else 0
    return uuid.uuid4().bytes + POOL[start : start + size - 16]


async def upload_requests(
    parent: str, data: bytes, upload_id: str
) -> AsyncIterator[version_service_pb2.UploadArtifactsRequest]:
    v = version_service_pb2
    yield v.UploadArtifactsRequest(target=v.UploadTarget(parent=parent))
    spec = v.FileSpec(
        file_name="model.onnx", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    yield v.UploadArtifactsRequest(
        file=v.UploadFileHeader(file=spec, format="onnx", upload_id=upload_id)
    )
    for i in range(0, len(data), CHUNK):
        yield v.UploadArtifactsRequest(chunk=data[i : i + CHUNK])


async def uploader(org: Org, worker: int, stop: float, stats: Stats, args: Any) -> None:
    n = 0
    while time.monotonic() < stop:
        n += 1
        size = random.randint(args.min_size, args.max_size)
        data = payload(size)
        digest = hashlib.sha256(data).hexdigest()
        parent = f"models/load-{worker}/versions/{n}"
        upload_id = str(uuid.uuid4())
        t0 = time.perf_counter()
        try:
            resp = await org.versions.UploadArtifacts(
                upload_requests(parent, data, upload_id), metadata=org.md, timeout=120
            )
        except grpc.aio.AioRpcError as err:
            stats.record("UploadArtifacts", t0, err.code())
            await asyncio.sleep(0.2)
            continue
        stats.record("UploadArtifacts", t0, grpc.StatusCode.OK)
        stats.bytes_up += size
        r = resp.packages[0].resources[0]
        if (r.sha256, r.size_bytes) != (digest, size):
            stats.bad_acks += 1
        stats.acked.append((org.key, r.name, size, digest))
        org.known_versions.append(parent)
        org.upload_ids.append(upload_id)


def unary_call(org: Org, rng: random.Random) -> tuple[str, Any]:
    m, v, c = model_service_pb2, version_service_pb2, catalog_service_pb2
    roll = rng.random()
    known = org.known_versions
    if roll < 0.25 and known:
        name = rng.choice(known)
        return "GetVersion", org.versions.GetVersion(
            v.GetVersionRequest(name=name), metadata=org.md, timeout=30
        )
    if roll < 0.45 and known:
        model = rng.choice(known).rsplit("/versions/", 1)[0]
        return "GetModel", org.models.GetModel(
            m.GetModelRequest(name=model), metadata=org.md, timeout=30
        )
    if roll < 0.60:
        return "ListModels", org.models.ListModels(
            m.ListModelsRequest(page_size=20), metadata=org.md, timeout=30
        )
    if roll < 0.72 and known:
        model = rng.choice(known).rsplit("/versions/", 1)[0]
        return "ListVersions", org.versions.ListVersions(
            v.ListVersionsRequest(parent=model, page_size=10), metadata=org.md, timeout=30
        )
    if roll < 0.82 and org.upload_ids:
        uid = rng.choice(org.upload_ids)
        return "QueryUploadStatus", org.versions.QueryUploadStatus(
            v.QueryUploadStatusRequest(upload_id=uid), metadata=org.md, timeout=30
        )
    if roll < 0.90:
        return "ListVariants", org.catalog.ListVariants(
            c.ListVariantsRequest(page_size=20), metadata=org.md, timeout=30
        )
    if roll < 0.97:
        mid = f"u-{uuid.uuid4().hex[:12]}"
        req = m.CreateModelRequest(model_id=mid, model=models_pb2.Model(framework="onnx"))
        return "CreateModel", org.models.CreateModel(req, metadata=org.md, timeout=30)
    manifest = org.models.GetManifest(m.GetManifestRequest(), metadata=org.md, timeout=60)
    return "GetManifest", manifest


async def unary_traffic(orgs: list[Org], stop: float, stats: Stats, rate: float) -> None:
    """Open-loop at `rate` req/s: a request is started on schedule whatever the latency
    of earlier ones (at most 2000 in flight)."""
    rng = random.Random(7)
    inflight: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(2000)

    async def one() -> None:
        org = rng.choice(orgs)
        kind, call = unary_call(org, rng)
        t0 = time.perf_counter()
        try:
            await call
            stats.record(kind, t0, grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as err:
            stats.record(kind, t0, err.code())
        finally:
            gate.release()

    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if due >= stop:
            break
        if due > now:
            await asyncio.sleep(due - now)
        await gate.acquire()
        task = asyncio.create_task(one())
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        n += 1
    if inflight:
        await asyncio.wait(inflight, timeout=60)


async def over_cap(org: Org, stop: float, stats: Stats, cap: int) -> None:
    """Every 5 s, one org opens cap + 4 slow upload streams at once: the extra ones must be
    refused with RESOURCE_EXHAUSTED (a deliberate rejection, counted apart)."""
    while time.monotonic() + 5 < stop:

        async def slow(i: int) -> None:
            async def requests() -> AsyncIterator[Any]:
                v = version_service_pb2
                yield v.UploadArtifactsRequest(
                    target=v.UploadTarget(parent=f"models/cap/versions/{i}")
                )
                await asyncio.sleep(1.0)

            t0 = time.perf_counter()
            try:
                await org.versions.UploadArtifacts(requests(), metadata=org.md, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                stats.deliberate["UploadArtifacts over the per-org stream cap"] += 1
                stats.latencies["over-cap"].append(time.perf_counter() - t0)
            else:
                # a stream that ended with no file: INVALID_ARGUMENT is the expected answer
                stats.deliberate[f"over-cap probe answered {code.name}"] += 1

        await asyncio.gather(*(slow(i) for i in range(cap + 4)))
        await asyncio.sleep(4)


async def audit_downloads(
    channel: grpc.aio.Channel, stats: Stats, limit: float
) -> tuple[int, int, int]:
    """(checked, lost, corrupt) over every acknowledged artifact."""
    stub = version_service_pb2_grpc.VersionServiceStub(channel)
    sem = asyncio.Semaphore(16)
    lost = corrupt = checked = 0
    deadline = time.monotonic() + limit

    async def check(key: str, name: str, size: int, digest: str) -> None:
        nonlocal lost, corrupt, checked
        async with sem:
            if time.monotonic() > deadline:
                return
            h = hashlib.sha256()
            got = 0
            for attempt in range(5):
                try:
                    h, got = hashlib.sha256(), 0
                    call = stub.DownloadArtifact(
                        version_service_pb2.DownloadArtifactRequest(name=name),
                        metadata=(("authorization", f"Bearer {key}"),),
                        timeout=120,
                    )
                    async for msg in call:
                        h.update(msg.data)
                        got += len(msg.data)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.NOT_FOUND or attempt == 4:
                        lost += 1
                        checked += 1
                        return
                    await asyncio.sleep(0.5)
            checked += 1
            if got != size or h.hexdigest() != digest:
                corrupt += 1

    await asyncio.gather(*(check(*a) for a in stats.acked))
    return checked, lost, corrupt


def make_orgs(db: str, n: int) -> list[tuple[str, str]]:
    engine = create_engine_for(db, pool_size=1)
    out = []
    try:
        with transaction(session_factory(engine)) as s:
            for _ in range(n):
                name = f"load-{uuid.uuid4().hex[:8]}"
                keys.create_org(s, name, "enterprise")
                out.append((name, keys.create_key(s, name).token))
    finally:
        engine.dispose()
    return out


async def drive(address: str, db: str, args: Any) -> dict[str, Any]:
    options = [
        ("grpc.max_receive_message_length", 32 * MiB),
        ("grpc.max_send_message_length", 32 * MiB),
    ]
    # a few channels (HTTP/2 connections), as many clients would have
    channels = [
        grpc.aio.insecure_channel(address, options=options) for _ in range(4 * args.servers)
    ]
    orgs = [
        Org(n, k, channels[i % len(channels)])
        for i, (n, k) in enumerate(make_orgs(db, args.orgs + 1))
    ]
    cap_org, orgs = orgs[-1], orgs[:-1]
    stats = Stats()
    # Seed every org with a few versions first, so reads of versions, models and uploads
    # are in the mix from the first second (not only late in the run, when any queue is
    # longest: that would skew their latencies against the other kinds).
    seeded = Stats()
    await asyncio.gather(
        *(
            uploader(org, 10_000 + i, time.monotonic() + 0.1, seeded, args)
            for i, org in enumerate(orgs)
        )
    )
    stats.acked += seeded.acked
    began = time.monotonic()
    stop = began + args.duration
    tasks = [uploader(orgs[w % len(orgs)], w, stop, stats, args) for w in range(args.uploads)] + [
        unary_traffic(orgs, stop, stats, args.rate)
    ]
    if args.over_cap:
        tasks.append(over_cap(cap_org, stop, stats, args.stream_cap))
    load_before = os.getloadavg()[0]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + 180)
    elapsed = time.monotonic() - began
    checked, lost, corrupt = await audit_downloads(channels[0], stats, limit=300)
    for ch in channels:
        await ch.close()
    return {
        "stats": stats,
        "elapsed": elapsed,
        "checked": checked,
        "lost": lost,
        "corrupt": corrupt,
        "loadavg": (load_before, os.getloadavg()[0]),
    }


def report(result: dict[str, Any], invariants: Any, args: Any) -> tuple[str, dict[str, Any], bool]:
    stats: Stats = result["stats"]
    elapsed = result["elapsed"]
    lines = []
    total = sum(stats.codes.values())
    unary = [k for k in stats.latencies if k not in ("UploadArtifacts", "over-cap")]
    unary_lat = [x for k in unary for x in stats.latencies[k]]
    up_lat = stats.latencies.get("UploadArtifacts", [])
    errors = Counter()
    for (kind, code), n in stats.codes.items():
        if code != "OK":
            errors[f"{kind} {code}"] += n
    uploads_ok = stats.codes.get(("UploadArtifacts", "OK"), 0)
    lines.append(
        f"load: {args.backend} backend, {args.servers} server process(es), {elapsed:.1f} s, "
        f"{args.uploads} upload streams, unary target {args.rate:g}/s"
    )
    window = args.duration
    lines.append(
        f"requests: {total}; unary {len(unary_lat)} issued at {len(unary_lat) / window:.0f}/s "
        f"over the {window:g} s window, the last answered {elapsed - window:.1f} s after it; "
        f"uploads {len(up_lat)} ({uploads_ok} acknowledged)"
    )
    behind = elapsed - window
    lines.append(
        f"throughput: {total / elapsed:.0f} answers/s over the {elapsed:.0f} s"
        + (
            f"; the server(s) fell behind the offered load (answers went on {behind:.0f} s "
            "after the window: requests queued, latencies below are mostly waiting)"
            if behind > max(5.0, 0.1 * window)
            else ""
        )
    )
    lines.append(
        "machine load average (1 min) before / after: "
        + " / ".join(f"{x:.1f}" for x in result["loadavg"])
        + f" on {os.cpu_count()} CPUs (client, server and databases share them)"
    )
    lines.append(
        f"bytes uploaded: {stats.bytes_up / MiB:.1f} MiB "
        f"({stats.bytes_up / MiB / elapsed:.1f} MiB/s)"
    )
    lines.append(
        f"latency unary p50/p99: {pct(unary_lat, 0.5):.1f} / {pct(unary_lat, 0.99):.1f} ms"
    )
    lines.append(f"latency upload p50/p99: {pct(up_lat, 0.5):.1f} / {pct(up_lat, 0.99):.1f} ms")
    for kind in sorted(stats.latencies):
        lat = stats.latencies[kind]
        lines.append(
            f"  {kind:<22} n={len(lat):<6} p50 {pct(lat, 0.5):8.1f} ms  "
            f"p99 {pct(lat, 0.99):8.1f} ms"
        )
    lines.append(
        "errors by code: " + (", ".join(f"{k}: {n}" for k, n in sorted(errors.items())) or "none")
    )
    lines.append(
        "deliberate rejections: "
        + (", ".join(f"{k}: {n}" for k, n in sorted(stats.deliberate.items())) or "none")
    )
    lines.append(
        f"audit: {result['checked']} of {len(stats.acked)} acknowledged artifacts re-read; "
        f"lost {result['lost']}, corrupt {result['corrupt']}, "
        f"wrong acknowledgements {stats.bad_acks}"
    )
    lines.append(
        f"storage invariants: {invariants.resources} rows, {invariants.objects} objects; "
        f"rows without object {len(invariants.missing)}, wrong size {len(invariants.wrong_size)}, "
        f"orphans gc would keep {len(invariants.unreclaimable)}"
    )
    ok = (
        not errors
        and result["lost"] == 0
        and result["corrupt"] == 0
        and stats.bad_acks == 0
        and result["checked"] == len(stats.acked)
        and invariants.ok()
    )
    lines.append("RESULT: " + ("PASS" if ok else "FAIL"))
    summary = {
        "backend": args.backend,
        "servers": args.servers,
        "seconds": round(elapsed, 1),
        "window_seconds": args.duration,
        "loadavg": [round(x, 1) for x in result["loadavg"]],
        "requests": total,
        "unary_requests": len(unary_lat),
        "uploads_acknowledged": uploads_ok,
        "bytes_uploaded": stats.bytes_up,
        "unary_p50_ms": round(pct(unary_lat, 0.5), 1),
        "unary_p99_ms": round(pct(unary_lat, 0.99), 1),
        "upload_p50_ms": round(pct(up_lat, 0.5), 1),
        "upload_p99_ms": round(pct(up_lat, 0.99), 1),
        "errors": dict(errors),
        "deliberate": dict(stats.deliberate),
        "audited": result["checked"],
        "lost": result["lost"],
        "corrupt": result["corrupt"],
        "pass": ok,
    }
    return "\n".join(lines), summary, ok


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["production", "embedded"], default="production")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--uploads", type=int, default=50, help="concurrent upload streams")
    p.add_argument("--rate", type=float, default=300.0, help="unary requests per second")
    p.add_argument("--orgs", type=int, default=5, help="orgs the upload streams are spread over")
    p.add_argument("--min-size", type=int, default=16 * 1024)
    p.add_argument("--max-size", type=int, default=2 * MiB)
    p.add_argument(
        "--stream-cap", type=int, default=16, help="the server's per-org upload stream cap"
    )
    p.add_argument("--no-over-cap", dest="over_cap", action="store_false")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--server-log",
        type=Path,
        help="keep the server's log here, at INFO (one JSON line per RPC with its duration), "
        "and report server-side latencies next to the client's",
    )
    p.add_argument(
        "--servers", type=int, default=1, help="server processes sharing the port (replicas)"
    )
    args = p.parse_args()
    if args.uploads > args.orgs * args.stream_cap:
        p.error("--uploads must fit under --orgs x --stream-cap")

    from support.invariants import audit
    from support.serve import ServeProcess
    from support.services import MinioServer, PostgresServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="modelregistry-load-"))
    pg = minio = None
    try:
        if args.backend == "production":
            pg, minio = PostgresServer().start(), MinioServer().start()
            db, store = pg.new_database(), minio.new_bucket()
        else:
            db, store = f"sqlite:///{tmp / 'registry.db'}", str(tmp / "blobs")
        upgrade(db)
        env = {
            "MODELREGISTRY_LOG_LEVEL": "INFO" if args.server_log else "WARNING",
            # this checkout's code, whatever the venv's editable install points at
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated" / "python")]),
        }
        # --servers N: N processes on one port (gRPC sets SO_REUSEPORT; the kernel spreads
        # the client's connections over them), as replicas would share a load balancer.
        port = free_port()
        with contextlib.ExitStack() as stack:
            servers = []
            for i in range(args.servers):
                cwd = tmp / f"server-{i}"
                cwd.mkdir()
                srv = ServeProcess(
                    cwd,
                    ["--database-url", db, "--object-store", store],
                    port=port,
                    env=env,
                    wait_ready=False,
                )
                servers.append(stack.enter_context(srv))
                wait_listening(srv)
                assert srv.proc is not None
                print(f"load: server pid {srv.proc.pid}", file=sys.stderr, flush=True)
            result = asyncio.run(drive(servers[0].address, db, args))
        invariants = audit(db, store)
        text, summary, ok = report(result, invariants, args)
        if args.server_log:
            with args.server_log.open("wb") as out:
                for srv in servers:
                    out.write(srv.log_path.read_bytes())
            text += "\n" + server_side(args.server_log)
        print(text, flush=True)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
        return 0 if ok else 1
    finally:
        for service in (minio, pg):
            if service is not None:
                service.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def server_side(log: Path) -> str:
    """p50/p99 of the durations the server logged per method (handler entry to answer),
    to set against the client-observed ones: the difference is time spent before the
    handler ran (client and server queues, connection flow control) or after it."""
    durations: dict[str, list[float]] = defaultdict(list)
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "rpc" and "duration_ms" in entry:
            method = str(entry["rpc_method"]).rsplit("/", 1)[-1]
            durations[method].append(float(entry["duration_ms"]) / 1000)
    lines = ["server-logged durations (the audit's downloads included):"]
    for method in sorted(durations):
        lat = durations[method]
        lines.append(
            f"  {method:<22} n={len(lat):<6} p50 {pct(lat, 0.5):8.1f} ms  "
            f"p99 {pct(lat, 0.99):8.1f} ms"
        )
    return "\n".join(lines)


def wait_listening(srv: Any, timeout: float = 60) -> None:
    """Until this server process (not just any process on the shared port) listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise SystemExit(f"server exited:\n{srv.log()}")
        if _listening_inodes(srv.port) & _socket_inodes(srv.proc.pid):
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise SystemExit("server did not listen in time")


def _listening_inodes(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(f[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


if __name__ == "__main__":
    sys.exit(main())
