"""`make bench`: this service vs the MLflow Model Registry on one machine, side by side.

Starts PostgreSQL, MinIO, this service and an MLflow tracking server on 127.0.0.1, seeds the
same models into both (see seed.py), runs each scenario against both at the same
concurrency, writes bench/results/<scenario>.json (+ .png via charts.py in .venv-bench),
updates the README's Benchmarks table (full runs only), and stops everything.

    python bench/run.py            # the full run: 100,000 models, 30 s per load, 1 GiB
    python bench/run.py --quick    # 10,000 models, 5 s per load, 64 MiB; bench/results/quick
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests")]

import artifacts  # noqa: E402
import seed  # noqa: E402
from load import LoadResult, protoset, run_ghz, run_wrk  # noqa: E402
from stack import BENCH_VENV_BIN, Stack, dump_json, log, running_stack  # noqa: E402

from support.services import tools_bin_dir  # noqa: E402

SCENARIOS = ("get", "list", "create_model", "create_version", "artifacts")
MiB = 1024 * 1024
GiB = 1024 * MiB

GOALS = {
    "get": ("throughput >= 3x MLflow's", lambda r: r["ratio_rps"] >= 3.0),
    "list": (
        "throughput >= 3x MLflow's",
        lambda r: r["ratio_rps"] >= 3.0,
    ),
    "list_p99": (
        "p99 < 20 ms",
        lambda r: r["ours"]["p99_ms"] < 20.0,
    ),
    "list_p99_c1": (
        "p99 < 20 ms one at a time",
        lambda r: r["ours_c1"]["p99_ms"] < 20.0,
    ),
}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def software(stack: Stack, ghz: str, wrk: str) -> dict[str, str]:
    assert stack.pg is not None
    pins = {}
    for name in ("minio", "ghz"):
        pin = tools_bin_dir() / f".{name}.pin"
        pins[name] = pin.read_text().strip() if pin.exists() else "?"
    mlflow = _version([str(BENCH_VENV_BIN / "mlflow"), "--version"])  # "mlflow, version X"
    wrk_version = _version([wrk, "--version"]).split(" [")[0]  # "wrk debian/4.1.0-3+b2"
    return {
        "postgresql": _version([str(stack.pg.bindir / "postgres"), "--version"]),
        "minio": pins["minio"],
        "mlflow": mlflow.rsplit(" ", 1)[-1],
        "ghz": pins["ghz"],
        "wrk": wrk_version,
        "commit": _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def compare(
    name: str,
    title: str,
    ours: LoadResult,
    mlflow: LoadResult,
    ours_req: str,
    mlflow_req: str,
    single: tuple[LoadResult, LoadResult] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "scenario": name,
        "title": title,
        "ours": {**ours.to_json(), "request": ours_req},
        "mlflow": {**mlflow.to_json(), "request": mlflow_req},
        "ratio_rps": ours.rps / mlflow.rps if mlflow.rps else float("inf"),
        "ratio_p50": ours.p50_ms / mlflow.p50_ms if mlflow.p50_ms else float("nan"),
        "ratio_p99": ours.p99_ms / mlflow.p99_ms if mlflow.p99_ms else float("nan"),
    }
    if single is not None:
        # The same requests one at a time: latency without queueing behind the others.
        doc["ours_c1"], doc["mlflow_c1"] = single[0].to_json(), single[1].to_json()
        log(
            f"{title}, one at a time: modelregistry p50 {single[0].p50_ms:.1f} ms p99 "
            f"{single[0].p99_ms:.1f} ms | MLflow p50 {single[1].p50_ms:.1f} ms p99 "
            f"{single[1].p99_ms:.1f} ms"
        )
    goals = [(k, *GOALS[k]) for k in GOALS if k == name or k.startswith(name + "_")]
    doc["goals"] = [
        {"id": k, "text": text, "met": bool(check(doc))}
        for k, text, check in goals
        if k != "list_p99_c1" or "ours_c1" in doc
    ]
    log(
        f"{title}: modelregistry {ours.rps:,.0f}/s p50 {ours.p50_ms:.1f} ms p99 "
        f"{ours.p99_ms:.1f} ms | MLflow {mlflow.rps:,.0f}/s p50 {mlflow.p50_ms:.1f} ms p99 "
        f"{mlflow.p99_ms:.1f} ms | {doc['ratio_rps']:.2f}x"
    )
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced scale while developing")
    p.add_argument("--models", type=int, help="models seeded into each registry")
    p.add_argument("--duration", type=float, help="seconds of load per scenario and registry")
    p.add_argument("--warmup", type=float, help="seconds of uncounted load before each")
    p.add_argument("--concurrency", type=int, default=16, help="in-flight requests (both tools)")
    p.add_argument("--artifact-mib", type=int, help="size of the uploaded artifact in MiB")
    p.add_argument("--reps", type=int, default=2, help="repetitions of each transfer")
    p.add_argument("--mlflow-workers", type=int, default=4, help="MLflow server workers")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--out", type=Path, help="results directory")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record this service during its list load (speedscope JSON)",
    )
    p.add_argument("--no-readme", action="store_true", help="do not update README.md")
    p.add_argument("--time-limit", type=float, default=3600, help="abort after this many s")
    args = p.parse_args()

    quick = args.quick
    n = args.models or (10_000 if quick else 100_000)
    duration = args.duration or (5.0 if quick else 30.0)
    warmup = args.warmup if args.warmup is not None else (2.0 if quick else 5.0)
    size = (args.artifact_mib or (64 if quick else 1024)) * MiB
    out = args.out or (BENCH / "results" / ("quick" if quick else ""))
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    c = args.concurrency

    ghz = shutil.which("ghz") or str(tools_bin_dir() / "ghz")
    wrk = shutil.which("wrk") or "wrk"
    for tool in (ghz, wrk, str(BENCH_VENV_BIN / "mlflow")):
        if not shutil.which(tool):
            p.error(f"{tool} not found: run `make bench` (it installs the bench tools)")

    # Bounded in time: SIGALRM ends the run through the same cleanup as an error.
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --time-limit {args.time_limit:.0f} s")

    signal.signal(signal.SIGALRM, expired)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.alarm(int(args.time_limit))

    command = "make bench" + (" BENCH_ARGS=--quick" if quick else "")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="modelregistry-bench-"))
    run_info: dict[str, Any] = {}
    docs: dict[str, dict[str, Any]] = {}
    try:
        with running_stack(workdir, args.mlflow_workers) as stack:
            stack.start_backends()
            log(f"seeding {n:,} models into this service (storage layer, Core inserts)")
            token, secs = seed.seed_ours(stack.ours_db_url, n)
            log(f"  done in {secs:.1f} s")
            seed_ours_s = secs
            mlflow_url = stack.start_mlflow()
            log(f"seeding {n:,} registered models into MLflow (COPY into its tables)")
            seed_mlflow_s = seed.seed_mlflow(stack.pg_conninfo("mlflow"), n)
            log(f"  done in {seed_mlflow_s:.1f} s")
            address = stack.start_ours()
            seed.check_ours(address, token, n)
            seed.check_mlflow(mlflow_url, n)
            run_info = {
                "started": started,
                "command": command,
                "argv": shlex.join(sys.argv[1:]),
                "quick": quick,
                "models": n,
                "list_matches": seed.expected_list_matches(n),
                "concurrency": c,
                "duration_s": duration,
                "warmup_s": warmup,
                "mlflow_workers": args.mlflow_workers,
                "seed_seconds": {"modelregistry": seed_ours_s, "mlflow": seed_mlflow_s},
                "machine": machine(),
                "software": software(stack, ghz, wrk),
            }
            import random

            pset = protoset(workdir)
            rng = random.Random(42)
            picks = [seed.spec(rng.randrange(n)).model_id for _ in range(1000)]

            def ours_load(call: str, messages: list[dict[str, Any]]) -> LoadResult:
                return run_ghz(
                    ghz, pset, address, call, messages, token, c, duration, warmup, workdir
                )

            def mlflow_load(mode: str, conc: int = c, **kw: Any) -> LoadResult:
                return run_wrk(wrk, mlflow_url, mode, conc, duration, warmup, workdir, **kw)

            def ours_single(call: str, messages: list[dict[str, Any]]) -> LoadResult:
                return run_ghz(ghz, pset, address, call, messages, token, 1, duration, 0, workdir)

            if "get" in scenarios:
                log("scenario: get one model by name")
                docs["get"] = compare(
                    "get", "Get one model by name",
                    ours_load("modelregistry.v1.ModelService.GetModel",
                              [{"name": f"models/{m}"} for m in picks]),
                    mlflow_load("get", names=picks),
                    "ModelService/GetModel",
                    "GET /api/2.0/mlflow/registered-models/get",
                )  # fmt: skip
            if "list" in scenarios:
                log("scenario: filtered list (name search + tag + framework)")
                profiler = None
                if args.profile and stack.ours is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    profiler = subprocess.Popen(
                        [str(BENCH_VENV_BIN / "py-spy"), "record", "--pid", str(stack.ours.pid),
                         "--format", "speedscope", "--output", str(out / "list-profile.json"),
                         "--duration", str(int(duration + warmup + 2)), "--threads", "--idle"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                list_request: list[dict[str, Any]] = [
                    {
                        "page_size": 50,
                        "search": seed.LIST_SEARCH,
                        "tag": seed.LIST_TAG,
                        "framework": seed.LIST_FRAMEWORK,
                    }
                ]
                ours_list = ours_load("modelregistry.v1.ModelService.ListModels", list_request)
                if profiler is not None:
                    profiler.wait(timeout=120)
                query = urllib.parse.urlencode({"filter": seed.mlflow_filter(), "max_results": 50})
                mlflow_list = mlflow_load("search", query=query)
                single = (
                    ours_single("modelregistry.v1.ModelService.ListModels", list_request),
                    mlflow_load("search", conc=1, query=query),
                )
                docs["list"] = compare(
                    "list", "Filtered list, page of 50",
                    ours_list, mlflow_list,
                    "ModelService/ListModels search+tag+framework",
                    "GET /api/2.0/mlflow/registered-models/search name ILIKE+2 tags",
                    single,
                )  # fmt: skip
            if "create_model" in scenarios:
                log("scenario: create a model")
                docs["create_model"] = compare(
                    "create_model", "Create a model",
                    ours_load("modelregistry.v1.ModelService.CreateModel",
                              [{"model_id": "new-{{.UUID}}",
                                "model": {"framework": "onnx", "tags": ["vision"],
                                          "description": "created by the benchmark"}}]),
                    mlflow_load("create_model"),
                    "ModelService/CreateModel",
                    "POST /api/2.0/mlflow/registered-models/create",
                )  # fmt: skip
            if "create_version" in scenarios:
                log("scenario: create a version of an existing model")
                docs["create_version"] = compare(
                    "create_version", "Create a version",
                    ours_load("modelregistry.v1.VersionService.CreateVersion",
                              [{"parent": f"models/{m}", "version_id": "b-{{.UUID}}",
                                "version": {"description": "created by the benchmark"}}
                               for m in picks]),
                    mlflow_load("create_version", names=picks),
                    "VersionService/CreateVersion",
                    "POST /api/2.0/mlflow/model-versions/create",
                )  # fmt: skip
            if "artifacts" in scenarios:
                log(f"scenario: upload and download of {size / MiB:,.0f} MiB")
                try:
                    transfers = artifacts.run(
                        stack, address, token, mlflow_url, size, args.reps, workdir
                    )
                    docs["artifacts"] = artifacts_doc(transfers, size)
                except Exception as exc:  # e.g. UploadArtifacts not implemented yet
                    log(f"artifacts scenario failed: {exc}")
                    docs["artifacts"] = {"scenario": "artifacts", "error": str(exc)[:2000]}
    finally:
        signal.alarm(0)
        shutil.rmtree(workdir, ignore_errors=True)

    run_info["wall_seconds"] = round(time.monotonic() - t0, 1)
    for name, doc in docs.items():
        dump_json(out / f"{name}.json", {**doc, "run": run_info})
    dump_json(out / "summary.json", {"run": run_info, "scenarios": docs})
    log(f"results in {out}")
    charts = BENCH_VENV_BIN / "python"
    subprocess.run([str(charts), str(BENCH / "charts.py"), str(out)], check=True)
    if not quick and not args.no_readme:
        import report

        report.update_readme(REPO / "README.md", out / "summary.json")
        log("README.md Benchmarks section updated")
    return 0


def artifacts_doc(t: dict[str, dict[str, Any]], size: int) -> dict[str, Any]:
    limit_up = max(t["upload/minio-curl"]["mib_per_s"], t["upload/minio-py"]["mib_per_s"])
    limit_down = max(t["download/minio-curl"]["mib_per_s"], t["download/minio-py"]["mib_per_s"])
    ours_up = t["upload/modelregistry"]["mib_per_s"]
    doc = {
        "scenario": "artifacts",
        "title": f"Upload and download of {size / MiB:,.0f} MiB",
        "bytes": size,
        "transfers": t,
        "limit_upload_mib_per_s": limit_up,
        "limit_download_mib_per_s": limit_down,
        "ratio_upload_vs_limit": ours_up / limit_up,
        "ratio_upload_vs_mlflow": ours_up / t["upload/mlflow"]["mib_per_s"],
        "ratio_download_vs_limit": t["download/modelregistry"]["mib_per_s"] / limit_down,
        "ratio_download_vs_mlflow": t["download/modelregistry"]["mib_per_s"]
        / t["download/mlflow"]["mib_per_s"],
        "goal": {
            "text": "upload >= 0.8x direct MinIO",
            "met": bool(ours_up / limit_up >= 0.8),
        },
    }
    log(
        "upload MiB/s: modelregistry {:.0f}, MLflow {:.0f}, direct MinIO {:.0f}; peak RSS "
        "modelregistry {:.0f} MiB, MLflow {:.0f} MiB".format(
            ours_up,
            t["upload/mlflow"]["mib_per_s"],
            limit_up,
            t["upload/modelregistry"]["peak_rss_bytes"] / MiB,
            t["upload/mlflow"]["peak_rss_bytes"] / MiB,
        )
    )
    return doc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        sys.exit(130)
    except TimeoutError as exc:
        log(str(exc))
        sys.exit(124)
