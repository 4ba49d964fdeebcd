"""Cross-org counts read by the operations side (Prometheus scrapes), never by RPCs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.orm import ConversionJob


def conversion_jobs_by_state(session: Session) -> dict[str, int]:
    """Number of conversion jobs of every org in each state that has any."""
    rows = session.execute(
        select(ConversionJob.state, func.count()).group_by(ConversionJob.state)
    ).all()
    return {state: int(count) for state, count in rows}
