"""Runs the pipeline in a separate, resource-limited process.

The parent (a job worker) starts a sandbox ahead of time so its imports are done when a job
arrives, sends it one request as a JSON line on stdin, and reads JSON lines back: `ready`,
then `progress` events (and an `output` message as soon as a target's files are written,
before they are verified), then one `result` or `error`. One job per process: a model that
corrupts or exhausts the process cannot affect the next job, and a crash ends only it.

Limits applied by the child to itself before it touches any input: address space
(RLIMIT_AS), CPU time (RLIMIT_CPU; SIGXCPU, then SIGKILL 5 s later), size of any file it
writes (RLIMIT_FSIZE), no core dumps, and death with its parent (PR_SET_PDEATHSIG). The
parent enforces the wall-clock limit by killing it.

    box = Sandbox.start(SandboxLimits(memory_mb=2048))
    box.submit(request)
    while (messages := box.read(0.5)) is not None: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

MiB = 1024 * 1024
_LIMITS_ENV = "MODELREGISTRY_SANDBOX_LIMITS"


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 4096
    cpu_seconds: int = 600
    wall_seconds: float = 900.0
    threads: int = 1
    # Largest file the conversion may write (outputs, temporaries).
    max_output_mb: int = 8192

    @property
    def max_tensor_bytes(self) -> int:
        """Budget for a source's declared tensors: a conversion holds the source, a copy
        and an output plus onnxruntime's working memory, so a quarter of the limit."""
        return self.memory_mb * MiB // 4


@dataclass(frozen=True)
class Request:
    source: str
    work_dir: str
    targets: list[str]
    tolerance: float = 0.0
    calibration: tuple[str, ...] = ()
    fp16_keep_io_types_fp16: bool = False
    stem: str = ""


@dataclass(frozen=True)
class Death:
    """Why a sandbox ended without a result, and whether retrying could help."""

    reason: str
    retryable: bool


# --------------------------------------------------------------------------------------
# parent side


class Sandbox:
    def __init__(self, proc: subprocess.Popen[bytes], limits: SandboxLimits, log: Path) -> None:
        self.proc = proc
        self.limits = limits
        self.log = log
        self._buffer = b""
        self._eof = False
        self.ready = False
        self.started = time.monotonic()

    @classmethod
    def start(cls, limits: SandboxLimits, log_dir: Path | None = None) -> Sandbox:
        log_dir = log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, log_name = tempfile.mkstemp(prefix="sandbox-", suffix=".log", dir=log_dir)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            _LIMITS_ENV: json.dumps(asdict(limits)),
            "PYTHONPATH": os.pathsep.join(
                p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
            ),
            "OMP_NUM_THREADS": str(limits.threads),
            "OPENBLAS_NUM_THREADS": str(limits.threads),
            "MALLOC_ARENA_MAX": "2",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conversion.sandbox"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fd,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(fd)
        return cls(proc, limits, Path(log_name))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, request: Request) -> None:
        assert self.proc.stdin is not None
        # A child that died while starting shows up as EOF on read() and in death().
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(json.dumps(asdict(request)).encode() + b"\n")
            self.proc.stdin.flush()

    def read(self, timeout: float) -> list[dict[str, Any]] | None:
        """Messages that arrived within `timeout` seconds; None once the child closed its
        end (it finished or died)."""
        if self._eof:
            return None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            if not sel.select(timeout):
                return []
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            self._eof = True
            lines, self._buffer = self._buffer.split(b"\n"), b""
        else:
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("type") == "ready":
                self.ready = True
            else:
                out.append(msg)
        return out

    def wait(self, timeout: float = 10.0) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.log.unlink(missing_ok=True)

    def death(self) -> Death:
        """Describe how the child ended (call after it exited without a result)."""
        code = self.wait(5.0)
        tail = self.stderr_tail()
        mem = self.limits.memory_mb
        if code is None:
            return Death("the worker process stopped responding", True)
        if code < 0:
            sig = -code
            name = _signal_name(sig)
            if sig == signal.SIGXCPU:
                return Death(
                    f"the conversion exceeded the CPU-time limit of {self.limits.cpu_seconds} s",
                    False,
                )
            if sig == signal.SIGXFSZ:
                return Death(
                    "the conversion tried to write a file larger than the limit of "
                    f"{self.limits.max_output_mb} MiB",
                    False,
                )
            hint = ""
            if _looks_like_oom(tail):
                hint = f" (out of memory: the limit is {mem} MiB)"
            return Death(f"the worker process was killed by {name}{hint}", True)
        detail = f": {tail.splitlines()[-1]}" if tail.strip() else ""
        if _looks_like_oom(tail):
            return Death(f"the conversion ran out of memory (limit {mem} MiB){detail}", False)
        return Death(f"the worker process exited with status {code}{detail}", True)

    def stderr_tail(self, limit: int = 4000) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _looks_like_oom(text: str) -> bool:
    lowered = text.lower()
    return any(
        s in lowered
        for s in (
            "memoryerror",
            "bad_alloc",
            "bad allocation",
            "failed to allocate",
            "memory allocation",
            "failed to map segment",
            "cannot allocate memory",
            "can't start new thread",
        )
    )


