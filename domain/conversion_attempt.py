"""One attempt at a claimed conversion job, run in a sandbox process and supervised from the
worker's thread.

The sandbox (conversion/sandbox.py) limits its own memory, CPU time and file sizes; this
side enforces what the child cannot: the wall-clock limit (by killing it), and stopping
early when heartbeats show the job was cancelled or taken over, or when the worker shuts
down. How the attempt ended decides the job's next state, all in `Attempt.run`.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from conversion.sandbox import Request, Sandbox
from domain import artifacts
from domain.conversion_events import FETCH_END, PIPELINE_END, EventWriter
from domain.conversion_files import Uploader, fetch
from domain.conversion_job_state import finish, requeue_for_shutdown, retry_or_fail
from domain.conversion_results import new_package, record
from domain.conversion_task import Cancelled, Failed, Lost, Shutdown, Task, Transient
from storage.db import transaction
from storage.objectstore import ObjectStore
from storage.orm import utcnow
from storage.repos import conversions as repo

if TYPE_CHECKING:
    from domain.conversion_worker import WorkerConfig

log = logging.getLogger("modelregistry.conversion")


class Heartbeat:
    """Background heartbeats for one running job; notes cancellation and loss of the job."""

    def __init__(
        self, sessions: sessionmaker[Session], worker_id: str, job_id: str, interval: float
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.job_id = job_id
        self.interval = interval
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with transaction(self.sessions) as s:
                    status = repo.heartbeat(s, self.job_id, self.worker_id, utcnow())
            except Exception:
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
                continue
            if status is None:
                self.lost.set()
                return
            if status:
                self.cancelled.set()


class Attempt:
    """Runs `task` in `box` (a started sandbox) and records how it ended."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        config: WorkerConfig,
        worker_id: str,
        stopping: threading.Event,
        task: Task,
        box: Sandbox,
        work: Path,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.config = config
        self.worker_id = worker_id
        self.stopping = stopping
        self.task = task
        self.box = box
        self.work = work

    def run(self) -> None:
        task, box = self.task, self.box
        outputs = Uploader(self.store, task)
        try:
            with Heartbeat(
                self.sessions, self.worker_id, task.id, self.config.heartbeat_interval
            ) as hb:
                try:
                    self._convert(hb, outputs)
                except Lost:
                    log.warning("worker %s lost job %s to another worker", self.worker_id, task.id)
                except Transient as exc:
                    _stop(box, outputs)
                    retry_or_fail(self.sessions, self.store, self.worker_id, task, str(exc))
                except Cancelled:
                    _stop(box, outputs)
                    finish(
                        self.sessions,
                        self.store,
                        self.worker_id,
                        task,
                        "cancelled",
                        "cancelled by request",
                    )
                except Shutdown:
                    _stop(box, outputs)
                    requeue_for_shutdown(self.sessions, self.worker_id, task)
                except Failed as exc:
                    _stop(box, outputs)
                    finish(self.sessions, self.store, self.worker_id, task, "failed", exc.message)
        finally:
            box.kill()
            outputs.close()  # waits for uploads; removes whatever was not recorded
            shutil.rmtree(self.work, ignore_errors=True)

    def _convert(self, hb: Heartbeat, outputs: Uploader) -> None:
        task, box = self.task, self.box
        events = EventWriter(
            self.sessions,
            self.worker_id,
            task,
            self.config.event_interval,
            self.config.tick_interval,
        )
        events.emit("fetch", 0.0, "fetching the source from object storage", force=True)
        source, calibration = fetch(self.sessions, self.store, task, self.work)
        events.emit(
            "fetch",
            FETCH_END,
            f"fetched {source.name} ({source.stat().st_size} bytes)",
            force=True,
        )
        box.submit(
            Request(
                source=str(source),
                work_dir=str(self.work),
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
                raise Failed(
                    f"the conversion exceeded the wall-clock limit of "
                    f"{self.config.limits.wall_seconds:g} s"
                )
        events.flush()
        if error is not None:
            raise Failed(error)
        if result is None:
            death = box.death()
            if death.retryable:
                raise Transient(death.reason)
            raise Failed(death.reason)
        self._check(hb)
        self._store_and_record(result, events, hb, outputs)

    def _check(self, hb: Heartbeat) -> None:
        if hb.lost.is_set():
            raise Lost()
        if hb.cancelled.is_set():
            raise Cancelled()
        if self.stopping.is_set():
            raise Shutdown()

    def _store_and_record(
        self,
        result: dict[str, Any],
        events: EventWriter,
        hb: Heartbeat,
        outputs: Uploader,
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
                raise Transient(f"could not store {target}: {exc}") from None
            self._check(hb)
            packages.append((target, new_package(self.task, outcome, files)))
        events.flush()
        outputs.close(keep={t for t, _ in packages})  # outputs that failed verification go
        record(self.sessions, self.store, self.worker_id, self.task, outcomes, packages, outputs)


def _stop(box: Sandbox, outputs: Uploader) -> None:
    """End the sandbox and remove stored outputs before the job's final event."""
    box.kill()
    outputs.close()
