"""Queries over devices, inference sessions, their hourly rollups and training updates.

Every function takes `org_id` first. Raw events are written in one statement per batch
(`INSERT .. ON CONFLICT DO NOTHING RETURNING event_id`): on PostgreSQL from arrays via
unnest, on SQLite as multi-row VALUES. The conflict target is the (org_id, event_id,
occurred_at) key (a retry re-sends the same event, occur_time included), so a re-delivered
event (a retried stream, the same id twice in a batch, or two streams at once) is stored
once and simply not returned. On PostgreSQL the table is partitioned by day of occurred_at;
ingestion creates the partitions a batch needs (ensure_session_partitions).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import (
    Integer,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from storage.orm import (
    Base,
    Device,
    InferenceRollup,
    InferenceRollup10m,
    InferenceSession,
    Model,
    ModelVersion,
    TrainingUpdate,
    new_id,
)
from storage.orm.telemetry import SESSION_PARTITION_PREFIX
from storage.repos import dialects

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def session_scope(org_id: str, model_id: str) -> int:
    """The key of a model's raw sessions in the time index: a 64-bit hash of (org, model).

    An integer compares far faster than the two strings at every step of an index
    descent. Not unique in principle, so every query filters on org_id and model_id too.
    Migration 0010 holds a copy of this function.
    """
    digest = hashlib.blake2b(f"{org_id}/{model_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# ---------------------------------------------------------------------------------------
# models and versions referenced by events


def existing_models(session: Session, org_id: str, model_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(model_ids))
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Model.model_id).where(Model.org_id == org_id, Model.model_id.in_(ids))
        )
    )


_PG_MODEL_VERSIONS = """
SELECT m.model_id, v.version FROM models AS m
LEFT JOIN model_versions AS v ON v.model_uid = m.id
WHERE m.org_id = %s AND m.model_id = ANY(%s)
"""


def existing_versions(
    session: Session, org_id: str, model_ids: Iterable[str]
) -> dict[str, set[str]]:
    """The org's models among `model_ids`, each with its version strings (one query)."""
    ids = sorted(set(model_ids))
    if not ids:
        return {}
    rows: Iterable[Any]
    if _is_postgres(session):
        driver = session.connection().connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur:
            cur.execute(_PG_MODEL_VERSIONS, (org_id, ids))
            rows = cur.fetchall()
    else:
        rows = session.execute(
            select(Model.model_id, ModelVersion.version)
            .outerjoin(ModelVersion, ModelVersion.model_uid == Model.id)
            .where(Model.org_id == org_id, Model.model_id.in_(ids))
        )
    out: dict[str, set[str]] = {}
    for m, v in rows:
        versions = out.setdefault(m, set())
        if v is not None:
            versions.add(v)
    return out


def model_exists(session: Session, org_id: str, model_id: str) -> bool:
    return bool(existing_models(session, org_id, [model_id]))


# ---------------------------------------------------------------------------------------
# inference sessions


@dataclass
class SessionColumns:
    """A batch of inference sessions, column by column (one list per column)."""

    event_id: list[str] = field(default_factory=list)
    model_id: list[str] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    device_id: list[str] = field(default_factory=list)
    device_type: list[str] = field(default_factory=list)
    occurred_us: list[int] = field(default_factory=list)  # microseconds since the epoch
    latency_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    ttft_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))  # 0: none
    tokens_per_second: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    error: list[bool] = field(default_factory=list)
    error_code: list[str] = field(default_factory=list)  # "": none (stored NULL)

    def __len__(self) -> int:
        return len(self.event_id)


# Binary-format arrays built with numpy, a whole column at a time: psycopg's generic list
# dumper spends about a microsecond per element in Python, which at tens of thousands of
# events a second was a tenth of the server's CPU. Text columns go as one string each,
# split by the database (string_to_array) on a separator that validated values cannot
# contain; a batch where one does (error_code is free text) takes the generic statement.
_PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL timestamps count from 2000-01-01
_SEP = "\x1f"


class _PgArray:
    """A one-dimensional PostgreSQL array, already in binary wire format."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Float8Array(_PgArray):
    __slots__ = ()


class _TimestamptzArray(_PgArray):
    __slots__ = ()


class _BoolArray(_PgArray):
    __slots__ = ()


def _array_dumper(cls: type[_PgArray], array_oid: int) -> type[Dumper]:
    class _Dumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            return cast(_PgArray, obj).data

    psycopg.adapters.register_dumper(cls, _Dumper)
    return _Dumper


# element type oid, array type oid, numpy element type (big-endian, as on the wire)
_FLOAT8 = (701, ">f8")
_TIMESTAMPTZ = (1184, ">i8")
_BOOL = (16, "u1")
_array_dumper(_Float8Array, 1022)
_array_dumper(_TimestamptzArray, 1185)
_array_dumper(_BoolArray, 1000)


def _binary_array(values: Any, element: tuple[int, str]) -> bytes:
    """The wire form of a 1-D array without NULLs: header, then (length, value) pairs."""
    oid, dtype = element
    n = len(values)
    if n == 0:
        return struct.pack(">iii", 0, 0, oid)
    rec = np.empty(n, dtype=[("len", ">i4"), ("v", dtype)])
    rec["len"] = np.dtype(dtype).itemsize
    rec["v"] = values
    return struct.pack(">iiiii", 1, 0, oid, n, 1) + rec.tobytes()


def _joined(values: list[str]) -> str | None:
    """The values joined by _SEP, or None when that would not split back into them."""
    text = _SEP.join(values)
    if len(values) == 1 and not text:
        return None  # string_to_array('') is an empty array
    if text.count(_SEP) != len(values) - 1:
        return None
    return text


_PG_INSERT_COLUMNS = """
WITH inserted AS (
INSERT INTO inference_sessions (
    org_id, event_id, model_id, version, device_id, device_type, occurred_at,
    latency_ms, ttft_ms, tokens_per_second, status, error_code, received_at, scope)"""

# One row back, not one per event: the count, and the ids only when some were not inserted
# (fetching thousands of rows cost the server more than the rest of the insert).
_PG_ON_CONFLICT = "ON CONFLICT (org_id, event_id, occurred_at) DO NOTHING"
_PG_INSERT_TAIL = f"""
ORDER BY u.e
{_PG_ON_CONFLICT}
RETURNING event_id)
SELECT count(*), CASE WHEN count(*) < %(n)s THEN array_agg(event_id) END FROM inserted
"""

_PG_INSERT_SESSIONS = (
    _PG_INSERT_COLUMNS
    + """
