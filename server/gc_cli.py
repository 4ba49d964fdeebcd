"""`modelregistry gc`: garbage collection of the object store (domain/gc.py).

Run it periodically (cron, a Kubernetes CronJob) next to running servers, against the
same database and object store. It prints one line per object it deletes (or, with
--dry-run, would delete), per incomplete upload it aborts and per upload session it
expires, then a summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from server.settings import DEFAULT_OBJECT_STORE, env, normalize_sqlite_url


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    database_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    gc = sub.add_parser(
        "gc",
        help="delete objects no row references once unreferenced for the grace window; "
        "abort stale incomplete uploads; expire abandoned upload sessions",
    )
    gc.add_argument(
        "--grace",
        default="7d",
        help="how long an object must be unreferenced (and an incomplete upload idle) "
        "before it goes: e.g. 7d, 12h, 30m, 0 (default %(default)s, DeleteModel's "
        "recovery window)",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be done, change nothing"
    )
    database_arg(gc)
    gc.add_argument(
        "--object-store",
        default=env("OBJECT_STORE", DEFAULT_OBJECT_STORE),
        help="the servers' object store (env MODELREGISTRY_OBJECT_STORE; default %(default)s)",
    )
    gc.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from domain import gc
    from storage.db import create_engine_for, session_factory
    from storage.objectstore import StorageError, open_store

    try:
        grace = gc.parse_duration(args.grace)
    except ValueError as exc:
        print(f"modelregistry gc: --grace: {exc}", file=sys.stderr)
        return 2
    engine = create_engine_for(normalize_sqlite_url(args.database_url), pool_size=2)
    try:
        try:
            store = open_store(args.object_store, create_bucket=False)
            report = gc.collect(
                session_factory(engine),
                store,
                grace=grace,
                dry_run=args.dry_run,
                emit=lambda line: print(line, flush=True),
            )
        except (StorageError, ValueError) as exc:
            print(f"modelregistry gc: object store {args.object_store!r}: {exc}", file=sys.stderr)
            return 1
        except SQLAlchemyError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"modelregistry gc: database: {first}", file=sys.stderr)
            return 1
    finally:
        engine.dispose()
    print(report.summary())
    return 1 if report.errors else 0
