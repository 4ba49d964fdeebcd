"""Conversion workers: claim queued jobs, run each in a resource-limited sandbox process,
turn its progress into job events, store and record verified outputs.

A worker is a thread supervising one sandbox process at a time; the conversion itself never
runs in the worker's (or the server's) process. Several workers, in one process or in many
(`modelregistry serve` runs a small pool, `modelregistry worker` runs them standalone), can
share one database: a job is claimed by exactly one of them (`FOR UPDATE SKIP LOCKED` plus
a conditional UPDATE), and the claimant proves it is alive with heartbeats. Any worker
reaps a running job whose heartbeats stopped: it goes back to the queue until it has used
`max_attempts`, then fails with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conversion.sandbox import Request, Sandbox, SandboxLimits
from conversion.spec import TARGETS
from domain import artifacts, names
from domain.errors import DomainError
from storage.db import transaction
from storage.objectstore import LocalObjectStore, ObjectNotFound, ObjectStore
from storage.orm import ConversionJob, utcnow
from storage.repos import conversions as repo

log = logging.getLogger("modelregistry.conversion")

# Share of the job's progress before, during and after the sandboxed pipeline.
FETCH_END = 0.03
PIPELINE_END = 0.92


@dataclass(frozen=True)
class WorkerConfig:
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    # Idle wait between looks at the queue (an in-process notify() wakes workers sooner).
    poll_interval: float = 1.0
    # How often a running job's worker proves it is alive and looks for a cancellation.
    heartbeat_interval: float = 1.0
    # A running job without a heartbeat for this long is handed to another worker.
    stale_after: float = 30.0
    reap_interval: float = 5.0
    # Progress events of one stage are written at most this often (stage changes at once).
    event_interval: float = 0.25
    # A quiet sandbox (one long library call) gets a "still working" event this often.
    tick_interval: float = 1.0
    # Where sources and outputs are staged; the system temp dir when None.
    work_root: Path | None = None
    # Keep a sandbox process started (imports done) for the next job.
    warm_sandbox: bool = True


def default_worker_id(index: int = 0) -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:w{index}"


@dataclass(frozen=True)
class _Task:
    """What a worker needs of a claimed job (copied out of the claiming transaction)."""

    id: str
    org_id: str
    model_id: str
    version: str
    targets: tuple[str, ...]
    options: dict[str, Any]
    source_resource_id: str | None
    attempt: int
    max_attempts: int

    @property
    def name(self) -> str:
        return names.conversion_job_name(self.id)


class _Lost(Exception):
    """The job is no longer this worker's (reaped after a stall, or finished elsewhere)."""


class _Transient(Exception):
    """A failure that another attempt may not hit (backend hiccup, worker death)."""


class _Heartbeat:
    """Background heartbeats for one running job; notes cancellation and loss of the job."""

    def __init__(self, worker: ConversionWorker, job_id: str) -> None:
        self.worker = worker
        self.job_id = job_id
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = self.worker.config.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                with transaction(self.worker.sessions) as s:
                    status = repo.heartbeat(s, self.job_id, self.worker.worker_id, utcnow())
            except Exception:
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
                continue
            if status is None:
                self.lost.set()
                return
            if status:
                self.cancelled.set()


