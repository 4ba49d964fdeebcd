"""The servers a benchmark run needs, all on 127.0.0.1 and all stopped at the end.

PostgreSQL and MinIO are the test suite's throwaway servers (tests/support/services.py),
shared by both registries: this service gets database `modelregistry` and bucket
`modelregistry`, MLflow gets database `mlflow` and bucket `mlflow-artifacts`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from support.services import MinioServer, PostgresServer, free_port

REPO = Path(__file__).resolve().parent.parent
MAIN_VENV_BIN = REPO / ".venv" / "bin"
BENCH_VENV_BIN = REPO / ".venv-bench" / "bin"

OURS_DB = "modelregistry"
MLFLOW_DB = "mlflow"
OURS_BUCKET = "modelregistry"
MLFLOW_BUCKET = "mlflow-artifacts"


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


class Proc:
    """A server subprocess in its own process group with stdout+stderr in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=logdir,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Workers a server forked into the same process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class RssSampler:
    """Samples the summed RSS of a process and its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.baseline = rss_bytes(process_tree(pid))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = process_tree(self.pid)
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_scan > 1.0:  # pick up workers started meanwhile
                pids, last_scan = process_tree(self.pid), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(what: str, check: Any, proc: Proc | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited while starting:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} not ready within {timeout:.0f}s:\n" + (proc.tail() if proc else "")
            )
        time.sleep(0.2)


@dataclass
class Stack:
    workdir: Path
    mlflow_workers: int
    pg: PostgresServer | None = None
    minio: MinioServer | None = None
    ours: Proc | None = None
    mlflow: Proc | None = None
    ours_port: int = 0
    mlflow_port: int = 0
    procs: list[Proc] = field(default_factory=list)

    # -- backends ----------------------------------------------------------------------

    def start_backends(self) -> None:
        log("starting PostgreSQL and MinIO")
        self.pg = PostgresServer().start()
        # The test server's 32 MB of shared buffers would make the seeded tables spill:
        # give both registries room (the same room).
        import psycopg

        with psycopg.connect(self.pg.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_buffers = '512MB'")
            conn.execute("ALTER SYSTEM SET max_connections = '300'")
            conn.execute(f'CREATE DATABASE "{OURS_DB}"')
            conn.execute(f'CREATE DATABASE "{MLFLOW_DB}"')
        self.pg.stop_temporarily()
        self.pg.start()
        self.minio = MinioServer().start()
        client = self.minio.client()
        client.make_bucket(OURS_BUCKET)
        client.make_bucket(MLFLOW_BUCKET)

    @property
    def ours_db_url(self) -> str:
        assert self.pg is not None
        return self.pg.url(OURS_DB)

    @property
    def mlflow_db_url(self) -> str:
        assert self.pg is not None
        return f"postgresql+psycopg2://{self.pg.user}@{self.pg.host}:{self.pg.port}/{MLFLOW_DB}"

    def pg_conninfo(self, database: str) -> str:
        assert self.pg is not None
        return self.pg.conninfo(database)

    @property
    def ours_store_url(self) -> str:
        assert self.minio is not None
        return self.minio.bucket_url(OURS_BUCKET)

    # -- this service --------------------------------------------------------------------

    def start_ours(self) -> str:
        self.ours_port = free_port()
        argv = [
            str(MAIN_VENV_BIN / "modelregistry"), "serve",
            "--listen", f"127.0.0.1:{self.ours_port}",
            "--database-url", self.ours_db_url,
            "--object-store", self.ours_store_url,
        ]  # fmt: skip
        self.ours = Proc("modelregistry", argv, {**os.environ}, self.workdir)
        self.procs.append(self.ours)
        address = f"127.0.0.1:{self.ours_port}"
        wait_until("modelregistry", lambda: _grpc_serving(address), self.ours)
        log(f"modelregistry serving on {address} (pid {self.ours.pid})")
        return address

    # -- MLflow --------------------------------------------------------------------------

    def mlflow_env(self) -> dict[str, str]:
        assert self.minio is not None
        return {
            **os.environ,
            "MLFLOW_S3_ENDPOINT_URL": f"http://{self.minio.endpoint}",
            "AWS_ACCESS_KEY_ID": self.minio.access_key,
            "AWS_SECRET_ACCESS_KEY": self.minio.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_TRACKING_USERNAME": "",
            "HOME": str(self.workdir),
            "PYTHONUNBUFFERED": "1",
            # MLflow 3 starts huey job consumers (GenAI jobs, trace rollups) that poll
            # and take CPU from everything else on the machine; the model registry does
            # not use them.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }

    def start_mlflow(self) -> str:
        self.mlflow_port = free_port()
        argv = [
            str(BENCH_VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", self.mlflow_db_url,
            "--artifacts-destination", f"s3://{MLFLOW_BUCKET}",
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(self.mlflow_port),
            "--workers", str(self.mlflow_workers),
        ]  # fmt: skip
        self.mlflow = Proc("mlflow", argv, self.mlflow_env(), self.workdir)
        self.procs.append(self.mlflow)
        url = f"http://127.0.0.1:{self.mlflow_port}"
        wait_until("mlflow server", lambda: http_ok(url + "/health"), self.mlflow, timeout=300)
        log(f"mlflow serving on {url} (pid {self.mlflow.pid}, {self.mlflow_workers} workers)")
        return url

    # -- teardown ------------------------------------------------------------------------

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        self.procs.clear()
        if self.minio is not None:
            self.minio.stop()
        if self.pg is not None:
            self.pg.stop()


def _grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


@contextlib.contextmanager
def running_stack(workdir: Path, mlflow_workers: int) -> Iterator[Stack]:
    stack = Stack(workdir, mlflow_workers)
    try:
        yield stack
    finally:
        log("stopping every server")
        stack.stop()


def dump_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
