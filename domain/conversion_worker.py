"""Conversion workers: the loop that claims queued jobs one at a time and the pool of
worker threads a process runs.

A worker is a thread supervising one sandbox process at a time; the conversion itself never
runs in the worker's (or the server's) process. Several workers, in one process or in many
(`modelregistry serve` runs a small pool, `modelregistry worker` runs them standalone), can
share one database: a job is claimed by exactly one of them (`FOR UPDATE SKIP LOCKED` plus
a conditional UPDATE), and the claimant proves it is alive with heartbeats. Any worker
reaps a running job whose heartbeats stopped: it goes back to the queue until it has used
`max_attempts`, then fails with the reason.

Where the rest lives: one attempt at a job, supervised, in domain/conversion_attempt.py;
its files in domain/conversion_files.py; its progress events in
domain/conversion_events.py; its results in domain/conversion_results.py; the job row's
worker-side state changes (and reaping) in domain/conversion_job_state.py.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from conversion.sandbox import Sandbox, SandboxLimits
from domain.conversion_attempt import Attempt
from domain.conversion_job_state import reap
from domain.conversion_task import Task
from storage.db import transaction
from storage.objectstore import ObjectStore
from storage.orm import ConversionJob, utcnow
from storage.repos import conversions as repo

log = logging.getLogger("modelregistry.conversion")


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
            work = self.work_root / f"{task.id}-{task.attempt}"
            Attempt(
                self.sessions,
                self.store,
                self.config,
                self.worker_id,
                self.stopping,
                task,
                box,
                work,
            ).run()
        finally:
            self._current = None
            box.kill()
            if self.config.warm_sandbox and not self.stopping.is_set():
                self._spare = self._start_sandbox()
        return True

    # --- claiming --------------------------------------------------------------------------

    def _claim(self, sandbox_pid: int) -> Task | None:
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
            task = Task(
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


def _has_queued(sessions: sessionmaker[Session]) -> bool:
    with transaction(sessions, readonly=True) as s:
        return (
            s.scalar(select(ConversionJob.id).where(ConversionJob.state == "queued").limit(1))
            is not None
        )


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