class ConversionWorker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        config: WorkerConfig | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.config = config or WorkerConfig()
        self.worker_id = worker_id or default_worker_id()
        self.work_root = self.config.work_root or Path(tempfile.gettempdir()) / "modelregistry-conv"
        self._spare: Sandbox | None = None
        self._current: Sandbox | None = None
        self._last_reap = 0.0
        self.stopping = threading.Event()

    # --- loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Work until `stop` is set; then kill any sandbox and requeue a running job."""
        self.stopping = stop
        wake = wake or threading.Event()
        try:
            while not stop.is_set():
                worked = False
                try:
                    self.reap_if_due()
                    worked = self.run_once()
                except Exception:
                    log.exception("conversion worker %s: unexpected error", self.worker_id)
                if not worked and not stop.is_set():
                    wake.wait(self.config.poll_interval)
                    wake.clear()
        finally:
            for box in (self._spare, self._current):
                if box is not None:
                    box.kill()
            self._spare = None

    def reap_if_due(self) -> int:
        now = time.monotonic()
        if now - self._last_reap < self.config.reap_interval:
            return 0
        self._last_reap = now
        return reap(self.sessions, self.store, self.config.stale_after)

    def run_once(self) -> bool:
        """Claim and run one job; False when the queue was empty."""
        if not _has_queued(self.sessions):
            return False
        box = self._take_sandbox()
        try:
            task = self._claim(box.pid)
        except BaseException:
            self._spare = box
            raise
        if task is None:
            self._spare = box
            return False
        self._current = box
        try:
            self._run(task, box)
        finally:
            self._current = None
            box.kill()
            if self.config.warm_sandbox and not self.stopping.is_set():
                self._spare = self._start_sandbox()
        return True

    # --- one job ----------------------------------------------------------------------------

    def _claim(self, sandbox_pid: int) -> _Task | None:
        with transaction(self.sessions) as s:
            job = repo.next_queued(s)
            if job is None or not repo.claim(s, job.id, self.worker_id, utcnow()):
                return None
            job = repo.lock(s, job.id)
            assert job is not None
            repo.append_event(
                s,
                job.id,
                "running",
                0.0,
                f"attempt {job.attempts}/{job.max_attempts} on worker {self.worker_id} "
                f"(sandbox pid {sandbox_pid})",
            )
            task = _Task(
                id=job.id,
                org_id=job.org_id,
                model_id=job.model_id,
                version=job.version,
                targets=tuple(job.targets),
                options=dict(job.options),
                source_resource_id=job.source_resource_id,
                attempt=job.attempts,
                max_attempts=job.max_attempts,
            )
        log.info("worker %s claimed job %s (attempt %d)", self.worker_id, task.id, task.attempt)
        return task

    def _run(self, task: _Task, box: Sandbox) -> None:
        work = self.work_root / f"{task.id}-{task.attempt}"
        outputs = _Uploader(self.store, task)
        try:
            with _Heartbeat(self, task.id) as hb:
                try:
                    self._convert(task, box, work, hb, outputs)
                except _Lost:
                    log.warning("worker %s lost job %s to another worker", self.worker_id, task.id)
                except _Transient as exc:
                    _stop(box, outputs)
                    self._retry_or_fail(task, str(exc))
                except _Cancelled:
                    _stop(box, outputs)
                    self._finish(task, "cancelled", "cancelled by request")
                except _Shutdown:
                    _stop(box, outputs)
                    self._requeue_for_shutdown(task)
                except _Failed as exc:
                    _stop(box, outputs)
                    self._finish(task, "failed", exc.message)
        finally:
            box.kill()
            outputs.close()  # waits for uploads; removes whatever was not recorded
            shutil.rmtree(work, ignore_errors=True)

    def _convert(
        self, task: _Task, box: Sandbox, work: Path, hb: _Heartbeat, outputs: _Uploader
    ) -> None:
        events = _EventWriter(self, task)
        events.emit("fetch", 0.0, "fetching the source from object storage", force=True)
        source, calibration = self._fetch(task, work)
        events.emit(
            "fetch",
            FETCH_END,
            f"fetched {source.name} ({source.stat().st_size} bytes)",
            force=True,
        )
        box.submit(
            Request(
                source=str(source),
                work_dir=str(work),
                targets=list(task.targets),
                tolerance=float(task.options.get("tolerance", 0.0)),
                calibration=tuple(str(p) for p in calibration),
                fp16_keep_io_types_fp16=bool(task.options.get("fp16_keep_io_types_fp16")),
            )
        )
        deadline = time.monotonic() + self.config.limits.wall_seconds
        result: dict[str, Any] | None = None
        error: str | None = None
        while True:
            self._check(hb)
            messages = box.read(0.2)
            if messages is None:
                break
            for msg in messages:
                kind = msg.get("type")
                if kind == "progress":
                    fraction = FETCH_END + float(msg["fraction"]) * (PIPELINE_END - FETCH_END)
                    events.emit(str(msg["stage"]), fraction, str(msg["message"]))
                elif kind == "output":
                    # Written and final: store it while the sandbox verifies it.
                    outputs.start(str(msg["target"]), list(msg.get("files", [])))
                elif kind == "result":
                    result = msg
                elif kind == "error":
                    error = str(msg.get("message", "the conversion failed"))
            events.flush_due()
            if time.monotonic() > deadline:
                box.kill()
                events.flush()
                raise _Failed(
                    f"the conversion exceeded the wall-clock limit of "
                    f"{self.config.limits.wall_seconds:g} s"
                )
        events.flush()
        if error is not None:
            raise _Failed(error)
        if result is None:
            death = box.death()
            if death.retryable:
                raise _Transient(death.reason)
            raise _Failed(death.reason)
        self._check(hb)
        self._store_and_record(task, result, events, hb, outputs)

    def _check(self, hb: _Heartbeat) -> None:
        if hb.lost.is_set():
            raise _Lost()
        if hb.cancelled.is_set():
            raise _Cancelled()
        if self.stopping.is_set():
            raise _Shutdown()

    def _fetch(self, task: _Task, work: Path) -> tuple[Path, list[Path]]:
        """Download the source, the other files of its package (external data lives next
        to the model) and the calibration inputs."""
        if task.source_resource_id is None:
            raise _Failed("the source resource was deleted before the conversion ran")
        with transaction(self.sessions, readonly=True) as s:
            found = repo.resource_with_parents(s, task.source_resource_id)
            if found is None:
                raise _Failed("the source resource was deleted before the conversion ran")
            resource = found[0]
            siblings = [
                (r.id, r.file_name, r.storage_key)
                for r in repo.package_resources(s, resource.package_id)
            ]
            source_id = resource.id
        src_dir = work / "source"
        src_dir.mkdir(parents=True, exist_ok=True)
        source: Path | None = None
        for rid, file_name, key in siblings:
            if key is None:
                continue
            safe = Path(file_name).name
            if not safe or safe in (".", ".."):
                continue
            path = src_dir / safe
            try:
                self._download(key, path)
            except ObjectNotFound:
                if rid == source_id:
                    raise _Failed("the source's bytes are missing from object storage") from None
                continue
            if rid == source_id:
                source = path
        if source is None:
            raise _Failed("the source resource has no stored bytes")
        calibration = []
        for i, key in enumerate(task.options.get("calibration_keys", [])):
            path = work / "calibration" / f"calibration-{i:02d}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._download(str(key), path)
            except ObjectNotFound:
                raise _Failed(f"calibration input #{i} is missing from object storage") from None
            calibration.append(path)
        return source, calibration

    def _download(self, key: str, path: Path) -> None:
        if isinstance(self.store, LocalObjectStore):
            # Same machine: let the kernel copy (copy_file_range) instead of Python chunks.
            try:
                shutil.copyfile(self.store.path_for(key), path)
            except FileNotFoundError:
                raise ObjectNotFound(key) from None
            return
        try:
            with path.open("wb") as f:
                for chunk in self.store.get(key):
                    f.write(chunk)
        except ObjectNotFound:
            raise
        except Exception as exc:
            raise _Transient(f"could not read {key} from object storage: {exc}") from None

    def _store_and_record(
        self,
        task: _Task,
        result: dict[str, Any],
        events: _EventWriter,
        hb: _Heartbeat,
        outputs: _Uploader,
    ) -> None:
        outcomes: list[dict[str, Any]] = list(result.get("targets", []))
        good = [o for o in outcomes if o.get("ok")]
        packages: list[tuple[str, artifacts.NewPackage]] = []
        for i, outcome in enumerate(good):
            target = str(outcome["target"])
            fraction = PIPELINE_END + (1 - PIPELINE_END) * i / max(1, len(good))
            events.emit(f"store:{target}", fraction, f"storing {target}", force=True)
            if not outputs.started(target):
                outputs.start(target, list(outcome.get("files", [])))
            try:
                files = outputs.wait(target)
            except Exception as exc:
                raise _Transient(f"could not store {target}: {exc}") from None
            self._check(hb)
            info = TARGETS[target]
            packages.append(
                (
                    target,
                    artifacts.NewPackage(
                        fields=artifacts.PackageFields(
                            info.format, info.quantization, info.runtime
                        ),
                        files=files,
                        source="conversion",
                        metrics=_package_metrics(task, outcome),
                    ),
                )
            )
        events.flush()
        outputs.close(keep={t for t, _ in packages})  # outputs that failed verification go
        self._record(task, outcomes, packages, outputs)

    def _record(
        self,
        task: _Task,
        outcomes: list[dict[str, Any]],
        packages: list[tuple[str, artifacts.NewPackage]],
        outputs: _Uploader,
    ) -> None:
        """One transaction: the packages, the job's results and its final event."""
        with transaction(self.sessions) as s:
            job = self._owned(s, task)
            if job.cancel_requested:
                raise _Cancelled()
            package_ids: dict[str, str] = {}
            record_error = ""
            if packages:
                try:
                    with s.begin_nested():
                        recorded = artifacts.record_packages(
                            s,
                            task.org_id,
                            artifacts.Target(task.model_id, task.version),
                            [p for _, p in packages],
                            expect=artifacts.TargetState(
                                task.options.get("model_uid"), task.options.get("version_uid")
                            ),
                        )
                    package_ids = {
                        t: row.id for (t, _), row in zip(packages, recorded.packages, strict=True)
                    }
                except DomainError as exc:
                    record_error = f"the outputs could not be recorded: {exc.message}"
                    outputs.close()  # nothing refers to them: remove before the final event
            results: list[dict[str, Any]] = []
            for o in outcomes:
                target = str(o["target"])
                ok = bool(o.get("ok")) and target in package_ids
                metrics = o.get("metrics") or {}
                error = str(o.get("error", "")) if not o.get("ok") else record_error
                results.append(
                    {
                        "target": target,
                        "succeeded": ok,
                        "error": "" if ok else error,
                        "package_id": package_ids.get(target),
                        "size_bytes": int(metrics.get("size_bytes", 0)),
                        "max_abs_error": _finite(metrics.get("max_abs_error")),
                        "mean_cosine_similarity": _finite(metrics.get("mean_cosine_similarity")),
                        "median_latency_ms": _finite(metrics.get("median_latency_ms")),
                    }
                )
            failed = [r for r in results if not r["succeeded"]]
            job.result = {"targets": results}
            job.updated_at = utcnow()
            if record_error:
                job.state, job.error = "failed", record_error
                repo.append_event(s, job.id, "failed", PIPELINE_END, record_error)
            elif failed:
                job.state = "failed"
                job.error = f"{len(failed)} of {len(results)} targets failed: " + "; ".join(
                    f"{r['target']}: {r['error']}" for r in failed
                )
                repo.append_event(s, job.id, "failed", 1.0, job.error)
            else:
                job.state, job.error = "succeeded", None
                repo.append_event(
                    s,
                    job.id,
                    "done",
                    1.0,
                    f"produced and verified {', '.join(r['target'] for r in results)}",
                )
            keys = list(job.options.get("calibration_keys", []))
        if not record_error:
            outputs.keep(t for t, _ in packages)
        _delete_quietly(self.store, keys)
        log.info("job %s %s", task.id, job.state)

    # --- state changes ------------------------------------------------------------------------

    def _owned(self, s: Session, task: _Task) -> ConversionJob:
        job = repo.lock(s, task.id)
        if job is None or job.state != "running" or job.worker_id != self.worker_id:
            raise _Lost()
        return job

    def _finish(self, task: _Task, state: str, error: str) -> None:
        try:
            with transaction(self.sessions) as s:
                job = self._owned(s, task)
                if state == "failed" and job.cancel_requested:
                    state, error = "cancelled", "cancelled by request"
                job.state = state
                job.error = error
                job.updated_at = utcnow()
                job.result = {
                    "targets": [
                        {"target": t, "succeeded": False, "error": error} for t in task.targets
                    ]
                }
                stage = "cancelled" if state == "cancelled" else "failed"
                repo.append_event(s, job.id, stage, repo.last_fraction(s, job.id), error)
                keys = list(job.options.get("calibration_keys", []))
        except _Lost:
            return
        _delete_quietly(self.store, keys)
        log.info("job %s %s: %s", task.id, state, error)

    def _retry_or_fail(self, task: _Task, reason: str) -> None:
        try:
            with transaction(self.sessions) as s:
                job = self._owned(s, task)
                keys = _give_back(s, job, f"attempt {job.attempts} failed: {reason}", reason)
        except _Lost:
            return
        _delete_quietly(self.store, keys)

    def _requeue_for_shutdown(self, task: _Task) -> None:
        try:
            with transaction(self.sessions) as s:
                job = self._owned(s, task)
                job.state = "queued"
                job.worker_id = None
                job.heartbeat_at = None
                job.attempts = max(0, job.attempts - 1)  # not the job's fault
                repo.append_event(
                    s,
                    job.id,
                    "queued",
                    0.0,
                    f"worker {self.worker_id} is shutting down; the job will start again on "
                    "another worker",
                )
        except _Lost:
            return

    # --- sandboxes ----------------------------------------------------------------------------

    def _start_sandbox(self) -> Sandbox:
        return Sandbox.start(self.config.limits, self.work_root / "logs")

    def _take_sandbox(self) -> Sandbox:
        box, self._spare = self._spare, None
        if box is not None and box.alive():
            return box
        if box is not None:
            box.kill()
        return self._start_sandbox()


