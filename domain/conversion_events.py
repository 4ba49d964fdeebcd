"""Progress reporting: a conversion attempt's progress written as job events, throttled,
with "still working" events while the sandbox is quiet.

The job's progress fraction is split between the worker's own work and the sandboxed
pipeline: fetching the source ends at FETCH_END, the pipeline at PIPELINE_END, storing and
recording the outputs take the rest.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from domain.conversion_job_state import owned
from domain.conversion_task import Task
from storage.db import transaction
from storage.orm import utcnow
from storage.repos import conversions as repo

# Share of the job's progress before, during and after the sandboxed pipeline.
FETCH_END = 0.03
PIPELINE_END = 0.92


class EventWriter:
    """Turns the sandbox's progress stream into job events: a new stage is written at once
    (after the last event of the previous stage), repeats of a stage at most every
    `event_interval` seconds, and when the sandbox has been quiet for `tick_interval` (a
    long library call holding its interpreter) a "still working" event from this side, so
    watchers never wait long for a sign of life. Each write checks the job is still this
    worker's."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        worker_id: str,
        task: Task,
        event_interval: float,
        tick_interval: float,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.task = task
        self.event_interval = event_interval
        self.tick_interval = tick_interval
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
        if self.queue or (self.pending is not None and quiet >= self.event_interval):
            self.flush()
        elif self.stage and quiet >= self.tick_interval:
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
        with transaction(self.sessions) as s:
            job = owned(s, self.task, self.worker_id)
            for stage, fraction, message in batch:
                repo.append_event(s, job.id, stage, fraction, message)
            job.heartbeat_at = utcnow()
        self.last_write = time.monotonic()
