"""Alembic environment: runs against the URL that storage.migrate puts in the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.db import SQLITE_BEGIN_OPTION, create_engine_for
from storage.orm import Base
from storage.orm.telemetry import is_session_partition

# Any PostgreSQL advisory lock key works as long as it is fixed: it serialises servers
# that start at once and would otherwise race to apply the same migration.
_PG_MIGRATION_LOCK = 7_301_554_019


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave inference_sessions' daily partitions (PostgreSQL) out of autogenerate: they
    are made at run time, not part of the ORM's schema."""
    return not (type_ == "table" and is_session_partition(name))


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else None
    context.configure(
        connection=connection,
        url=url,
        target_metadata=Base.metadata,
        # SQLite can't ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=dialect == "sqlite" or (url or "").startswith("sqlite"),
        compare_type=True,
        include_name=include_name,
        literal_binds=connection is None,
        # SQLite's DDL is transactional, but Alembic assumes it is not and would commit
        # after each migration, releasing the write lock taken at BEGIN: a second process
        # could then read a half-applied chain and apply a migration twice. One
        # transaction for the whole upgrade keeps concurrent starts serialised.
        transactional_ddl=True if dialect == "sqlite" else None,
    )


def _run_online(connection: Connection) -> None:
    _configure(connection)
    sqlite = connection.dialect.name == "sqlite"
    raw = connection.connection.driver_connection
    assert raw is not None
    if sqlite:
        # Batch mode drops and recreates tables; with foreign keys on, that DROP would
        # cascade-delete child rows. The pragma is ignored inside a transaction, so flip
        # it on the driver connection (autocommit mode, see storage.db) before BEGIN.
        raw.execute("PRAGMA foreign_keys=OFF")
        # Take the write lock at BEGIN so a second process migrating at the same time
        # waits (busy_timeout) and then sees the new revision, instead of failing.
        connection.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
    try:
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            raw.execute("PRAGMA foreign_keys=ON")


def main() -> None:
    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    url: str | None = config.attributes.get("url")
    if context.is_offline_mode():
        _configure(url=url)
        with context.begin_transaction():
            context.run_migrations()
    elif connection is not None:
        _run_online(connection)
    else:
        if url is None:
            raise RuntimeError("no database URL; run migrations through storage.migrate")
        engine = create_engine_for(url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                _run_online(conn)
                conn.commit()
        finally:
            engine.dispose()


main()