class _Uploader:
    """Stores a job's outputs in the background while the sandbox verifies them; whatever
    is not kept (recorded) is deleted on close."""

    def __init__(self, store: ObjectStore, task: _Task) -> None:
        self.store = store
        self.task = task
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[list[artifacts.StoredFile]]] = {}
        self._kept: set[str] = set()

    def started(self, target: str) -> bool:
        return target in self._futures

    def start(self, target: str, files: list[dict[str, Any]]) -> None:
        if target in self._futures:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"store-{self.task.id[:8]}")
        self._futures[target] = self._pool.submit(self._put, files)

    def wait(self, target: str) -> list[artifacts.StoredFile]:
        return self._futures[target].result()

    def keep(self, targets: Iterable[str]) -> None:
        self._kept.update(targets)

    def close(self, keep: set[str] | None = None) -> None:
        """Wait for uploads and delete those not kept (nor in `keep`, which stay pending
        for a later keep() or close())."""
        keep = keep or set()
        for target, future in list(self._futures.items()):
            if target in keep:
                continue
            del self._futures[target]
            try:
                files = future.result()
            except Exception:
                continue  # _put removed what it had stored
            if target not in self._kept:
                _delete_quietly(self.store, [f.storage_key for f in files])
        if not self._futures and self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _put(self, files: list[dict[str, Any]]) -> list[artifacts.StoredFile]:
        t = self.task
        upload_uid = str(uuid.uuid4())
        stored: list[artifacts.StoredFile] = []
        try:
            for f in files:
                path = Path(str(f["path"]))
                file_name = artifacts.sanitize_file_name(path.name, "file_name")
                key = artifacts.storage_key(t.org_id, t.model_id, t.version, upload_uid, file_name)
                size, sha256 = self.store.put(key, _chunks(path))
                stored.append(
                    artifacts.StoredFile(
                        file_name=file_name,
                        kind=str(f.get("kind", "weights")),
                        storage_key=key,
                        size_bytes=size,
                        sha256=sha256,
                        required=bool(f.get("required", True)),
                    )
                )
        except BaseException:
            _delete_quietly(self.store, [f.storage_key for f in stored])
            raise
        return stored


