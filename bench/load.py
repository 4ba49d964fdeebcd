"""Load generators: ghz for this service's gRPC API, wrk for MLflow's REST API, both at the
same concurrency for the same time, each preceded by a short warm-up that is not counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stack import log

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "mlflow.lua"


@dataclass
class LoadResult:
    tool: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    error_detail: dict[str, Any]
    # The machine's 1-minute load average when the measured run ended (other work on a
    # shared machine shows here).
    load_avg: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ghz_latency(doc: dict[str, Any], pct: int) -> float:
    for row in doc.get("latencyDistribution") or []:
        if int(row["percentage"]) == pct:
            return float(row["latency"]) / 1e6
    return float("nan")


def protoset(workdir: Path) -> Path:
    """A descriptor set of protos/ for ghz (no reflection round trips, no import paths)."""
    import grpc_tools

    repo = BENCH_DIR.parent
    out = workdir / "modelregistry.protoset"
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p) for p in (repo / "protos").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{repo / 'protos'}", f"-I{wkt}",
         "--include_imports", f"--descriptor_set_out={out}", *protos],
        check=True,
    )  # fmt: skip
    return out


def run_ghz(
    ghz: str,
    protoset_path: Path,
    address: str,
    call: str,
    messages: list[dict[str, Any]],
    token: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    workdir: Path,
) -> LoadResult:
    """ghz over one HTTP/2 connection with `concurrency` workers; messages round-robin."""
    data = workdir / f"ghz-{uuid.uuid4().hex[:8]}.json"
    data.write_text(json.dumps(messages))
    meta = json.dumps({"authorization": f"Bearer {token}"})

    def once(duration: float) -> dict[str, Any]:
        with tempfile.NamedTemporaryFile(dir=workdir, suffix=".json", delete=False) as out:
            out_path = Path(out.name)
        argv = [
            ghz, "--insecure", "--protoset", str(protoset_path), "--call", call,
            "--data-file", str(data), "--metadata", meta,
            "--concurrency", str(concurrency), "--connections", "1",
            "--duration", f"{duration}s", "--duration-stop", "wait", "--timeout", "60s",
            "--format", "json", "--output", str(out_path),
            address,
        ]  # fmt: skip
        subprocess.run(argv, check=True, timeout=duration + 120, stdout=subprocess.DEVNULL)
        doc: dict[str, Any] = json.loads(out_path.read_text())
        out_path.unlink()
        doc.pop("details", None)
        return doc

    if warmup > 0:
        once(warmup)
    doc = once(seconds)
    codes = dict(doc.get("statusCodeDistribution") or {})
    ok = int(codes.get("OK", 0))
    total = int(doc.get("count", 0))
    errors = total - ok
    detail: dict[str, Any] = {}
    if errors:
        detail = {"status": codes, "errors": doc.get("errorDistribution")}
        log(f"ghz {call}: {errors} of {total} calls failed: {detail}")
    secs = float(doc["total"]) / 1e9
    return LoadResult(
        tool="ghz",
        requests=total,
        errors=errors,
        seconds=secs,
        # Throughput counts successful calls only.
        rps=ok / secs if secs else 0.0,
        p50_ms=_ghz_latency(doc, 50),
        p90_ms=_ghz_latency(doc, 90),
        p99_ms=_ghz_latency(doc, 99),
        mean_ms=float(doc.get("average", 0)) / 1e6,
        error_detail=detail,
        load_avg=os.getloadavg()[0],
    )


def run_wrk(
    wrk: str,
    base_url: str,
    mode: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    workdir: Path,
    names: list[str] | None = None,
    query: str = "",
) -> LoadResult:
    """wrk with `concurrency` keep-alive connections on 2 threads."""
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_QUERY": query}
    if names:
        names_file = workdir / f"names-{uuid.uuid4().hex[:8]}.txt"
        names_file.write_text("\n".join(names) + "\n")
        env["BENCH_NAMES"] = str(names_file)

    def once(duration: float) -> dict[str, Any]:
        env["BENCH_NONCE"] = uuid.uuid4().hex[:8]
        argv = [
            wrk, "--threads", str(min(2, concurrency)), "--connections", str(concurrency),
            "--duration", f"{max(1, round(duration))}s", "--timeout", "60s",
            "--script", str(WRK_SCRIPT), base_url,
        ]  # fmt: skip
        done = subprocess.run(
            argv, check=True, timeout=duration + 120, env=env, capture_output=True, text=True
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
        doc: dict[str, Any] = json.loads(lines[-1])
        return doc

    if warmup > 0:
        once(warmup)
    doc = once(seconds)
    errors = sum(
        int(doc[k])
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    total = int(doc["requests"])
    secs = float(doc["duration_us"]) / 1e6
    detail = {k: doc[k] for k in doc if k.endswith("errors") or k == "timeouts"} if errors else {}
    if errors:
        log(f"wrk {mode}: {errors} of {total} requests failed: {detail}")
    return LoadResult(
        tool="wrk",
        requests=total,
        errors=errors,
        seconds=secs,
        rps=max(0, total - int(doc["status_errors"])) / secs if secs else 0.0,
        p50_ms=float(doc["p50_us"]) / 1e3,
        p90_ms=float(doc["p90_us"]) / 1e3,
        p99_ms=float(doc["p99_us"]) / 1e3,
        mean_ms=float(doc["mean_us"]) / 1e3,
        error_detail=detail,
        load_avg=os.getloadavg()[0],
    )
