"""`make bench-upload`: streamed uploads through the server vs straight to MinIO.

In one run on this machine (throwaway PostgreSQL and MinIO from tests/support/services.py,
`modelregistry serve` as a subprocess on them):

- throughput of a 1 GiB upload through VersionService.UploadArtifacts (a gRPC client in
  this process streaming the file in 1 MiB messages, size and sha256 declared) vs a direct
  `minio` client upload of the same file to the same MinIO (`fput_object` with the same
  part size as the server's), as a ratio service / direct (goal >= 0.8). Direct and
  service runs alternate (--repeat times) so load changes on a shared machine hit both;
  the medians are compared.
- the server's peak RSS growth while it takes a 1 GiB and a 4 GiB file (goal: under
  100 MiB, and not growing with the file size): /proc/PID/status VmRSS sampled every
  10 ms during the upload, minus the RSS just before it (after a warm-up upload).

    python bench/bench_upload.py [--sizes-gib 1,4] [--repeat 3] [--chunk-mib 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from modelregistry.v1 import version_service_pb2 as vpb  # noqa: E402
from modelregistry.v1 import version_service_pb2_grpc  # noqa: E402
from support.serve import ServeProcess, run_cli  # noqa: E402
from support.services import minio_from_env_or_start, postgres_from_env_or_start  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
PART_SIZE = 8 * MiB  # the server's S3 part size (storage/objectstore/s3.py DEFAULT_PART_SIZE)
GOAL_RATIO = 0.8
GOAL_RSS_MIB = 100


def make_file(directory: Path, size: int) -> tuple[Path, str]:
    """A file of random bytes (64 MiB of os.urandom repeated with a counter) and its sha256."""
    path = directory / f"model-{size // MiB}MiB.bin"
    digest = hashlib.sha256()
    block = bytearray(os.urandom(64 * MiB))
    with path.open("wb") as f:
        written = 0
        i = 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")  # no two blocks alike
            piece = memoryview(block)[: min(len(block), size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            i += 1
    return path, digest.hexdigest()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all threads); this process when None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Cpu:
    """CPU seconds used by named processes during a block (load-independent cost)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> Cpu:
        self._start = {name: cpu_s(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: cpu_s(pid) - self._start[name] for name, pid in self.pids.items()}


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread; `peak` in KiB."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.peak = rss_kib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(self.interval)


class Service:
    def __init__(self, address: str, key: str) -> None:
        self.channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 16 * MiB),
                ("grpc.max_receive_message_length", 16 * MiB),
            ],
        )
        self.stub = version_service_pb2_grpc.VersionServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    def upload(self, path: Path, sha256: str, chunk: int, model: str) -> float:
        """Seconds for one UploadArtifacts call of `path`."""
        size = path.stat().st_size

        def requests() -> Iterator[vpb.UploadArtifactsRequest]:
            yield vpb.UploadArtifactsRequest(
                target=vpb.UploadTarget(parent=f"models/{model}/versions/1")
            )
            yield vpb.UploadArtifactsRequest(
                file=vpb.UploadFileHeader(
                    file=vpb.FileSpec(file_name="model.onnx", size_bytes=size, sha256=sha256),
                    format="onnx",
                    upload_id=str(uuid.uuid4()),
                )
            )
            with path.open("rb") as f:
                while data := f.read(chunk):
                    yield vpb.UploadArtifactsRequest(chunk=data)

        t0 = time.perf_counter()
        resp = self.stub.UploadArtifacts(requests(), metadata=self.metadata, timeout=3600)
        elapsed = time.perf_counter() - t0
        got = resp.packages[0].resources[0]
        assert (got.size_bytes, got.sha256) == (size, sha256), "the server stored other bytes"
        return elapsed


@dataclass
class Figures:
    direct_s: list[float]
    service_s: list[float]
    rss_growth_mib: dict[int, float]
    direct_cpu: list[dict[str, float]]
    service_cpu: list[dict[str, float]]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-gib", default="1,4", help="files for the RSS figures")
    ap.add_argument("--throughput-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3, help="direct/service pairs")
    ap.add_argument("--chunk-mib", type=float, default=1.0, help="bytes per gRPC message")
    ap.add_argument("--workdir", default=None, help="where the test files go (default: /tmp)")
    args = ap.parse_args()
    sizes = [int(float(s) * GiB) for s in args.sizes_gib.split(",") if s]
    chunk = int(args.chunk_mib * MiB)

    print(f"bench-upload: {os.cpu_count()} CPUs, load average {loadavg()}", flush=True)
    pg = postgres_from_env_or_start()
    minio = minio_from_env_or_start()
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.workdir))
    try:
        return run(args, sizes, chunk, pg, minio, work)
    finally:
        for f in work.glob("*"):
            if f.is_file():
                f.unlink()
        minio.stop()
        pg.stop()


