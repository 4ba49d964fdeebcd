"""`modelregistry telemetry prune`: raw sessions and rollups past the retention go, the
rest stays and keeps answering."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from server.telemetry_cli import cmd_prune
from support.registry import Client, RunningServer
from support.telemetry import (
    day_partition,
    model_with_versions,
    now,
    report,
    session,
    session_partitions,
    stored_sessions,
    window,
)


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


def test_prune_drops_whole_old_partitions_and_the_boundary_days_old_rows(
    registry: RunningServer, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    model_with_versions(client, "m")
    t = now()
    cutoff = t - timedelta(days=10)
    ages = {"old": 25, "older_day": 12, "recent": 3}
    events = {k: [session(at=t - timedelta(days=d)) for _ in range(4)] for k, d in ages.items()}
    # Either side of the cutoff, a few hours apart: the cutoff's day keeps its partition,
    # only its older rows go.
    events["edge_old"] = [session(at=cutoff - timedelta(hours=2)) for _ in range(3)]
    events["edge_new"] = [session(at=cutoff + timedelta(hours=2)) for _ in range(3)]
    assert report(client, *events.values()).accepted_count == 18

    assert prune(registry.database_url, 10) == 0
    assert "deleted" in capsys.readouterr().out
    assert stored_sessions(registry, client) == 4 + 3
    partitions = session_partitions(registry)
    if partitions is not None:  # PostgreSQL: whole days before the cutoff's are dropped
        for key in ("old", "older_day"):
            assert day_partition(t - timedelta(days=ages[key])) not in partitions
        assert day_partition(t - timedelta(days=3)) in partitions
        assert day_partition(cutoff + timedelta(hours=2)) in partitions
        assert all(p >= day_partition(cutoff - timedelta(days=1)) for p in partitions)
    # Events keep arriving in kept and new days.
    assert report(client, [session(at=t - timedelta(minutes=1))]).accepted_count == 1


def test_a_partition_dropped_under_a_running_server_is_made_again(
    registry: RunningServer, client: Client
) -> None:
    # The server caches which days have partitions; a prune with a shorter retention than
    # the server's drops one it knows. Ingestion notices and creates it again.
    model_with_versions(client, "m")
    t = now()
    at = t - timedelta(days=4)
    # Twice: a process caches a day it created only once it has seen it committed.
    assert report(client, [session(at=at)]).accepted_count == 1
    assert report(client, [session(at=at)]).accepted_count == 1
    assert prune(registry.database_url, 1) == 0
    assert stored_sessions(registry, client) == 0
    assert report(client, [session(at=at)], [session(at=t)]).accepted_count == 2
    assert stored_sessions(registry, client) == 2
    partitions = session_partitions(registry)
    if partitions is not None:
        assert day_partition(at) in partitions
