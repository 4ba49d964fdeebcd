"""A throwaway Toxiproxy server on loopback and a small client for its HTTP API.

Tests put a proxy between the modelregistry server and PostgreSQL / MinIO, then add
latency, cut connections (disable a proxy: open connections close, new ones are refused)
or reset them (`reset_peer`), and clear the fault again.

Binary: ``${MODELREGISTRY_TOOLS:-$HOME/.cache/modelregistry}/bin/toxiproxy-server``, built
by ``make tools`` (.ci/tools.sh, pinned).

>>> tp = ToxiproxyServer().start()
>>> pg = tp.proxy("pg", upstream=f"127.0.0.1:{pg_port}")   # pg.listen -> 127.0.0.1:PORT
>>> with pg.down(): ...           # connections cut and refused inside the block
>>> pg.add_toxic("latency", latency=200); pg.clear_toxics()
>>> tp.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from support.services import (
    ServiceError,
    _register,
    _unregister,
    _with_parent_death_signal,
    free_port,
    tools_bin_dir,
)


def find_toxiproxy() -> str:
    exe = tools_bin_dir() / "toxiproxy-server"
    if not os.access(exe, os.X_OK):
        raise ServiceError(f"toxiproxy-server not found at {exe}: run `make tools` to build it")
    return str(exe)


class Proxy:
    def __init__(self, server: ToxiproxyServer, name: str, listen: str, upstream: str) -> None:
        self.server = server
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self._toxics = 0

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def enable(self, enabled: bool = True) -> None:
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def disable(self) -> None:
        self.enable(False)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.disable()
        try:
            yield
        finally:
            self.enable()

    def add_toxic(
        self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0, **attributes: Any
    ) -> str:
        """Add a toxic (latency, bandwidth, timeout, reset_peer, slicer, limit_data, ...)."""
        self._toxics += 1
        name = f"{kind}_{stream}_{self._toxics}"
        self.server.api(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return name

    def remove_toxic(self, name: str) -> None:
        self.server.api("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def clear_toxics(self) -> None:
        for toxic in self.server.api("GET", f"/proxies/{self.name}/toxics") or []:
            self.remove_toxic(toxic["name"])

    @contextlib.contextmanager
    def toxic(self, kind: str, **kw: Any) -> Iterator[str]:
        name = self.add_toxic(kind, **kw)
        try:
            yield name
        finally:
            self.remove_toxic(name)


class ToxiproxyServer:
    host = "127.0.0.1"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_toxiproxy()
        self.port = free_port()
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ToxiproxyServer:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="modelregistry-toxiproxy-"))
        self._log = open(self.tmpdir / "toxiproxy.log", "ab")  # noqa: SIM115
        argv = [self.binary, "-host", self.host, "-port", str(self.port)]
        self._proc = subprocess.Popen(
            _with_parent_death_signal(argv, "TERM"),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _register(self)
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                raise ServiceError(f"toxiproxy-server exited with {self._proc.returncode}")
            try:
                self.api("GET", "/version")
                return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError("toxiproxy-server did not answer within 30 s") from None
                time.sleep(0.1)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def proxy(self, name: str, upstream: str) -> Proxy:
        listen = f"{self.host}:{free_port()}"
        self.api(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )
        return Proxy(self, name, listen, upstream)

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self.api("POST", "/reset")

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        _unregister(self)
        if self.tmpdir is not None:
            import shutil

            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
