"""A claimed conversion job as its worker sees it, and the ways an attempt at it ends early.

Each exception is raised where its cause shows (a heartbeat, the sandbox, object storage,
the final transaction) and handled in one place, `domain.conversion_attempt.Attempt.run`,
which records what it means for the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain import names


@dataclass(frozen=True)
class Task:
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


class Lost(Exception):
    """The job is no longer this worker's (reaped after a stall, or finished elsewhere)."""


class Transient(Exception):
    """A failure that another attempt may not hit (backend hiccup, worker death)."""


class Failed(Exception):
    """A failure another attempt would hit too: the job fails with `message`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Cancelled(Exception):
    """Someone asked to cancel the job."""


class Shutdown(Exception):
    """The worker is stopping; the job goes back to the queue."""
