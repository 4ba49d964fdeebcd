"""Throwaway PostgreSQL and MinIO servers for the test suite.

Each server listens on a free loopback port and keeps its data in a fresh temporary
directory that is removed by ``stop()``. Servers are also stopped at interpreter exit
(atexit) and, where ``setpriv`` is available, receive a signal if the Python process that
started them dies without cleaning up (so a killed pytest does not leave them running).
Start servers from the main thread: that parent-death signal follows the starting thread.

Binaries:
- MinIO: ``${MODELREGISTRY_TOOLS:-$HOME/.cache/modelregistry}/bin/minio``, built by
  ``make tools``.
- PostgreSQL: ``/usr/lib/postgresql/*/bin`` (Debian's packages; ``make tools`` installs it),
  newest version first.

External services instead of throwaway ones (optional):
- ``MODELREGISTRY_TEST_POSTGRES_URL``: a superuser URL (``postgresql://`` or
  ``postgresql+psycopg://``) of an existing server; ``new_database()`` creates databases on it.
- ``MODELREGISTRY_TEST_S3_URL``: ``s3://ACCESS:SECRET@host:port/any?secure=false``;
  ``new_bucket()`` creates buckets on it.
External services cannot be stopped temporarily (``can_restart`` is False).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ExternalMinio",
    "ExternalPostgres",
    "MinioServer",
    "PostgresServer",
    "ServiceError",
    "find_minio",
    "find_postgres_bindir",
    "free_port",
    "install_sigterm_handler",
    "minio_from_env_or_start",
    "postgres_from_env_or_start",
    "tools_bin_dir",
]

POSTGRES_URL_ENV = "MODELREGISTRY_TEST_POSTGRES_URL"
S3_URL_ENV = "MODELREGISTRY_TEST_S3_URL"
STARTUP_TIMEOUT = 60.0


class ServiceError(RuntimeError):
    """A test service could not be found, started or used."""


# ---------------------------------------------------------------------------------------
# helpers


def tools_bin_dir() -> Path:
    """Where ``make tools`` puts pinned binaries (outside the repository)."""
    root = os.environ.get("MODELREGISTRY_TOOLS") or os.path.join(
        os.path.expanduser("~"), ".cache", "modelregistry"
    )
    return Path(root) / "bin"


def find_minio() -> str:
    exe = tools_bin_dir() / "minio"
    if not os.access(exe, os.X_OK):
        raise ServiceError(f"MinIO server binary not found at {exe}: run `make tools` to build it")
    return str(exe)


def find_postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def major(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return -1.0

    if not found:
        raise ServiceError(
            "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: run `make tools` "
            "(installs Debian's postgresql package)"
        )
    return Path(max(found, key=major)).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


_SETPRIV = shutil.which("setpriv")


def _with_parent_death_signal(argv: list[str], sig: str) -> list[str]:
    """Make the child get ``sig`` when the starting thread dies (util-linux setpriv)."""
    if _SETPRIV is None:
        return argv
    return [_SETPRIV, f"--pdeathsig={sig}", "--", *argv]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _register(server: _Stoppable) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server: _Stoppable) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _stop_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class _Spawnable(Protocol):
    port: int

    def _spawn(self) -> None: ...


def _spawn_retrying_port(server: _Spawnable, retry: bool, attempts: int = 3) -> None:
    """Spawn; if the port picked by free_port() got taken meanwhile, try another one."""
    for attempt in range(attempts):
        try:
            server._spawn()
            return
        except ServiceError as e:
            if not retry or attempt == attempts - 1 or "already in use" not in str(e):
                raise
            server.port = free_port()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into KeyboardInterrupt so pytest tears fixtures down (stops servers).

    Only when SIGTERM still has its default action and we are on the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills outright
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------
# PostgreSQL


def _new_db_name() -> str:
    return "t_" + uuid.uuid4().hex[:16]


def _create_database(admin_conninfo: str, name: str) -> None:
    import psycopg  # imported lazily: only the tests that need PostgreSQL pay for it

    with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name is generated, never user input


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 with trust auth for user ``postgres``.

    >>> pg = PostgresServer(); pg.start()
    >>> url = pg.new_database()   # postgresql+psycopg://postgres@127.0.0.1:PORT/t_...
    >>> with pg.down(): ...       # unreachable inside the block, back afterwards
    >>> pg.stop()
    """

    can_restart = True
    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, bindir: Path | None = None, port: int | None = None) -> None:
        self.bindir = bindir or find_postgres_bindir()
        self._auto_port = port is None
        self.port = port or free_port()
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.RLock()
        # As root, initdb/postgres run as Debian's `postgres` system user.
        self._run_as: str | None = "postgres" if os.geteuid() == 0 else None

    # -- public API -----------------------------------------------------------------

    @property
    def url_prefix(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"{self.url_prefix}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq/psycopg connection string of a database on this server."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def new_database(self) -> str:
        """Create a fresh empty database and return its SQLAlchemy URL."""
        name = _new_db_name()
        _create_database(self.conninfo(), name)
        return self.url(name)

    def start(self) -> PostgresServer:
        """Start the server (initialising the data directory the first time) and wait for it.

        After ``stop_temporarily()`` this starts it again on the same port with the same data.
        """
        with self._lock:
            if self.running:
                return self
            first = self.tmpdir is None
            if first:
                self._initdb()
                _register(self)
            try:
                _spawn_retrying_port(self, retry=first and self._auto_port)
            except BaseException:
                if first:
                    self.stop()
                raise
            return self

    def stop_temporarily(self) -> None:
        """Fast shutdown, keeping the data directory and port for a later ``start()``."""
        with self._lock:
            self._shutdown()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is unreachable inside the block and running again after it."""
        self.stop_temporarily()
        try:
            yield
        finally:
            self.start()

    def stop(self) -> None:
        """Fast shutdown and remove the data directory. Safe to call twice."""
        with self._lock:
            self._shutdown()
            _unregister(self)
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} running={self.running}>"

    # -- internals ------------------------------------------------------------------

    @property
    def _datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    @property
    def _logfile(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "postgres.log"

    def _popen_user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": self._run_as, "extra_groups": []}

    def _initdb(self) -> None:
        # As root the `postgres` user must be able to reach the directory: use /tmp, whose
        # parents are world-traversable, rather than a TMPDIR that might be under /root.
        parent = "/tmp" if self._run_as else None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="modelregistry-pg-", dir=parent))
        if self._run_as is not None:
            shutil.chown(self.tmpdir, user=self._run_as, group=self._run_as)
        cmd = [
            str(self.bindir / "initdb"),
            "-D", str(self._datadir),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        res = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.tmpdir,
            check=False,
            **self._popen_user_kwargs(),
        )
        if res.returncode != 0:
            out = res.stdout.decode(errors="replace")
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
            raise ServiceError(f"initdb failed ({res.returncode}):\n{out}")

    def _spawn(self) -> None:
        assert self.tmpdir is not None
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.tmpdir),
            "max_connections": "200",
            "shared_buffers": "32MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self._datadir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._log = open(self._logfile, "ab")  # noqa: SIM115 - kept open while running
        self._proc = subprocess.Popen(
            _with_parent_death_signal(argv, "INT"),  # SIGINT = fast shutdown
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.tmpdir,
            start_new_session=True,  # Ctrl-C goes to pytest, which stops us in order
            **self._popen_user_kwargs(),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close_log()
                self._proc = None
                raise ServiceError(
                    f"postgres exited with {code} while starting on port {self.port}:\n"
                    + _tail(self._logfile)
                )
            if self._accepts_connections():
                return
            if time.monotonic() > deadline:
                self._shutdown()
                raise ServiceError(
                    f"postgres did not accept connections on port {self.port} within "
                    f"{STARTUP_TIMEOUT:.0f}s:\n" + _tail(self._logfile)
                )
            time.sleep(0.1)

    def _accepts_connections(self) -> bool:
        if not _port_is_open(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.conninfo(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False  # e.g. "the database system is starting up"

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, no wait
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)  # immediate shutdown
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ExternalPostgres:
    """An existing PostgreSQL server given by URL; creates databases, never stops it."""

    can_restart = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgres"):
            raise ServiceError(f"{POSTGRES_URL_ENV} must be a postgresql:// URL, got {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password) if parts.password else None
        self.admin_database = parts.path.lstrip("/") or "postgres"

    @property
    def url_prefix(self) -> str:
        cred = quote(self.user, safe="")
        if self.password is not None:
            cred += ":" + quote(self.password, safe="")
        return f"postgresql+psycopg://{cred}@{self.host}:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"{self.url_prefix}/{database}"

    def conninfo(self, database: str | None = None) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.admin_database,
        )

    def new_database(self) -> str:
        name = _new_db_name()
        _create_database(self.conninfo(), name)
        return self.url(name)

    def start(self) -> ExternalPostgres:
        return self

    def stop_temporarily(self) -> None:
        raise ServiceError(f"cannot stop an external PostgreSQL ({POSTGRES_URL_ENV} is set)")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop_temporarily()
        yield

    def stop(self) -> None:
        pass


def postgres_from_env_or_start() -> PostgresServer | ExternalPostgres:
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return ExternalPostgres(url)
    return PostgresServer().start()


# ---------------------------------------------------------------------------------------
# MinIO


def _new_bucket_name() -> str:
    return "t-" + uuid.uuid4().hex[:16]


class _MinioBuckets:
    host: str
    port: int
    access_key: str
    secret_key: str
    secure: bool

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 API."""
        return f"{self.host}:{self.port}"

    def client(self) -> Any:
        """A ``minio.Minio`` client for this server."""
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
        )

    def bucket_url(self, bucket: str) -> str:
        """Object store URL for a bucket: ``s3://ACCESS:SECRET@host:port/bucket?secure=false``."""
        cred = f"{quote(self.access_key, safe='')}:{quote(self.secret_key, safe='')}"
        secure = "true" if self.secure else "false"
        return f"s3://{cred}@{self.endpoint}/{bucket}?secure={secure}"

    def new_bucket(self) -> str:
        """Create a fresh empty bucket and return its object store URL."""
        name = _new_bucket_name()
        self.client().make_bucket(name)
        return self.bucket_url(name)


