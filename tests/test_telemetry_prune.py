"""`modelregistry telemetry prune`: raw sessions and rollups past the retention go, the
rest stays and keeps answering."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from server.telemetry_cli import cmd_prune
from support.registry import Client, RunningServer
from support.telemetry import model_with_versions, now, report, session, stored_sessions, window


def prune(database_url: str, days: float) -> int:
    """`modelregistry telemetry prune` (its handler: main() would reconfigure logging)."""
    return cmd_prune(argparse.Namespace(database_url=database_url, retention_days=days))


def test_cli_parses_the_prune_command() -> None:
    from server.cli import build_parser

    args = build_parser().parse_args(
        ["telemetry", "prune", "--database-url", "sqlite:///x.db", "--retention-days", "7"]
    )
    assert args.func is cmd_prune and args.retention_days == 7


def test_prune_deletes_what_the_retention_expired(
    registry: RunningServer, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    model_with_versions(client, "m")
    t = now()
    old_at = t - timedelta(days=20)
    old = [session(at=old_at, latency_ms=100.0) for _ in range(30)]
    recent = [session(at=t - timedelta(days=2), latency_ms=5.0) for _ in range(20)]
    assert report(client, old + recent).accepted_count == 50

    assert prune(registry.database_url, 10) == 0
    assert "deleted" in capsys.readouterr().out
    assert stored_sessions(registry, client) == 20
    # Rollups of expired hours are gone too: the old hour answers nothing.
    hour = old_at.replace(minute=0, second=0, microsecond=0)
    assert window(client, start=hour, end=hour + timedelta(hours=1)).session_count == 0
    got = window(client, start=t - timedelta(days=5), end=t)
    assert got.session_count == 20
    assert got.latency_ms.p50 == pytest.approx(5.0, rel=0.01)
    # Idempotent.
    assert prune(registry.database_url, 10) == 0
    assert stored_sessions(registry, client) == 20
