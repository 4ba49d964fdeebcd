"""Migrations build the schema from zero on both databases, and match the ORM exactly."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, inspect, text

from storage.db import create_engine_for
from storage.migrate import alembic_config, current_revision, head_revision, upgrade
from storage.orm import Base
from storage.orm.telemetry import is_session_partition


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """As storage/migrations/env.py: PostgreSQL's daily partitions are not in the ORM."""
    return not (type_ == "table" and is_session_partition(name))


def schema_diff(url: str, metadata: MetaData) -> list[Any]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "target_metadata": metadata,
                    "include_name": include_name,
                },
            )
            with warnings.catch_warnings():
                # SQLite cannot reflect expression indexes (ix_models_model_id_trgm, on
                # lower(model_id)), so neither SQLAlchemy nor Alembic compares them there;
                # PostgreSQL's run compares them.
                warnings.filterwarnings("ignore", message=".*expression-based index")
                return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


@contextmanager
def engine_at(db_url: str, revision: str) -> Iterator[Engine]:
    """An engine on the database migrated up to `revision` (the migration under test
    runs on after the test's rows are in), disposed after."""
    upgrade(db_url, revision)
    engine = create_engine_for(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_upgrade_from_zero_creates_every_table(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    engine = create_engine_for(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_concurrent_upgrades_from_zero_all_succeed(db_url: str) -> None:
    """Servers starting at once against an empty database must not trip over each other
    (PostgreSQL advisory lock; SQLite write lock taken at BEGIN). Separate processes,
    as in production: Alembic's module-level context is per process."""
    command = [sys.executable, "-m", "storage.migrate", "upgrade", db_url]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert current_revision(db_url) == head_revision()


def test_migrations_match_the_orm(db_url: str) -> None:
    upgrade(db_url)
    assert schema_diff(db_url, Base.metadata) == []


def test_drift_check_notices_a_change(db_url: str) -> None:
    """Guards the test above against comparing nothing."""
    upgrade(db_url)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["models"].append_column(Column("extra", Integer, nullable=True))
    diff = schema_diff(db_url, drifted)
    assert [d[0] for d in diff] == ["add_column"]
    assert diff[0][3].name == "extra"


def test_upgrade_is_idempotent_and_downgrade_reverses(db_url: str) -> None:
    upgrade(db_url)
    upgrade(db_url)
    command.downgrade(alembic_config(db_url), "base")
    engine = create_engine_for(db_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(db_url)
    assert schema_diff(db_url, Base.metadata) == []


def test_model_versions_get_their_org_from_the_model(db_url: str) -> None:
    """0014 fills model_versions.org_id of existing rows from their model."""
    now = "2026-11-01 00:00:00"
    with engine_at(db_url, "0013") as engine:
        with engine.begin() as conn:
            for org in ("o1", "o2"):
                conn.execute(
                    text(
                        "INSERT INTO orgs (id, name, plan, model_versions_monthly, revision, "
                        "created_at) VALUES (:org, :org, 'team', 10, 1, :now)"
                    ),
                    {"org": org, "now": now},
                )
                conn.execute(
                    text(
                        "INSERT INTO models (id, org_id, model_id, framework, description, "
                        "tags, enabled, revision, created_at, updated_at) VALUES "
                        "(:model, :org, 'm', 'onnx', '', '[]', true, 1, :now, :now)"
                    ),
                    {"model": f"m-{org}", "org": org, "now": now},
                )
                conn.execute(
                    text(
                        "INSERT INTO model_versions (id, model_uid, version, lifecycle_status, "
                        "description, labels, created_at, updated_at) VALUES "
                        "(:id, :model, '1', 'draft', '', '{}', :now, :now)"
                    ),
                    {"id": f"v-{org}", "model": f"m-{org}", "now": now},
                )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, org_id FROM model_versions ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("v-o1", "o1"), ("v-o2", "o2")]


def test_the_change_log_collapses_to_one_row_per_name(db_url: str) -> None:
    """0015 keeps, per (scope, name), the pending row if any, else the newest."""
    rows = [  # (org_id, revision, name)
        ("o1", 3, "a"), ("o1", 7, "a"), ("o1", None, "a"),  # pending wins
        ("o1", 3, "b"), ("o1", 9, "b"),  # the newest wins
        ("o2", 4, "b"),  # another scope's row of the name stays
        (None, 5, "b"), (None, 6, "b"),  # blessed rows collapse too
        (None, 2, "c"),
    ]  # fmt: skip
    with engine_at(db_url, "0014") as engine:
        with engine.begin() as conn:
            for org_id, revision, name in rows:
                conn.execute(
                    text(
                        "INSERT INTO manifest_changes (org_id, revision, name) "
                        "VALUES (:org_id, :revision, :name)"
                    ),
                    {"org_id": org_id, "revision": revision, "name": name},
                )
        upgrade(db_url)
        with engine.connect() as conn:
            kept = conn.execute(text("SELECT org_id, revision, name FROM manifest_changes")).all()
        assert {tuple(r) for r in kept} == {
            ("o1", None, "a"), ("o1", 9, "b"), ("o2", 4, "b"), (None, 6, "b"), (None, 2, "c"),
        }  # fmt: skip
        assert len(kept) == 5


def insert_stored_subtree(conn: Connection) -> None:
    """Variant v1 with a subtree stored under its key (b"x"), in the columns every
    migration since 0009 has."""
    now = "2026-11-01 00:00:00"
    conn.execute(
        text(
            "INSERT INTO catalog_variants (id, name, family, task_taxonomy, "
            "parameter_count, license, description, content_revision, created_at, "
            "updated_at) VALUES ('v1', 'm', '', '[]', 0, '', '', 3, :now, :now)"
        ),
        {"now": now},
    )
    conn.execute(
        text(
            "INSERT INTO manifest_tails (variant_id, content_revision, "
            "variant_updated_at, framework, data, digest) "
            "VALUES ('v1', 3, :now, '', :data, :data)"
        ),
        {"now": now, "data": b"x"},
    )


def test_stored_subtrees_are_of_the_first_entry_format(db_url: str) -> None:
    """0017: manifest_tails rows written before it are of entry format 1; stored whole
    manifests, of a layout no longer read, are dropped."""
    with engine_at(db_url, "0016") as engine:
        with engine.begin() as conn:
            insert_stored_subtree(conn)
            conn.execute(
                text(
                    "INSERT INTO manifest_snapshots (scope, org_revision, catalog_revision, "
                    "data) VALUES ('anonymous', 1, 1, :data)"
                ),
                {"data": b"MRM\x01"},
            )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT variant_id, entry_format FROM manifest_tails")).all()
            snapshots = conn.execute(text("SELECT count(*) FROM manifest_snapshots")).scalar()
        assert [tuple(r) for r in rows] == [("v1", 1)] and snapshots == 0


def test_stored_subtrees_have_no_entries_until_a_build_stores_them(db_url: str) -> None:
    """0019: manifest_tails rows written before it keep their subtree, with no entry
    stored around it (the next build makes and stores it)."""
    with engine_at(db_url, "0018") as engine:
        with engine.begin() as conn:
            insert_stored_subtree(conn)
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT variant_id, data, entry_framework, entry_enabled, entry_prefix, "
                    "entry_etag FROM manifest_tails"
                )
            ).all()
        assert [tuple(r) for r in rows] == [("v1", b"x", None, None, None, None)]


def test_stored_manifests_are_of_the_first_entry_format(db_url: str) -> None:
    """0020: manifest_snapshots rows written before it (all of the first format since
    0017) say so."""
    with engine_at(db_url, "0019") as engine:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO manifest_snapshots (scope, org_revision, catalog_revision, "
                    "data) VALUES ('anonymous', 1, 2, :data)"
                ),
                {"data": b"MRM\x02"},
            )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT scope, catalog_revision, entry_format FROM manifest_snapshots")
            ).all()
        assert [tuple(r) for r in rows] == [("anonymous", 2, 1)]


def test_live_floors_start_at_the_floors_left_before(db_url: str) -> None:
    """0021: an existing scope's live floor is its change log's floor (which 0013 set when
    it started logging and raised when it pruned whole revisions); a scope created after it
    starts at 0."""
    with engine_at(db_url, "0020") as engine:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO orgs (id, name, plan, model_versions_monthly, revision, "
                    "manifest_changes_floor, created_at) VALUES "
                    "('o1', 'o1', 'team', 10, 5000, 4000, '2026-11-01 00:00:00')"
                )
            )
            conn.execute(text("UPDATE catalog_state SET manifest_changes_floor = 7"))
        upgrade(db_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO orgs (id, name, plan, model_versions_monthly, revision, "
                    "created_at) VALUES ('o2', 'o2', 'team', 10, 1, '2026-11-01 00:00:00')"
                )
            )
            orgs = conn.execute(text("SELECT id, manifest_live_floor FROM orgs ORDER BY id"))
            assert [tuple(r) for r in orgs] == [("o1", 4000), ("o2", 0)]
            catalog = conn.execute(
                text("SELECT manifest_changes_floor, manifest_live_floor FROM catalog_state")
            ).all()
        assert [tuple(r) for r in catalog] in ([], [(7, 7)])