class MinioServer(_MinioBuckets):
    """A throwaway single-drive MinIO server on 127.0.0.1.

    >>> m = MinioServer(); m.start()
    >>> url = m.new_bucket()    # s3://ACCESS:SECRET@127.0.0.1:PORT/t-...?secure=false
    >>> m.stop()
    """

    can_restart = True
    host = "127.0.0.1"
    secure = False

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or find_minio()
        self._auto_port = port is None
        self.port = port or free_port()
        self.console_port = free_port()
        self.access_key = "modelregistry"
        self.secret_key = uuid.uuid4().hex  # URL-safe, >= 8 characters
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.RLock()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MinioServer:
        with self._lock:
            if self.running:
                return self
            first = self.tmpdir is None
            if first:
                self.tmpdir = Path(tempfile.mkdtemp(prefix="modelregistry-minio-"))
                (self.tmpdir / "data").mkdir()
                _register(self)
            try:
                _spawn_retrying_port(self, retry=first and self._auto_port)
            except BaseException:
                if first:
                    self.stop()
                raise
            return self

    def stop_temporarily(self) -> None:
        """Stop the server, keeping its data and port for a later ``start()``."""
        with self._lock:
            self._shutdown()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop_temporarily()
        try:
            yield
        finally:
            self.start()

    def stop(self) -> None:
        """Stop the server and remove its data. Safe to call twice."""
        with self._lock:
            self._shutdown()
            _unregister(self)
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def __enter__(self) -> MinioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MinioServer {self.endpoint} running={self.running}>"

    def _spawn(self) -> None:
        assert self.tmpdir is not None
        logfile = self.tmpdir / "minio.log"
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CI_CD": "1",  # allow a data dir on the root disk, no interactive checks
            "HOME": str(self.tmpdir),  # keeps ~/.minio out of the real home
        }
        argv = [
            self.binary, "server", str(self.tmpdir / "data"),
            "--address", f"{self.host}:{self.port}",
            "--console-address", f"{self.host}:{self.console_port}",
            "--quiet",
        ]  # fmt: skip
        self._log = open(logfile, "ab")  # noqa: SIM115 - kept open while running
        self._proc = subprocess.Popen(
            _with_parent_death_signal(argv, "TERM"),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.tmpdir,
            env=env,
            start_new_session=True,
        )
        live = f"http://{self.endpoint}/minio/health/live"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._close_log()
                raise ServiceError(
                    f"minio exited with {code} while starting on {self.endpoint}:\n"
                    + _tail(logfile)
                )
            try:
                with urllib.request.urlopen(live, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self._shutdown()
                raise ServiceError(
                    f"minio did not become live on {self.endpoint} within "
                    f"{STARTUP_TIMEOUT:.0f}s:\n" + _tail(logfile)
                )
            time.sleep(0.1)

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ExternalMinio(_MinioBuckets):
    """An existing S3/MinIO endpoint given by URL; creates buckets, never stops it."""

    can_restart = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.username or not parts.password or not parts.hostname:
            raise ServiceError(
                f"{S3_URL_ENV} must look like s3://ACCESS:SECRET@host:port/bucket?secure=false"
            )
        self.access_key = unquote(parts.username)
        self.secret_key = unquote(parts.password)
        self.host = parts.hostname
        self.port = parts.port or (443 if "secure=true" in parts.query else 80)
        self.secure = bool(re.search(r"(^|&)secure=(true|1)($|&)", parts.query))

    def start(self) -> ExternalMinio:
        return self

    def stop_temporarily(self) -> None:
        raise ServiceError(f"cannot stop an external S3 endpoint ({S3_URL_ENV} is set)")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop_temporarily()
        yield

    def stop(self) -> None:
        pass


def minio_from_env_or_start() -> MinioServer | ExternalMinio:
    url = os.environ.get(S3_URL_ENV)
    if url:
        return ExternalMinio(url)
    return MinioServer().start()
