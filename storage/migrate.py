"""Run the packaged Alembic migrations without an alembic.ini in the working directory.

From a shell: `python -m storage.migrate upgrade|current URL`, and for developers
`python -m storage.migrate revision -m "add x" URL`, which autogenerates a new migration
by comparing storage.orm with a database already migrated to head.
"""

from __future__ import annotations

import argparse
import threading
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.db import create_engine_for

MIGRATIONS_PACKAGE = "storage.migrations"

_alembic_lock = threading.Lock()


def migrations_dir() -> Path:
    # A real directory both in a checkout and in an installed wheel (not zip-safe).
    return Path(str(resources.files(MIGRATIONS_PACKAGE)))


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations and, optionally, a database."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    # Passed as an attribute, not the sqlalchemy.url option: ini interpolation would
    # mangle a '%' in a URL-encoded password.
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (default: the newest), from empty too.

    Safe to run from several processes at once (they take turns on a database lock).
    """
    # Alembic keeps the running migration in module globals (alembic.context/op), so two
    # threads of one process must not migrate at the same time.
    with _alembic_lock:
        command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found in " + str(migrations_dir()))
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine = create_engine_for(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.migrate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upgrade", help="migrate a database to the newest revision")
    up.add_argument("url")
    cur = sub.add_parser("current", help="print the database's revision")
    cur.add_argument("url")
    rev = sub.add_parser("revision", help="autogenerate a migration against a migrated db")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("url")
    args = parser.parse_args(argv)
    if args.cmd == "upgrade":
        upgrade(args.url)
    elif args.cmd == "current":
        print(current_revision(args.url) or "(empty)")
    else:
        command.revision(alembic_config(args.url), message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