def run(
    args: argparse.Namespace, sizes: list[int], chunk: int, pg: object, minio: object, work: Path
) -> int:
    db = pg.new_database()  # type: ignore[attr-defined]
    store = minio.new_bucket()  # type: ignore[attr-defined]
    bucket = store.split("/")[3].split("?")[0]
    mc = minio.client()  # type: ignore[attr-defined]
    proc = getattr(minio, "_proc", None)
    minio_pid = proc.pid if proc is not None else None  # an external MinIO: not measured
    backend = ["--database-url", db]
    run_cli(work, "migrate", *backend)
    run_cli(work, "orgs", "create", "bench", "--plan", "enterprise", *backend)
    key = run_cli(work, "keys", "create", "--org", "bench", *backend).strip()
    env = {"MODELREGISTRY_CONVERSION_WORKERS": "0"}
    srv = ServeProcess(work, [*backend, "--object-store", store], env=env)
    srv.start()
    try:
        assert srv.proc is not None
        pid = srv.proc.pid
        service = Service(srv.address, key)
        # Warm-up: connections, thread pool, lazily imported code paths.
        warm, warm_sha = make_file(work, 40 * MiB)
        service.upload(warm, warm_sha, chunk, "warmup")
        mc.fput_object(bucket, "warmup", str(warm), part_size=PART_SIZE)

        tp_size = int(args.throughput_gib * GiB)
        print(f"writing a {tp_size / GiB:g} GiB test file in {work} ...", flush=True)
        path, sha = make_file(work, tp_size)
        direct: list[float] = []
        via: list[float] = []
        direct_cpu: list[dict[str, float]] = []
        via_cpu: list[dict[str, float]] = []
        pids = {"client": None, "server": pid, "minio": minio_pid}
        for i in range(args.repeat):
            t0 = time.perf_counter()
            with Cpu(pids) as cpu:
                mc.fput_object(bucket, f"direct/{i}", str(path), part_size=PART_SIZE)
            direct.append(time.perf_counter() - t0)
            direct_cpu.append(cpu.used)
            mc.remove_object(bucket, f"direct/{i}")
            with Cpu(pids) as cpu:
                via.append(service.upload(path, sha, chunk, f"tp{i}"))
            via_cpu.append(cpu.used)
            print(
                f"  run {i + 1}: direct {tp_size / MiB / direct[-1]:7.1f} MiB/s   "
                f"UploadArtifacts {tp_size / MiB / via[-1]:7.1f} MiB/s   "
                f"(load {loadavg()})",
                flush=True,
            )
        path.unlink()

        growth: dict[int, float] = {}
        for size in sizes:
            print(f"writing a {size / GiB:g} GiB test file ...", flush=True)
            path, sha = make_file(work, size)
            time.sleep(1.0)
            base = rss_kib(pid)
            with RssSampler(pid) as sampler:
                seconds = service.upload(path, sha, chunk, f"rss{size // GiB}")
            growth[size] = (sampler.peak - base) / 1024
            print(
                f"  {size / GiB:g} GiB: server RSS {base / 1024:.0f} MiB before, peak "
                f"{sampler.peak / 1024:.0f} MiB (+{growth[size]:.1f} MiB); "
                f"{size / MiB / seconds:.1f} MiB/s",
                flush=True,
            )
            path.unlink()
    finally:
        srv.stop()
    report(Figures(direct, via, growth, direct_cpu, via_cpu), tp_size, chunk)
    return 0


def report(f: Figures, size: int, chunk: int) -> None:
    d = statistics.median(f.direct_s)
    s = statistics.median(f.service_s)
    ratio = d / s
    print()
    print(f"upload of {size / GiB:g} GiB, medians of {len(f.direct_s)} alternating runs:")
    print(f"  direct minio fput_object (part size {PART_SIZE // MiB} MiB): "
          f"{size / MiB / d:7.1f} MiB/s")  # fmt: skip
    print(f"  UploadArtifacts ({chunk / MiB:g} MiB messages):            "
          f"{size / MiB / s:7.1f} MiB/s")  # fmt: skip
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    print(f"  ratio service/direct: {ratio:.2f} ({verdict} the goal >= {GOAL_RATIO})")
    gib = size / GiB
    for name, runs in (("direct", f.direct_cpu), ("UploadArtifacts", f.service_cpu)):
        parts = {k: statistics.median(r[k] for r in runs) / gib for k in runs[0]}
        total = sum(parts.values())
        detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        print(f"  CPU seconds per GiB, {name}: {total:.1f} ({detail})")
    for size_b, g in sorted(f.rss_growth_mib.items()):
        ok = "ok" if g < GOAL_RSS_MIB else "OVER"
        print(
            f"  server peak RSS growth, {size_b / GiB:g} GiB file: {g:.1f} MiB "
            f"({ok}, goal < {GOAL_RSS_MIB} MiB)"
        )
    if len(f.rss_growth_mib) >= 2:
        values = [g for _s, g in sorted(f.rss_growth_mib.items())]
        print(f"  growth from the smallest to the largest file: {values[-1] - values[0]:+.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
