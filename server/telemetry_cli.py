"""`modelregistry telemetry ...`: telemetry maintenance commands.

`prune` enforces the retention period. On PostgreSQL it first drops the daily partitions of
raw inference sessions that lie wholly before the cutoff (one transaction each); then, on
both backends, it deletes the raw sessions still older than the cutoff (on PostgreSQL only
the cutoff's day holds any; one transaction per model, through the (scope, occurred_at)
index) and rollup rows of periods that ended before it. Run it periodically (cron, a Kubernetes
CronJob); it is idempotent and safe next to running servers. Training updates are not
pruned: training statistics are all-time (S15/S17) and their volume is one row per device
and round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta

from domain import telemetry
from server.settings import env, normalize_sqlite_url
from storage.db import create_engine_for, session_factory, transaction


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    database_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    commands = sub.add_parser("telemetry", help="telemetry maintenance").add_subparsers(
        dest="telemetry_cmd", required=True
    )
    prune = commands.add_parser(
        "prune", help="delete raw inference sessions and rollups older than the retention"
    )
    database_arg(prune)
    prune.add_argument(
        "--retention-days",
        type=float,
        default=float(env("TELEMETRY_RETENTION_DAYS", "30")),
        help="keep this many days (env MODELREGISTRY_TELEMETRY_RETENTION_DAYS; "
        "default %(default)s)",
    )
    prune.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    if args.retention_days <= 0:
        print("modelregistry: --retention-days must be positive")
        return 2
    retention = timedelta(days=args.retention_days)
    engine = create_engine_for(normalize_sqlite_url(args.database_url), pool_size=1)
    try:
        factory = session_factory(engine)
        with transaction(factory, readonly=True) as session:
            cutoff, scopes = telemetry.expired_scopes(session, retention)
        sessions = partitions = 0
        while True:  # one partition per transaction: each DROP locks the table briefly
            with transaction(factory) as session:
                dropped, rows = telemetry.prune_partitions(session, cutoff, limit=1)
            if not dropped:
                break
            partitions += dropped
            sessions += rows
        for org_id, model_id in scopes:
            with transaction(factory) as session:
                sessions += telemetry.prune_scope(session, org_id, model_id, cutoff)
        with transaction(factory) as session:
            rollups = telemetry.prune_rollups(session, cutoff)
    finally:
        engine.dispose()
    note = f" ({partitions} daily partitions dropped)" if partitions else ""
    print(
        f"deleted {sessions} raw inference sessions{note} and {rollups} rollup rows older "
        f"than {cutoff:%Y-%m-%d %H:%M:%S} UTC"
    )
    return 0