def _stop(box: Sandbox, outputs: _Uploader) -> None:
    """End the sandbox and remove stored outputs before the job's final event."""
    box.kill()
    outputs.close()


class _Failed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Cancelled(Exception):
    pass


class _Shutdown(Exception):
    pass


class _EventWriter:
    """Turns the sandbox's progress stream into job events: a new stage is written at once
    (after the last event of the previous stage), repeats of a stage at most every
    `event_interval` seconds, and when the sandbox has been quiet for `tick_interval` (a
    long library call holding its interpreter) a "still working" event from this side, so
    watchers never wait long for a sign of life. Each write checks the job is still this
    worker's."""

    def __init__(self, worker: ConversionWorker, task: _Task) -> None:
        self.worker = worker
        self.task = task
        self.stage = ""
        self.stage_since = time.monotonic()
        self.fraction = 0.0
        self.pending: tuple[str, float, str] | None = None
        self.last_write = 0.0
        self.queue: list[tuple[str, float, str]] = []

    def emit(self, stage: str, fraction: float, message: str, *, force: bool = False) -> None:
        self.fraction = max(self.fraction, fraction)
        if stage != self.stage:
            self.stage_since = time.monotonic()
        if stage != self.stage or force:
            if self.pending is not None:
                self.queue.append(self.pending)
                self.pending = None
            self.queue.append((stage, fraction, message))
            self.stage = stage
            self.flush()
        else:
            self.pending = (stage, fraction, message)

    def flush_due(self) -> None:
        quiet = time.monotonic() - self.last_write
        if self.queue or (self.pending is not None and quiet >= self.worker.config.event_interval):
            self.flush()
        elif self.stage and quiet >= self.worker.config.tick_interval:
            elapsed = time.monotonic() - self.stage_since
            self.queue.append(
                (self.stage, self.fraction, f"{self.stage}: still working ({elapsed:.0f} s)")
            )
            self.flush()

    def flush(self) -> None:
        if self.pending is not None:
            self.queue.append(self.pending)
            self.pending = None
        if not self.queue:
            return
        batch, self.queue = self.queue, []
        with transaction(self.worker.sessions) as s:
            job = self.worker._owned(s, self.task)
            for stage, fraction, message in batch:
                repo.append_event(s, job.id, stage, fraction, message)
            job.heartbeat_at = utcnow()
        self.last_write = time.monotonic()


