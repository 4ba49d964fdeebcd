"""The end of a successful conversion attempt: the packages of its verified outputs, the
job's per-target results and its final event, written in one transaction.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from conversion.spec import TARGETS
from domain import artifacts
from domain.conversion_events import PIPELINE_END
from domain.conversion_files import Uploader
from domain.conversion_job_state import owned
from domain.conversion_task import Cancelled, Task
from domain.conversions import delete_objects
from domain.errors import DomainError
from storage.db import transaction
from storage.objectstore import ObjectStore
from storage.orm import utcnow
from storage.repos import conversions as repo
from storage.repos import tenancy

log = logging.getLogger("modelregistry.conversion")


def new_package(
    task: Task, outcome: dict[str, Any], files: list[artifacts.StoredFile]
) -> artifacts.NewPackage:
    """The package to record for one verified target's stored files."""
    info = TARGETS[str(outcome["target"])]
    return artifacts.NewPackage(
        fields=artifacts.PackageFields(info.format, info.quantization, info.runtime),
        files=files,
        source="conversion",
        metrics=_package_metrics(task, outcome),
    )


def record(
    sessions: sessionmaker[Session],
    store: ObjectStore,
    worker_id: str,
    task: Task,
    outcomes: list[dict[str, Any]],
    packages: list[tuple[str, artifacts.NewPackage]],
    outputs: Uploader,
) -> None:
    """One transaction: the packages, the job's results and its final event."""
    with transaction(sessions) as s:
        # The org's lock before the job's: recording packages takes it, and so does a
        # version delete, before its cascade reaches the job (bump_org_revision's order).
        tenancy.lock_org(s, task.org_id)
        job = owned(s, task, worker_id)
        if job.cancel_requested:
            raise Cancelled()
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
    delete_objects(store, keys)
    log.info("job %s %s", task.id, job.state)


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _package_metrics(task: Task, outcome: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in (outcome.get("metrics") or {}).items() if v is not None}
    metrics = {k: (_finite(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    metrics["target"] = outcome["target"]
    metrics["conversion_job"] = task.name
    if outcome.get("method"):
        metrics["method"] = outcome["method"]
    return metrics