# --------------------------------------------------------------------------------------
# child side


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent already died
        os._exit(1)


def _apply_limits(limits: SandboxLimits) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    mem = limits.memory_mb * MiB
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = max(1, int(limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    fsize = limits.max_output_mb * MiB
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


class _Emitter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def child_main() -> int:
    limits = SandboxLimits(**json.loads(os.environ[_LIMITS_ENV]))
    _die_with_parent()
    _apply_limits(limits)
    # Keep the protocol on the original stdout; anything libraries print goes to stderr.
    emit = _Emitter(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    from conversion import pipeline
    from conversion.errors import ConversionError
    from conversion.spec import Spec

    emit({"type": "ready", "pid": os.getpid()})
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    req = Request(**json.loads(line))
    work = Path(req.work_dir)
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(tmp)
    os.environ["TMPDIR"] = str(tmp)
    spec = Spec(
        targets=tuple(req.targets),
        tolerance=req.tolerance,
        calibration=tuple(Path(p) for p in req.calibration),
        fp16_keep_io_types_fp16=req.fp16_keep_io_types_fp16,
    )
    run_limits = pipeline.Limits(threads=limits.threads, max_tensor_bytes=limits.max_tensor_bytes)

    def progress(stage: str, fraction: float, message: str) -> None:
        emit({"type": "progress", "stage": stage, "fraction": fraction, "message": message})

    def output(target: str, files: list[Any]) -> None:
        emit(
            {
                "type": "output",
                "target": target,
                "files": [
                    {"path": str(f.path), "kind": f.kind, "required": f.required} for f in files
                ],
            }
        )

    try:
        result = pipeline.run(
            Path(req.source),
            work / "out",
            spec,
            progress,
            run_limits,
            stem=req.stem or None,
            on_output=output,
        )
    except ConversionError as exc:
        message = exc.message
        if _looks_like_oom(message):
            message = f"the conversion ran out of memory (limit {limits.memory_mb} MiB): {message}"
        emit({"type": "error", "message": message})
        return 0
    except MemoryError:
        emit(
            {
                "type": "error",
                "message": f"the conversion ran out of memory (limit {limits.memory_mb} MiB)",
            }
        )
        return 0
    except Exception as exc:
        message = pipeline.short_error(exc)
        if _looks_like_oom(message):
            message = f"the conversion ran out of memory (limit {limits.memory_mb} MiB): {message}"
        else:
            message = f"the conversion failed: {message}"
        emit({"type": "error", "message": message})
        return 0
    emit(
        {
            "type": "result",
            "source": asdict(result.source),
            "targets": [
                {
                    "target": t.target,
                    "ok": t.ok,
                    "error": t.error,
                    "method": t.method,
                    "files": [
                        {"path": str(f.path), "kind": f.kind, "required": f.required}
                        for f in t.files
                    ],
                    "metrics": t.metrics.as_dict() if t.metrics else None,
                }
                for t in result.targets
            ],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