def _give_back(s: Session, job: ConversionJob, retry_message: str, reason: str) -> list[str]:
    """Requeue a job whose attempt died, or fail it once it used every attempt; a job
    flagged for cancellation is cancelled. Returns objects to delete (when finished)."""
    if job.cancel_requested:
        job.state, job.error = "cancelled", "cancelled by request"
        repo.append_event(
            s, job.id, "cancelled", repo.last_fraction(s, job.id), "cancelled by request"
        )
    elif job.attempts < job.max_attempts:
        job.state = "queued"
        job.worker_id = None
        job.heartbeat_at = None
        repo.append_event(
            s,
            job.id,
            "queued",
            0.0,
            f"{retry_message}; retrying from the start (attempt {job.attempts + 1} of "
            f"{job.max_attempts})",
        )
        job.updated_at = utcnow()
        return []
    else:
        job.state = "failed"
        job.error = f"gave up after {job.attempts} attempts; the last one: {reason}"
        job.result = {
            "targets": [{"target": t, "succeeded": False, "error": job.error} for t in job.targets]
        }
        repo.append_event(s, job.id, "failed", repo.last_fraction(s, job.id), job.error)
    job.updated_at = utcnow()
    return list(job.options.get("calibration_keys", []))


def reap(sessions: sessionmaker[Session], store: ObjectStore, stale_after: float) -> int:
    """Hand running jobs whose worker stopped sending heartbeats back to the queue (or fail
    them after their last attempt). Returns how many were reaped."""
    now = utcnow()
    cutoff = now - timedelta(seconds=stale_after)
    with transaction(sessions, readonly=True) as s:
        if not repo.any_stale(s, cutoff):
            return 0  # the common case, without taking a write lock
    garbage: list[str] = []
    with transaction(sessions) as s:
        stale = repo.stale_running(s, cutoff)
        for job in stale:
            age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else stale_after
            reason = f"worker {job.worker_id} stopped sending heartbeats ({age:.0f} s ago)"
            garbage += _give_back(s, job, f"attempt {job.attempts} was abandoned: {reason}", reason)
        count = len(stale)
    _delete_quietly(store, garbage)
    if count:
        log.warning("reaped %d conversion jobs with stale heartbeats", count)
    return count