SELECT %(org_id)s, u.e, u.m, u.v, u.d, u.dt, u.t, u.l, nullif(u.tt, 0), nullif(u.tp, 0),
       CASE WHEN u.err THEN 'error' ELSE 'ok' END, nullif(u.ec, ''), now(), s.k
FROM unnest(string_to_array(%(e)s, %(sep)s), string_to_array(%(m)s, %(sep)s),
            string_to_array(%(v)s, %(sep)s), string_to_array(%(d)s, %(sep)s),
            string_to_array(%(dt)s, %(sep)s), %(t)s, %(l)s, %(tt)s, %(tp)s, %(err)s,
            string_to_array(%(ec)s, %(sep)s))
     AS u(e, m, v, d, dt, t, l, tt, tp, err, ec)
JOIN unnest(%(sm)s::text[], %(sk)s::int8[]) AS s(m, k) ON s.m = u.m"""
    + _PG_INSERT_TAIL
)

# The same with text columns as arrays, for batches _joined cannot encode.
_PG_INSERT_SESSIONS_ARRAYS = (
    _PG_INSERT_SESSIONS.replace("string_to_array(%(ec)s, %(sep)s)", "%(ec)s::text[]")
    .replace("string_to_array(%(", "(%(")
    .replace(")s, %(sep)s)", ")s::text[])")
)


def _pg_write(
    driver: psycopg.Connection[Any], cur: psycopg.Cursor[Any], sql: str, params: Any
) -> Any:
    """The batch's insert, its one result row.

    First as a plain INSERT in a savepoint: ON CONFLICT probes the key index once more per
    row before inserting (about a sixth of PostgreSQL's work here), and a batch usually
    holds no stored event. The first already stored event (a retry, or a concurrent stream
    once it commits) fails the plain INSERT; the batch is then written again with
    ON CONFLICT DO NOTHING (in a savepoint too, so that a missing partition can be
    retried by the caller)."""
    try:
        with driver.transaction():
            cur.execute(sql.replace(_PG_ON_CONFLICT, ""), params)
            return cur.fetchone()
    except psycopg.errors.UniqueViolation:
        pass
    with driver.transaction():
        cur.execute(sql, params)
        return cur.fetchone()


# ---------------------------------------------------------------------------------------
# PostgreSQL partitions of inference_sessions: one per UTC day of occurred_at

DAY_US = 86_400_000_000
# Serialises partition creation between servers: CREATE TABLE IF NOT EXISTS checks the name
# before it locks the parent, so two servers creating the same day at once could collide.
_PG_PARTITION_LOCK = 7_301_554_020
# Per database (its URL): the days (since the epoch) whose partition this process has seen
# committed. Only ever a cache: a partition missing after all is caught (insert_sessions).
_known_partitions: dict[str, set[int]] = {}


def _database_key(session: Session) -> str:
    return session.connection().engine.url.render_as_string(hide_password=True)


def partition_name(day: int) -> str:
    return SESSION_PARTITION_PREFIX + (EPOCH + timedelta(days=day)).strftime("%Y%m%d")


def partition_ddl(day: int) -> str:
    """CREATE TABLE IF NOT EXISTS for the partition of `day` (days since the epoch)."""
    start = EPOCH + timedelta(days=day)
    end = start + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF inference_sessions "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def ensure_session_partitions(session: Session, first_us: int, last_us: int) -> None:
    """PostgreSQL: make sure the partitions for every day from `first_us` to `last_us`
    (occurred_at, microseconds since the epoch) exist, in the caller's transaction.

    The usual call finds its days in the process's cache and costs a few set lookups.
    Otherwise the catalog is asked (to_regclass); days found are cached; missing ones
    are created under an advisory lock, together with the next day's, so the day's change
    at midnight finds its partition made. Creating a partition takes an ACCESS EXCLUSIVE
    lock on inference_sessions until the transaction ends, so this runs before the
    transaction writes anything (the batch's insert comes first in an ingest transaction)
    and happens about once a day per database; days created here are cached only once
    seen committed (the transaction may still roll back).
    """
    if not _is_postgres(session):
        return
    known = _known_partitions.setdefault(_database_key(session), set())
    days = range(first_us // DAY_US, last_us // DAY_US + 1)
    missing = [d for d in days if d not in known]
    if not missing:
        return
    tomorrow = int(datetime.now(UTC).timestamp() * 1_000_000) // DAY_US + 1
    if tomorrow not in known and tomorrow not in missing:
        missing.append(tomorrow)
    driver = session.connection().connection.driver_connection
    assert driver is not None
    names = {partition_name(d): d for d in missing}
    with driver.cursor() as cur:
        cur.execute(
            "SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", (list(names),)
        )
        absent = [names[n] for (n,) in cur.fetchall()]
        known.update(d for d in missing if d not in absent)
        if absent:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_PARTITION_LOCK,))
            for d in sorted(absent):
                cur.execute(partition_ddl(d))


def session_partitions(session: Session) -> list[tuple[str, datetime]]:
    """PostgreSQL: the daily partitions of inference_sessions and the day each starts,
    oldest first (empty elsewhere)."""
    if not _is_postgres(session):
        return []
    rows = session.connection().exec_driver_sql(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'inference_sessions'::regclass"
    )
    out = []
    for (name,) in rows:
        if name.startswith(SESSION_PARTITION_PREFIX):
            day = datetime.strptime(name[len(SESSION_PARTITION_PREFIX) :], "%Y%m%d")
            out.append((name, day.replace(tzinfo=UTC)))
    return sorted(out, key=lambda p: p[1])


def drop_session_partitions_before(
    session: Session, cutoff: datetime, limit: int | None = None
) -> tuple[int, int]:
    """PostgreSQL: drop the partitions whose whole day lies before `cutoff` (at most
    `limit`, oldest first); returns how many and the rows they held. Rows of the partition
    holding `cutoff` stay for delete_sessions_before. Elsewhere nothing (0, 0)."""
    dropped = rows = 0
    for name, day in session_partitions(session):
        if day + timedelta(days=1) > cutoff or (limit is not None and dropped >= limit):
            break
        conn = session.connection()
        rows += int(conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one())
        conn.exec_driver_sql(f"DROP TABLE {name}")
        dropped += 1
    return dropped, rows


def insert_sessions(session: Session, org_id: str, cols: SessionColumns) -> set[str]:
    """Store the batch (event ids unique within it); return the ids NOT inserted (already
    stored: duplicates), usually none.

    Rows go in event-id order, so concurrent batches sharing ids take their row locks in
    the same order and cannot deadlock.
    """
    if not len(cols):
        return set()
    if _is_postgres(session):
        models = sorted(set(cols.model_id))
        params: dict[str, Any] = {
            "org_id": org_id,
            "n": len(cols),
            "sep": _SEP,
            "sm": models,
            "sk": [session_scope(org_id, m) for m in models],
            "t": _TimestamptzArray(
                _binary_array(np.asarray(cols.occurred_us, np.int64) - _PG_EPOCH_US, _TIMESTAMPTZ)
            ),
            "l": _Float8Array(_binary_array(cols.latency_ms, _FLOAT8)),
            "tt": _Float8Array(_binary_array(cols.ttft_ms, _FLOAT8)),
            "tp": _Float8Array(_binary_array(cols.tokens_per_second, _FLOAT8)),
            "err": _BoolArray(_binary_array(cols.error, _BOOL)),
        }
        text = {
            "e": cols.event_id,
            "m": cols.model_id,
            "v": cols.version,
            "d": cols.device_id,
            "dt": cols.device_type,
            "ec": cols.error_code,
        }
        sql = _PG_INSERT_SESSIONS
        for name, values in text.items():
            joined = _joined(values)
            if joined is None:
                sql = _PG_INSERT_SESSIONS_ARRAYS
                params.update(text)
                break
            params[name] = joined
        driver = session.connection().connection.driver_connection
        assert driver is not None
        first, last = min(cols.occurred_us), max(cols.occurred_us)
        with driver.cursor() as cur:
            ensure_session_partitions(session, first, last)
            try:
                row = _pg_write(driver, cur, sql, params)
            except psycopg.errors.CheckViolation:
                # "no partition of relation found for row": this process believed a
                # partition existed that is gone (dropped by a prune with a shorter
                # retention, or the database was recreated). The savepoint's rollback
                # released its locks; check the catalog again and write once more.
                _known_partitions.pop(_database_key(session), None)
                ensure_session_partitions(session, first, last)
                row = _pg_write(driver, cur, sql, params)
        assert row is not None
        return set() if row[0] == len(cols) else set(cols.event_id).difference(row[1] or ())
    now = datetime.now(UTC)
    order = sorted(range(len(cols)), key=cols.event_id.__getitem__)
    scopes = {m: session_scope(org_id, m) for m in set(cols.model_id)}
    rows = [
        {
            "org_id": org_id,
            "event_id": cols.event_id[i],
            "model_id": cols.model_id[i],
            "scope": scopes[cols.model_id[i]],
            "version": cols.version[i],
            "device_id": cols.device_id[i],
            "device_type": cols.device_type[i],
            "occurred_at": from_micros(cols.occurred_us[i]),
            "latency_ms": float(cols.latency_ms[i]),
            "ttft_ms": float(cols.ttft_ms[i]) or None,
            "tokens_per_second": float(cols.tokens_per_second[i]) or None,
            "status": "error" if cols.error[i] else "ok",
            "error_code": cols.error_code[i] or None,
            "received_at": now,
        }
        for i in order
    ]
    table = Base.metadata.tables[InferenceSession.__tablename__]
    stmt = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=["org_id", "event_id", "occurred_at"])
        .returning(table.c.event_id)
    )
    return set(cols.event_id).difference(session.scalars(stmt, rows))


@dataclass(frozen=True)
class RawAggregate:
    """Raw sessions summarised like a rollup row, computed by the database."""

    session_count: int
    error_count: int
    latency_sum: float
    ttft_count: int
    ttft_sum: float
    tps_count: int
    tps_sum: float
    # Per metric ("latency", "ttft", "tps"): (bucket key, count); key None counts zeros.
    buckets: dict[str, list[tuple[int | None, int]]]


def _aggregate(
    totals: Sequence[Any], buckets: dict[str, list[tuple[int | None, int]]]
) -> RawAggregate:
    """A RawAggregate from the totals both scans read (sessions, errors, latency sum, ttft
    count and sum, tps count and sum; sums are NULL over no rows) and the buckets."""
    return RawAggregate(
        session_count=int(totals[0]),
        error_count=int(totals[1]),
        latency_sum=float(totals[2] or 0.0),
        ttft_count=int(totals[3]),
        ttft_sum=float(totals[4] or 0.0),
        tps_count=int(totals[5]),
        tps_sum=float(totals[6] or 0.0),
        buckets=buckets,
    )


def raw_aggregate(
    session: Session,
    org_id: str,
    model_id: str,
    ranges: Sequence[tuple[datetime, datetime]],
    version: str | None,
    device_type: str | None,
    log_gamma: float,
) -> RawAggregate:
    """Counts, sums and log-bucket histograms (bucket ceil(ln(x) / log_gamma)) of the
    sessions in the [start, end) ranges; the rows never leave the database."""
    empty = RawAggregate(0, 0, 0.0, 0, 0.0, 0, 0.0, {"latency": [], "ttft": [], "tps": []})
    if not ranges:
        return empty
    if _is_postgres(session):
        sql, params = _raw_sql_pg(org_id, model_id, ranges, version, device_type, log_gamma)
        driver = session.connection().connection.driver_connection
        assert driver is not None
        with driver.pipeline(), driver.cursor() as cur:
            cur.execute(_PG_EDGE_PLAN)
            cur.execute(sql, params, prepare=False)
            rows = cur.fetchall()
            cur.execute(_PG_EDGE_RESET)
        return _parse_raw_pg(rows)
    S = InferenceSession
    conds = [
        S.scope == session_scope(org_id, model_id),
        S.org_id == org_id,
        S.model_id == model_id,
        or_(*(and_(S.occurred_at >= a, S.occurred_at < b) for a, b in ranges)),
    ]
    if version is not None:
        conds.append(S.version == version)
    if device_type is not None:
        conds.append(S.device_type == device_type)
    totals = session.execute(
        select(
            func.count(),
            func.count().filter(S.status == "error"),
            func.coalesce(func.sum(S.latency_ms), 0.0),
            func.count(S.ttft_ms),
            func.coalesce(func.sum(S.ttft_ms), 0.0),
            func.count(S.tokens_per_second),
            func.coalesce(func.sum(S.tokens_per_second), 0.0),
        ).where(*conds)
    ).one()
    if not totals[0]:
        return empty
    parts = []
    for label, col in (
        ("latency", S.latency_ms),
        ("ttft", S.ttft_ms),
        ("tps", S.tokens_per_second),
    ):
        key = case(
            (
                col > 0,
                sql_cast(func.ceil(func.ln(col) / bindparam(f"lg_{label}", log_gamma)), Integer),
            ),
            else_=null(),
        )
        sub = select(key.label("k")).where(*conds, col.is_not(None)).subquery()
        parts.append(
            select(literal(label).label("metric"), sub.c.k, func.count()).group_by(sub.c.k)
        )
    buckets: dict[str, list[tuple[int | None, int]]] = {"latency": [], "ttft": [], "tps": []}
    for metric, k, n in session.execute(union_all(*parts)):
        buckets[metric].append((None if k is None else int(k), int(n)))
    return _aggregate(totals, buckets)


_PG_RAW_SCAN = """
SELECT status, latency_ms, ttft_ms, tokens_per_second FROM inference_sessions
WHERE scope = %(scope)s AND org_id = %(org)s AND model_id = %(model)s
  AND occurred_at >= %(a{i})s AND occurred_at < %(b{i})s {filters}"""

_PG_RAW_AGGREGATE = """
SELECT grouping(kl, kt, kp), kl, kt, kp, count(*), count(*) FILTER (WHERE status = 'error'),
       coalesce(sum(latency_ms), 0), count(ttft_ms), coalesce(sum(ttft_ms), 0),
       count(tokens_per_second), coalesce(sum(tokens_per_second), 0)
FROM (
    SELECT CAST(ceil(ln(nullif(latency_ms, 0)) / %(lg)s) AS integer) AS kl,
           CAST(ceil(ln(ttft_ms) / %(lg)s) AS integer) AS kt,
           CAST(ceil(ln(tokens_per_second) / %(lg)s) AS integer) AS kp,
           status, latency_ms, ttft_ms, tokens_per_second
    FROM ({scans}) AS raw
) AS s
GROUP BY GROUPING SETS ((), (kl), (kt), (kp))
"""


_PG_EDGE_SETTINGS = {"enable_seqscan": "off", "max_parallel_workers_per_gather": "0", "jit": "off"}
# The edge ranges are the partial hours at a window's edges, so an index range scan is
# always the plan; the planner does not know that. It multiplies selectivities as if model
# and time were independent, so the newest hour of a busy table, full of other models'
# sessions, looks huge: it picks a parallel sequential scan and JIT-compiles it (seconds
# instead of milliseconds). Hence the edge query is never prepared (a generic plan cannot
# see the ranges at all) and runs with these settings, set and reset around it.
_PG_EDGE_PLAN = "SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in _PG_EDGE_SETTINGS.items()
)
_PG_EDGE_RESET = (
    "SELECT set_config(name, reset_val, true) FROM pg_settings WHERE name IN ("
    + ", ".join(f"'{name}'" for name in _PG_EDGE_SETTINGS)
    + ")"
)


def _raw_sql_pg(
    org_id: str,
    model_id: str,
    ranges: Sequence[tuple[datetime, datetime]],
    version: str | None,
    device_type: str | None,
    log_gamma: float,
) -> tuple[str, dict[str, Any]]:
    """PostgreSQL: totals and all three histograms in one pass (GROUPING SETS) over one
    index range scan per range; run it with _PG_EDGE_PLAN (see there)."""
    filters = ""
    params: dict[str, Any] = {
        "scope": session_scope(org_id, model_id),
        "org": org_id,
        "model": model_id,
        "lg": log_gamma,
    }
    if version is not None:
        filters += " AND version = %(version)s"
        params["version"] = version
    if device_type is not None:
        filters += " AND device_type = %(device_type)s"
        params["device_type"] = device_type
    scans = []
    for i, (a, b) in enumerate(ranges):
        params[f"a{i}"], params[f"b{i}"] = a, b
        scans.append(_PG_RAW_SCAN.format(i=i, filters=filters))
    return _PG_RAW_AGGREGATE.format(scans=" UNION ALL ".join(scans)), params


def _parse_raw_pg(rows: Iterable[Sequence[Any]]) -> RawAggregate:
    buckets: dict[str, list[tuple[int | None, int]]] = {"latency": [], "ttft": [], "tps": []}
    totals: Sequence[Any] = (0, 0, 0.0, 0, 0.0, 0, 0.0)
    for g, kl, kt, kp, n, *rest in rows:
        if g == 0b111:
            totals = (n, *rest)
        elif g == 0b011:
            buckets["latency"].append((kl, int(n)))
        elif g == 0b101 and kt is not None:
            buckets["ttft"].append((int(kt), int(n)))
        elif g == 0b110 and kp is not None:
            buckets["tps"].append((int(kp), int(n)))
    return _aggregate(totals, buckets)


# ---------------------------------------------------------------------------------------
# rollups

RollupKey = tuple[str, str, str, datetime]  # model_id, version, device_type, period start
Range = tuple[datetime, datetime]  # [start, end)


@dataclass
class RollupValues:
    session_count: int = 0
    error_count: int = 0
    latency_sum: float = 0.0
    latency_sketch: bytes = b""
    ttft_count: int = 0
    ttft_sum: float = 0.0
    ttft_sketch: bytes = b""
    tps_count: int = 0
    tps_sum: float = 0.0
    tps_sketch: bytes = b""


_VALUE_NAMES = [
    "session_count",
    "error_count",
    "latency_sum",
    "latency_sketch",
    "ttft_count",
    "ttft_sum",
    "ttft_sketch",
    "tps_count",
    "tps_sum",
    "tps_sketch",
]


def _values(row: Row[Any] | Sequence[Any], offset: int = 0) -> RollupValues:
    return RollupValues(*(row[offset + i] for i in range(len(_VALUE_NAMES))))


class RollupTable:
    """One rollup granularity: its table, the column holding the period start, and the
    statements over it (built once)."""

    def __init__(self, table: Table, period: str) -> None:
        self.table, self.period = table, period
        c = table.c
        self.keys = [c.model_id, c.version, c.device_type, c[period]]
        self.values = [c[n] for n in _VALUE_NAMES]
        # Executemany UPDATE by primary key (Core: compiled once, cached).
        self.update = (
            update(table)
            .where(
                *(
                    c[name] == bindparam(f"k_{name}")
                    for name in ("org_id", "model_id", "version", "device_type", period)
                )
            )
            .values({n: bindparam(n) for n in _VALUE_NAMES})
        )
        name, cols, keys = table.name, ", ".join(_VALUE_NAMES), _PG_KEYS
        self.pg_ensure = f"""
INSERT INTO {name} (org_id, model_id, version, device_type, {period}, {cols})
SELECT %(org)s, u.m, u.v, u.dt, u.h, 0, 0, 0, '', 0, 0, '', 0, 0, ''
FROM {keys} AS u(m, v, dt, h)
ORDER BY u.m, u.v, u.dt, u.h
ON CONFLICT DO NOTHING"""
        self.pg_lock = f"""
SELECT r.model_id, r.version, r.device_type, r.{period}, {", ".join("r." + n for n in _VALUE_NAMES)}
FROM {name} AS r
JOIN {keys} AS u(m, v, dt, h)
  ON r.model_id = u.m AND r.version = u.v AND r.device_type = u.dt AND r.{period} = u.h
WHERE r.org_id = %(org)s
ORDER BY r.model_id, r.version, r.device_type, r.{period}
FOR UPDATE OF r"""
        self.pg_update = f"""
UPDATE {name} AS r
SET {", ".join(f"{n} = u.{n}" for n in _VALUE_NAMES)}
FROM unnest(%(m)b::text[], %(v)b::text[], %(dt)b::text[], %(h)b::timestamptz[],
            %(session_count)b::int8[], %(error_count)b::int8[], %(latency_sum)b::float8[],
            %(latency_sketch)b::bytea[], %(ttft_count)b::int8[], %(ttft_sum)b::float8[],
            %(ttft_sketch)b::bytea[], %(tps_count)b::int8[], %(tps_sum)b::float8[],
            %(tps_sketch)b::bytea[])
     AS u(m, v, dt, h, {cols})
WHERE r.org_id = %(org)s AND r.model_id = u.m AND r.version = u.v
  AND r.device_type = u.dt AND r.{period} = u.h"""
        self.pg_select = (
            f"SELECT {cols} FROM {name} WHERE org_id = %s AND model_id = %s AND version = %s"
            f" AND device_type = %s AND {period} >= %s AND {period} < %s"
        )


_PG_KEYS = "unnest(%(m)b::text[], %(v)b::text[], %(dt)b::text[], %(h)b::timestamptz[])"
HOURLY = RollupTable(Base.metadata.tables[InferenceRollup.__tablename__], "hour")
TEN_MINUTES = RollupTable(Base.metadata.tables[InferenceRollup10m.__tablename__], "bucket")


def _pg_keys(org_id: str, keys: Sequence[RollupKey]) -> dict[str, Any]:
    return {
        "org": org_id,
        "m": [k[0] for k in keys],
        "v": [k[1] for k in keys],
        "dt": [k[2] for k in keys],
        "h": [k[3] for k in keys],
    }


def lock_rollups(
    session: Session, org_id: str, keys: Sequence[RollupKey], table: RollupTable = HOURLY
) -> dict[RollupKey, RollupValues]:
    """Create missing rollup rows (empty), then lock and return all of `keys`.

    Both steps go in key order. Creating first means every transaction's row locks are
    taken on committed or own rows, in one global order: no deadlocks between batches
    (callers lock HOURLY before TEN_MINUTES). On SQLite the BEGIN IMMEDIATE write lock
    already serialises writers.
    """
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    out: dict[RollupKey, RollupValues] = {}
    if _is_postgres(session):
        driver = session.connection().connection.driver_connection
        assert driver is not None
        params = _pg_keys(org_id, ordered)
        with driver.pipeline(), driver.cursor() as cur:
            cur.execute(table.pg_ensure, params)
            cur.execute(table.pg_lock, params, binary=True)
            rows = cur.fetchall()
        for r in rows:
            out[(r[0], r[1], r[2], r[3])] = _values(r, 4)
        return out
    empty = {n: getattr(RollupValues(), n) for n in _VALUE_NAMES}
    session.execute(
        dialects.insert(session, table.table).on_conflict_do_nothing(),
        [
            {
                "org_id": org_id,
                "model_id": m,
                "version": v,
                "device_type": dt,
                table.period: h,
                **empty,
            }
            for m, v, dt, h in ordered
        ],
    )
    result = session.execute(
        select(*table.keys, *table.values)
        .where(table.table.c.org_id == org_id, tuple_(*table.keys).in_(ordered))
        .order_by(*table.keys)
        .with_for_update()
    )
    for r in result:
        period = cast(datetime, r[3])
        out[(str(r[0]), str(r[1]), str(r[2]), period)] = _values(r, 4)
    return out


def update_rollups(
    session: Session,
    org_id: str,
    values: dict[RollupKey, RollupValues],
    table: RollupTable = HOURLY,
) -> None:
    """Overwrite locked rollup rows (see lock_rollups) with merged values."""
    if not values:
        return
    items = sorted(values.items())
    if _is_postgres(session):
        params = _pg_keys(org_id, [k for k, _ in items])
        for name in _VALUE_NAMES:
            params[name] = [getattr(v, name) for _, v in items]
        driver = session.connection().connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur:
            cur.execute(table.pg_update, params)
        return
    params_list = [
        {
            "k_org_id": org_id,
            "k_model_id": m,
            "k_version": v,
            "k_device_type": dt,
            f"k_{table.period}": h,
            **{n: getattr(val, n) for n in _VALUE_NAMES},
        }
        for (m, v, dt, h), val in items
    ]
    session.execute(table.update, params_list)


def rollups(
    session: Session,
    org_id: str,
    model_id: str,
    version: str,
    device_type: str,
    ranges: Sequence[Range],
    table: RollupTable = HOURLY,
) -> list[RollupValues]:
    """Rollup rows of one (version, device_type) level whose period starts in `ranges`."""
    out: list[RollupValues] = []
    for start, end in ranges:
        if _is_postgres(session):
            # A month is ~720 rows of sketches: binary results skip bytea's hex encoding
            # and SQLAlchemy's row processing, a 3-5x difference at this size.
            driver = session.connection().connection.driver_connection
            assert driver is not None
            with driver.cursor(binary=True) as cur:
                cur.execute(table.pg_select, (org_id, model_id, version, device_type, start, end))
                out += [_values(r) for r in cur.fetchall()]
            continue
        c = table.table.c
        rows = session.execute(
            select(*table.values).where(
                c.org_id == org_id,
                c.model_id == model_id,
                c.version == version,
                c.device_type == device_type,
                c[table.period] >= start,
                c[table.period] < end,
            )
        )
        out += [_values(r) for r in rows]
    return out


@dataclass(frozen=True)
class WindowQuery:
    """What a window query reads: rollup rows of one level (hourly for whole hours,
    10-minute ones for whole 10 minutes at the edges), raw sessions for what is left at
    the edges (under 10 minutes each), and the org's fleet."""

    org_id: str
    model_id: str
    version: str | None  # None: every version
    device_type: str | None  # None: every device type
    hours: Sequence[Range]
    ten_minutes: Sequence[Range]
    raw: Sequence[Range]
    online_since: datetime
    log_gamma: float


@dataclass(frozen=True)
class WindowData:
    model_exists: bool
    rollups: list[RollupValues]
    raw: RawAggregate
    fleet: FleetCounts


_PG_MODEL_EXISTS = "SELECT EXISTS (SELECT 1 FROM models WHERE org_id = %s AND model_id = %s)"
_PG_FLEET = """
SELECT count(*),
       count(*) FILTER (WHERE last_seen_at >= %(since)s AND health_status = 'healthy'),
       count(*) FILTER (WHERE last_seen_at >= %(since)s
                          AND health_status IN ('degraded', 'unhealthy')),
       count(*) FILTER (WHERE last_seen_at < %(since)s)
FROM devices WHERE org_id = %(org)s
"""


def window(session: Session, q: WindowQuery) -> WindowData:
    """Everything a window query needs. On PostgreSQL the statements go out in one
    pipeline (one round trip); elsewhere one after the other."""
    level = (q.version or "*", q.device_type or "*")
    if not _is_postgres(session):
        return WindowData(
            model_exists(session, q.org_id, q.model_id),
            rollups(session, q.org_id, q.model_id, *level, q.hours, HOURLY)
            + rollups(session, q.org_id, q.model_id, *level, q.ten_minutes, TEN_MINUTES),
            raw_aggregate(
                session, q.org_id, q.model_id, q.raw, q.version, q.device_type, q.log_gamma
            ),
            fleet_counts(session, q.org_id, q.online_since),
        )
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.pipeline():
        exists_cur = driver.cursor()
        exists_cur.execute(_PG_MODEL_EXISTS, (q.org_id, q.model_id))
        rollup_curs = []
        for table, ranges in ((HOURLY, q.hours), (TEN_MINUTES, q.ten_minutes)):
            for start, end in ranges:
                cur = driver.cursor(binary=True)
                cur.execute(table.pg_select, (q.org_id, q.model_id, *level, start, end))
                rollup_curs.append(cur)
        fleet_cur = driver.cursor()
        fleet_cur.execute(_PG_FLEET, {"org": q.org_id, "since": q.online_since})
        raw_cur = driver.cursor()
        raw_rows: list[Any] = []
        if q.raw:
            sql, params = _raw_sql_pg(
                q.org_id, q.model_id, q.raw, q.version, q.device_type, q.log_gamma
            )
            raw_cur.execute(_PG_EDGE_PLAN)
            raw_cur.execute(sql, params, prepare=False)
            raw_rows = raw_cur.fetchall()
            raw_cur.execute(_PG_EDGE_RESET)
        exists_row = exists_cur.fetchone()
        rollup_rows = [r for cur in rollup_curs for r in cur.fetchall()]
        fleet_row = fleet_cur.fetchone()
    for cur in (exists_cur, fleet_cur, raw_cur, *rollup_curs):
        cur.close()
    assert exists_row is not None and fleet_row is not None
    return WindowData(
        bool(exists_row[0]),
        [_values(r) for r in rollup_rows],
        _parse_raw_pg(raw_rows),
        FleetCounts(*(int(x or 0) for x in fleet_row)),
    )


# ---------------------------------------------------------------------------------------
# retention


def expired_models(session: Session, cutoff: datetime) -> list[tuple[str, str]]:
    """(org_id, model_id) pairs with sessions before `cutoff` (every stored session is
    counted in a rollup row of its model and hour, so the small rollup table answers)."""
    rows = session.execute(
        select(InferenceRollup.org_id, InferenceRollup.model_id)
        .where(InferenceRollup.hour < cutoff)
        .distinct()
    )
    return [(o, m) for o, m in rows]


def delete_sessions_before(session: Session, org_id: str, model_id: str, cutoff: datetime) -> int:
    result = session.execute(
        delete(InferenceSession).where(
            InferenceSession.scope == session_scope(org_id, model_id),
            InferenceSession.org_id == org_id,
            InferenceSession.model_id == model_id,
            InferenceSession.occurred_at < cutoff,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delete_rollups_before(session: Session, cutoff: datetime) -> int:
    """Rollup rows (both granularities) whose period ended by `cutoff`."""
    deleted = 0
    for table, length in ((HOURLY, timedelta(hours=1)), (TEN_MINUTES, timedelta(minutes=10))):
        column = table.table.c[table.period]
        result = session.execute(delete(table.table).where(column <= cutoff - length))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


# ---------------------------------------------------------------------------------------
# devices


def upsert_device(
    session: Session, org_id: str, device_id: str, fields: dict[str, str], now: datetime
) -> tuple[Device, bool]:
    """Register the device or update it; empty strings in `fields` keep stored values.

    Returns the stored device and whether this call registered it.
    """
    inserted = session.execute(
        dialects.insert(session, Device)
        .values(
            id=new_id(),
            org_id=org_id,
            device_id=device_id,
            last_seen_at=now,
            created_at=now,
            **{k: fields.get(k, "") for k in _DEVICE_FIELDS},
        )
        .on_conflict_do_nothing(index_elements=["org_id", "device_id"])
        .returning(Device.id)
    ).scalar_one_or_none()
    if inserted is None:
        changes: dict[str, Any] = {k: v for k, v in fields.items() if v}
        changes["last_seen_at"] = now
        session.execute(
            update(Device)
            .where(Device.org_id == org_id, Device.device_id == device_id)
            .values(**changes)
        )
    device = session.scalars(
        select(Device)
        .where(Device.org_id == org_id, Device.device_id == device_id)
        .execution_options(populate_existing=True)
    ).one()
    return device, inserted is not None


_DEVICE_FIELDS = ("device_type", "platform", "os_version", "runtime_version", "health_status")


@dataclass(frozen=True)
class FleetCounts:
    total: int
    healthy: int
    degraded: int
    offline: int


def fleet_counts(session: Session, org_id: str, online_since: datetime) -> FleetCounts:
    """Devices of the org by health; online means last seen at or after `online_since`."""
    online = Device.last_seen_at >= online_since
    row = session.execute(
        select(
            func.count(),
            func.count().filter(online, Device.health_status == "healthy"),
            func.count().filter(online, Device.health_status.in_(("degraded", "unhealthy"))),
            func.count().filter(Device.last_seen_at < online_since),
        ).where(Device.org_id == org_id)
    ).one()
    return FleetCounts(*(int(x or 0) for x in row))


# ---------------------------------------------------------------------------------------
# training updates


@dataclass(frozen=True)
class TrainingRow:
    event_id: str
    model_id: str
    version: str
    device_id: str
    occurred_us: int
    sample_count: int
    metrics: dict[str, float]


def insert_training_updates(session: Session, org_id: str, rows: Sequence[TrainingRow]) -> set[str]:
    """Store the updates (event ids unique within the batch); return the ids inserted."""
    if not rows:
        return set()
    now = datetime.now(UTC)
    params = [
        {
            "id": new_id(),
            "org_id": org_id,
            "event_id": r.event_id,
            "model_id": r.model_id,
            "version": r.version,
            "device_id": r.device_id,
            "sample_count": r.sample_count,
            "metrics": r.metrics,
            "occurred_at": from_micros(r.occurred_us),
            "received_at": now,
        }
        for r in sorted(rows, key=lambda r: r.event_id)
    ]
    stmt = (
        dialects.insert(session, TrainingUpdate)
        .on_conflict_do_nothing(index_elements=["org_id", "event_id"])
        .returning(TrainingUpdate.event_id)
    )
    return set(session.scalars(stmt, params))


@dataclass(frozen=True)
class VersionTotals:
    version: str
    update_count: int
    sample_count: int
    device_count: int
    latest_at: datetime
    latest_metrics: dict[str, float]


def training_totals(session: Session, org_id: str, model_id: str) -> list[VersionTotals]:
    """Per version of the model: counts and the metrics of the newest update; newest first."""
    T = TrainingUpdate
    scope = (T.org_id == org_id, T.model_id == model_id)
    totals = session.execute(
        select(
            T.version,
            func.count(),
            func.coalesce(func.sum(T.sample_count), 0),
            func.count(T.device_id.distinct()),
        )
        .where(*scope)
        .group_by(T.version)
    ).all()
    ranked = (
        select(
            T.version,
            T.metrics,
            T.occurred_at,
            func.row_number()
            .over(
                partition_by=T.version,
                order_by=(T.occurred_at.desc(), T.received_at.desc(), T.event_id.desc()),
            )
            .label("rn"),
        )
        .where(*scope)
        .subquery()
    )
    latest = {
        v: (at, metrics)
        for v, metrics, at in session.execute(
            select(ranked.c.version, ranked.c.metrics, ranked.c.occurred_at).where(ranked.c.rn == 1)
        )
    }
    out = [
        VersionTotals(v, int(n), int(samples), int(devices), latest[v][0], dict(latest[v][1] or {}))
        for v, n, samples, devices in totals
    ]
    out.sort(key=lambda t: (t.latest_at, t.version), reverse=True)
    return out


@dataclass(frozen=True)
class UpdateTotals:
    update_count: int
    sample_count: int
    device_count: int


def _version_scope(org_id: str, model_id: str, version: str) -> tuple[Any, ...]:
    T = TrainingUpdate
    return (T.org_id == org_id, T.model_id == model_id, T.version == version)


def version_update_totals(
    session: Session, org_id: str, model_id: str, version: str
) -> UpdateTotals:
    """Counts over every update of one version."""
    T = TrainingUpdate
    n, samples, devices = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(T.sample_count), 0),
            func.count(T.device_id.distinct()),
        ).where(*_version_scope(org_id, model_id, version))
    ).one()
    return UpdateTotals(int(n), int(samples), int(devices))


def version_update_metrics(
    session: Session, org_id: str, model_id: str, version: str
) -> list[dict[str, float]]:
    """The metrics of every update of one version (for exact percentiles)."""
    T = TrainingUpdate
    rows = session.scalars(select(T.metrics).where(*_version_scope(org_id, model_id, version)))
    return [dict(m or {}) for m in rows]


@dataclass(frozen=True)
class DeviceTotals:
    device_id: str
    update_count: int
    sample_count: int
    latest_metrics: dict[str, float]


def version_device_page(
    session: Session, org_id: str, model_id: str, version: str, offset: int, limit: int
) -> list[DeviceTotals]:
    """Devices `offset` to `offset + limit` (by device_id) that sent updates of one version:
    their counts and the metrics of their newest update (by occur time, then arrival, then
    event id). One statement: the page is grouped, ordered and cut in the database."""
    T = TrainingUpdate
    scope = _version_scope(org_id, model_id, version)
    page = (
        select(
            T.device_id.label("device_id"),
            func.count().label("n"),
            func.coalesce(func.sum(T.sample_count), 0).label("samples"),
        )
        .where(*scope)
        .group_by(T.device_id)
        .order_by(T.device_id)
        .offset(offset)
        .limit(limit)
        .subquery()
    )
    ranked = (
        select(
            T.device_id.label("device_id"),
            T.metrics.label("metrics"),
            func.row_number()
            .over(
                partition_by=T.device_id,
                order_by=(T.occurred_at.desc(), T.received_at.desc(), T.event_id.desc()),
            )
            .label("rn"),
        )
        .where(*scope, T.device_id.in_(select(page.c.device_id)))
        .subquery()
    )
    rows = session.execute(
        select(page.c.device_id, page.c.n, page.c.samples, ranked.c.metrics)
        .join(ranked, and_(ranked.c.device_id == page.c.device_id, ranked.c.rn == 1))
        .order_by(page.c.device_id)
    )
    return [DeviceTotals(d, int(n), int(s), dict(m or {})) for d, n, s, m in rows]


def session_count(session: Session, org_id: str) -> int:
    """Raw sessions stored for the org (tests and tooling)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(InferenceSession)
            .where(InferenceSession.org_id == org_id)
        )
        or 0
    )
