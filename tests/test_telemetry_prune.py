"""`modelregistry telemetry prune`: raw sessions and rollups past the retention go, the
rest stays and keeps answering."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.cli import main
from support.registry import Client, RunningServer
from support.telemetry import model_with_versions, now, report, session, stored_sessions, window


def test_prune_deletes_what_the_retention_expired(
    registry: RunningServer, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    model_with_versions(client, "m")
    t = now()
    old_at = t - timedelta(days=20)
    old = [session(at=old_at, latency_ms=100.0) for _ in range(30)]
    recent = [session(at=t - timedelta(days=2), latency_ms=5.0) for _ in range(20)]
    assert report(client, old + recent).accepted_count == 50

    assert main(["telemetry", "prune", "--database-url", registry.database_url,
                 "--retention-days", "10"]) == 0  # fmt: skip
    assert "deleted" in capsys.readouterr().out
    assert stored_sessions(registry, client) == 20
    # Rollups of expired hours are gone too: the old hour answers nothing.
    hour = old_at.replace(minute=0, second=0, microsecond=0)
    assert window(client, start=hour, end=hour + timedelta(hours=1)).session_count == 0
    got = window(client, start=t - timedelta(days=5), end=t)
    assert got.session_count == 20
    assert got.latency_ms.p50 == pytest.approx(5.0, rel=0.01)
    # Idempotent.
    assert main(["telemetry", "prune", "--database-url", registry.database_url,
                 "--retention-days", "10"]) == 0  # fmt: skip
    assert stored_sessions(registry, client) == 20