def _has_queued(sessions: sessionmaker[Session]) -> bool:
    from sqlalchemy import select

    with transaction(sessions, readonly=True) as s:
        return (
            s.scalar(select(ConversionJob.id).where(ConversionJob.state == "queued").limit(1))
            is not None
        )


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _package_metrics(task: _Task, outcome: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in (outcome.get("metrics") or {}).items() if v is not None}
    metrics = {k: (_finite(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    metrics["target"] = outcome["target"]
    metrics["conversion_job"] = task.name
    if outcome.get("method"):
        metrics["method"] = outcome["method"]
    return metrics


def _delete_quietly(store: ObjectStore, keys: list[str]) -> None:
    for key in keys:
        with contextlib.suppress(Exception):
            store.delete(key)


class ConversionPool:
    """`size` workers on threads of this process (each running its jobs in sandboxes)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        config: WorkerConfig | None = None,
        size: int = 1,
    ) -> None:
        self.config = config or WorkerConfig()
        self.workers = [
            ConversionWorker(sessions, store, self.config, default_worker_id(i))
            for i in range(size)
        ]
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for w in self.workers:
            t = threading.Thread(
                target=w.run, args=(self._stop, self._wake), name=f"conversion-{w.worker_id}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)

    def notify(self) -> None:
        """A job was queued: wake idle workers now instead of at their next poll."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._threads = []
