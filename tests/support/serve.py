"""`modelregistry serve` as a real subprocess, for tests of the command line and of tools
that talk to it from outside (grpcurl, grpc_health_probe, Prometheus scrapes, Go/Kotlin
clients).

>>> with ServeProcess(tmp_path, ["--migrate"]) as srv:
...     srv.address   # 127.0.0.1:<free port>
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from support.services import free_port


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `modelregistry ARGS` in `cwd`; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"modelregistry {' '.join(args)}: {done.stderr}"
    return done.stdout


class ServeProcess:
    """`modelregistry serve --listen HOST:PORT EXTRA...` in `cwd`; stderr goes to a log file.

    `wait_ready` waits for the server's "serving on" log line (logged once the gRPC server
    has started, after /metrics when that is on)."""

    def __init__(
        self,
        cwd: Path,
        extra: list[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.cwd = cwd
        self.host = host
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.env = {**os.environ, **(env or {})}
        self.log_path = cwd / f"serve-{self.port}.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._wait_ready = wait_ready

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ServeProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--listen", self.address, *self.extra],
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if self._wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if '"msg": "serving on ' in self.log():
                return
            time.sleep(0.1)
        raise AssertionError(f"server not listening on {self.address}:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
