"""Server CPU per simple unary RPC (GetModel, GetVersion, ListModels), against a baseline
revision measured in the same run.

For each backend (SQLite, then a throwaway PostgreSQL) it seeds one org with --models
models (one version each) plus a few other orgs, then starts `modelregistry serve` (log
level INFO, as in production) from this working tree and from `--baseline` (a git revision
exported with `git archive`) in turn, --rounds times, alternating. Each round drives
--requests calls, GetModel / GetVersion / ListModels(page_size=20) in turn with random
names, from --concurrency in-flight calls over one channel after a warm-up, and reads the
server's user+system CPU from /proc/<pid>/stat before and after. It prints requests/s and
server CPU ms per request (medians over rounds) and the baseline/current ratios.

    python bench/bench_unary.py                        # baseline: HEAD
    python bench/bench_unary.py --baseline 8ed6952 --backends sqlite --requests 2000

CPU per request hardly depends on what else runs on the machine; requests/s does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(REPO / "generated" / "python")]

import grpc  # noqa: E402

from domain import keys  # noqa: E402
from modelregistry.v1 import (  # noqa: E402
    model_service_pb2,
    model_service_pb2_grpc,
    models_pb2,
    version_service_pb2,
    version_service_pb2_grpc,
)
from storage.db import create_engine_for, session_factory, transaction  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from support.serve import ServeProcess  # noqa: E402
from support.services import postgres_from_env_or_start  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Seeded:
    database_url: str
    key: str
    models: list[str]
    versions: list[str]


def seed(database_url: str, n_models: int) -> Seeded:
    upgrade(database_url)
    engine = create_engine_for(database_url, pool_size=1)
    try:
        with transaction(session_factory(engine)) as s:
            for i in range(3):  # a few other orgs, so lookups are not on a one-row table
                keys.create_org(s, f"other-{i}", "enterprise")
                keys.create_key(s, f"other-{i}")
            keys.create_org(s, "bench", "enterprise")
            key = keys.create_key(s, "bench").token
    finally:
        engine.dispose()
    return Seeded(database_url, key, [f"models/m-{i:05d}" for i in range(n_models)], [])


async def create_rows(address: str, seeded: Seeded) -> None:
    md = (("authorization", f"Bearer {seeded.key}"),)
    async with grpc.aio.insecure_channel(address) as ch:
        ms = model_service_pb2_grpc.ModelServiceStub(ch)
        vs = version_service_pb2_grpc.VersionServiceStub(ch)
        for name in seeded.models:
            model_id = name.split("/", 1)[1]
            await ms.CreateModel(
                model_service_pb2.CreateModelRequest(
                    model_id=model_id, model=models_pb2.Model(framework="onnx", tags=["vision"])
                ),
                metadata=md,
            )
            v = await vs.CreateVersion(
                version_service_pb2.CreateVersionRequest(parent=name, version_id="1.0.0"),
                metadata=md,
            )
            seeded.versions.append(v.name)


@dataclass
class Round:
    label: str
    requests: int
    seconds: float
    cpu: float
    errors: int
    loadavg: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.requests


async def drive(address: str, seeded: Seeded, n: int, concurrency: int, rng: random.Random) -> int:
    md = (("authorization", f"Bearer {seeded.key}"),)
    errors = 0
    async with grpc.aio.insecure_channel(address) as ch:
        ms = model_service_pb2_grpc.ModelServiceStub(ch)
        vs = version_service_pb2_grpc.VersionServiceStub(ch)
        counter = iter(range(n))

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                kind = i % 3
                try:
                    if kind == 0:
                        await ms.GetModel(
                            model_service_pb2.GetModelRequest(name=rng.choice(seeded.models)),
                            metadata=md,
                            timeout=60,
                        )
                    elif kind == 1:
                        await vs.GetVersion(
                            version_service_pb2.GetVersionRequest(name=rng.choice(seeded.versions)),
                            metadata=md,
                            timeout=60,
                        )
                    else:
                        await ms.ListModels(
                            model_service_pb2.ListModelsRequest(page_size=20),
                            metadata=md,
                            timeout=60,
                        )
                except grpc.aio.AioRpcError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def run_round(
    label: str, tree: Path, work: Path, seeded: Seeded, args: argparse.Namespace, seed_no: int
) -> Round:
    env = {
        "PYTHONPATH": f"{tree}:{tree / 'generated' / 'python'}",
        "MODELREGISTRY_DATABASE_URL": seeded.database_url,
        "MODELREGISTRY_OBJECT_STORE": str(work / "blobs"),
    }
    srv = ServeProcess(tree, ["--conversion-workers", "0"], env=env)
    srv.log_path = work / f"serve-{label}-{seed_no}.log"
    with srv:
        assert srv.proc is not None
        pid = srv.proc.pid
        rng = random.Random(seed_no)
        asyncio.run(drive(srv.address, seeded, args.warmup, args.concurrency, rng))
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        errors = asyncio.run(drive(srv.address, seeded, args.requests, args.concurrency, rng))
        t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
    return Round(label, args.requests, t1 - t0, cpu1 - cpu0, errors, load_average())


def export_tree(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@dataclass
class Summary:
    backend: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, label: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds if r.label == label)


def bench_backend(
    backend: str, database_url: str, baseline: Path, work: Path, args: argparse.Namespace
) -> Summary:
    seeded = seed(database_url, args.models)
    srv = ServeProcess(
        REPO,
        ["--conversion-workers", "0"],
        env={
            "MODELREGISTRY_DATABASE_URL": database_url,
            "MODELREGISTRY_OBJECT_STORE": str(work / "blobs"),
        },
    )
    srv.log_path = work / f"serve-seed-{backend}.log"
    with srv:
        asyncio.run(create_rows(srv.address, seeded))
    summary = Summary(backend)
    for i in range(args.rounds):
        order = [("baseline", baseline), ("current", REPO)]
        if i % 2:
            order.reverse()
        for label, tree in order:
            r = run_round(label, tree, work, seeded, args, i)
            summary.rounds.append(r)
            print(
                f"  {backend:8} {label:8} round {i + 1}: {r.rps:7.0f} req/s, "
                f"server CPU {r.cpu_ms:5.2f} ms/req, errors {r.errors}, load {r.loadavg}",
                flush=True,
            )
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--requests", type=int, default=3000, help="measured calls per round")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="bench-unary-"))
    pg = None
    summaries: list[Summary] = []
    try:
        baseline = export_tree(args.baseline, work / "baseline")
        print(
            f"baseline {args.baseline} ({rev}) vs this working tree; {args.requests} calls "
            f"per round at concurrency {args.concurrency}, {args.rounds} rounds; "
            f"load average at start {load_average()}",
            flush=True,
        )
        for backend in backends:
            if backend == "sqlite":
                url = f"sqlite:///{work / 'registry.db'}"
            elif backend == "postgres":
                pg = pg or postgres_from_env_or_start()
                url = pg.new_database()
            else:
                p.error(f"unknown backend {backend!r}")
            summaries.append(bench_backend(backend, url, baseline, work, args))
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"| backend | baseline ({rev}) req/s | CPU ms/req | current req/s | CPU ms/req "
        f"| CPU ratio (baseline/current) | req/s ratio (current/baseline) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in summaries:
        b_rps, c_rps = s.median("baseline", "rps"), s.median("current", "rps")
        b_cpu, c_cpu = s.median("baseline", "cpu_ms"), s.median("current", "cpu_ms")
        print(
            f"| {s.backend} | {b_rps:.0f} | {b_cpu:.2f} | {c_rps:.0f} | {c_cpu:.2f} "
            f"| {b_cpu / c_cpu:.2f}x | {c_rps / b_rps:.2f}x |"
        )
    print(f"load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
