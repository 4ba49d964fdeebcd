"""Worker-side changes to a conversion job's row: checking the job is still this worker's,
ending it (failed or cancelled), retrying or giving up after a failed attempt, requeueing
it when its worker shuts down, and reaping jobs whose worker stopped sending heartbeats.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from domain.conversion_task import Lost, Task
from domain.conversions import delete_objects
from storage.db import transaction
from storage.objectstore import ObjectStore
from storage.orm import ConversionJob, utcnow
from storage.repos import conversions as repo

log = logging.getLogger("modelregistry.conversion")


def owned(s: Session, task: Task, worker_id: str) -> ConversionJob:
    """The job, locked; Lost unless it is still running on this worker."""
    job = repo.lock(s, task.id)
    if job is None or job.state != "running" or job.worker_id != worker_id:
        raise Lost()
    return job


def finish(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    worker_id: str,
    task: Task,
    state: str,
    error: str,
) -> None:
    try:
        with transaction(sessions) as s:
            job = owned(s, task, worker_id)
            if state == "failed" and job.cancel_requested:
                state, error = "cancelled", "cancelled by request"
            job.state = state
            job.error = error
            job.updated_at = utcnow()
            job.result = {
                "targets": [{"target": t, "succeeded": False, "error": error} for t in task.targets]
            }
            stage = "cancelled" if state == "cancelled" else "failed"
            repo.append_event(s, job.id, stage, repo.last_fraction(s, job.id), error)
            keys = list(job.options.get("calibration_keys", []))
    except Lost:
        return
    delete_objects(store, keys)
    log.info("job %s %s: %s", task.id, state, error)


def retry_or_fail(
    sessions: sessionmaker[Session], store: ObjectStore, worker_id: str, task: Task, reason: str
) -> None:
    try:
        with transaction(sessions) as s:
            job = owned(s, task, worker_id)
            keys = give_back(s, job, f"attempt {job.attempts} failed: {reason}", reason)
    except Lost:
        return
    delete_objects(store, keys)


def requeue_for_shutdown(sessions: sessionmaker[Session], worker_id: str, task: Task) -> None:
    try:
        with transaction(sessions) as s:
            job = owned(s, task, worker_id)
            job.state = "queued"
            job.worker_id = None
            job.heartbeat_at = None
            job.attempts = max(0, job.attempts - 1)  # not the job's fault
            repo.append_event(
                s,
                job.id,
                "queued",
                0.0,
                f"worker {worker_id} is shutting down; the job will start again on another worker",
            )
    except Lost:
        return


def give_back(s: Session, job: ConversionJob, retry_message: str, reason: str) -> list[str]:
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
            garbage += give_back(s, job, f"attempt {job.attempts} was abandoned: {reason}", reason)
        count = len(stale)
    delete_objects(store, garbage)
    if count:
        log.warning("reaped %d conversion jobs with stale heartbeats", count)
    return count
