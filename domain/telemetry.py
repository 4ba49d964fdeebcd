"""Fleet telemetry: ingesting batches of events, heartbeats, and the aggregate queries.

Ingestion validates each event on its own (a bad event is rejected with its field and
reason, the rest of the batch is kept), resolves model names against the org's models and
versions, writes the batch in one statement and, in the same transaction, merges the
accepted events into hourly rollups (storage.orm.InferenceRollup) so window queries read
at most one rollup row per hour plus the raw rows of partial hours at the window's edges.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from domain import names
from domain.errors import InvalidArgument, NotFound, Violations
from domain.paging import page_of
from domain.sketch import LOG_GAMMA, RELATIVE_ACCURACY, Sketch
from storage.orm import Device
from storage.repos import telemetry as repo
from storage.repos.telemetry import FleetCounts, RollupKey, RollupValues, SessionColumns

MAX_BATCH = 1000  # events per message, the contract's limit
# Events one ingest call (one transaction) takes: the server writes consecutive batches of
# a stream that are waiting for it together (server/telemetry_service.py).
MAX_GROUP = 8 * MAX_BATCH
MAX_EVENT_ID = 128
MAX_DEVICE_ID = 128
MAX_DEVICE_TYPE = 128
MAX_DEVICE_FIELD = 64
MAX_ERROR_CODE = 128
MAX_LATENCY_MS = 86_400_000.0  # one day
MAX_TOKENS_PER_SECOND = 10_000_000.0
MAX_SAMPLE_COUNT = 2**31 - 1
MAX_METRICS = 64
MAX_METRIC_NAME = 64
# Rejections listed in one response; rejected_count says how many there were.
MAX_LISTED_REJECTIONS = 1000

FUTURE_SKEW = timedelta(minutes=5)
DEFAULT_RETENTION = timedelta(days=30)
# A window may start this much before the retention horizon (the client's "now" lags).
WINDOW_GRACE = timedelta(minutes=5)
ONLINE_WITHIN = timedelta(minutes=5)
ALL = "*"  # rollup rows summed over every version / device type

_US = 1_000_000
_HOUR_US = 3600 * _US
_TEN_MINUTES_US = 600 * _US
_QUANTILES = (0.5, 0.9, 0.95, 0.99)
HEALTH_VALUES = ("healthy", "degraded", "unhealthy")


def now_utc() -> datetime:
    return datetime.now(UTC)


def to_micros(t: datetime) -> int:
    delta = t - repo.EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _retention_text(retention: timedelta) -> str:
    days = retention / timedelta(days=1)
    return f"{days:g} days" if days != 1 else "1 day"


# ---------------------------------------------------------------------------------------
# ingestion results


@dataclass(frozen=True)
class Rejection:
    event_id: str
    index: int
    field: str
    reason: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)


class _Resolver:
    """Model names of a batch -> model ids, checked against the org's models and versions."""

    def __init__(self) -> None:
        self.parsed: dict[str, str | None] = {}

    def model_id(self, name: str) -> str | None:
        """The model id of `models/{id}`, or None when malformed."""
        if name in self.parsed:
            return self.parsed[name]
        model_id: str | None = None
        prefix, _, rest = name.partition("/")
        if prefix == "models" and "/" not in rest and names.model_id_problem(rest) is None:
            model_id = rest
        self.parsed[name] = model_id
        return model_id


_MODEL_FORMAT = "must be a resource name of the form models/{model}"


def _text_problem(value: str, limit: int, required: bool) -> str | None:
    if not value:
        return "is required" if required else None
    if len(value) > limit:
        return f"must be at most {limit} characters (got {len(value)})"
    if not value.isprintable():
        return "must not contain control characters"
    return None


def _time_problem(occur_us: int | None, now_us: int, oldest_us: int, retention: str) -> str | None:
    if occur_us is None:
        return "is required"
    if occur_us > now_us + int(FUTURE_SKEW.total_seconds()) * _US:
        return "is more than 5 minutes in the future"
    if occur_us < oldest_us:
        return f"is older than the retention period ({retention})"
    return None


def _number_problem(value: float, limit: float) -> str | None:
    """Latency-like values: finite, >= 0, <= limit (0 may mean "not reported")."""
    if not math.isfinite(value):
        return "must be a finite number"
    if value < 0:
        return "must not be negative"
    if value > limit:
        return f"must be at most {limit:,.0f}"
    return None


def _reject(out: IngestResult, event_id: str, index: int, fld: str, reason: str) -> None:
    out.rejected.append(Rejection(event_id, index, fld, reason))


def _dedupe(ids: Sequence[str], keep: list[int]) -> tuple[list[int], int]:
    """Positions in `keep` whose event id is the first of its kind; number dropped."""
    seen: set[str] = set()
    first: list[int] = []
    for i in keep:
        if ids[i] in seen:
            continue
        seen.add(ids[i])
        first.append(i)
    return first, len(keep) - len(first)


# ---------------------------------------------------------------------------------------
# inference sessions


@dataclass(slots=True)
class SessionEvent:
    """One inference session as a device reported it."""

    event_id: str
    model: str  # resource name, models/{model}
    version_id: str
    device_id: str
    device_type: str
    occur_us: int | None  # microseconds since the epoch; None when not given
    latency_ms: float
    ttft_ms: float = 0.0  # 0: not reported
    tokens_per_second: float = 0.0  # 0: not reported
    error: bool = False
    error_code: str = ""


def _identity_problem(
    event_id: str, model: str, version_id: str, device_id: str, r: _Resolver
) -> tuple[str, str] | None:
    """What is wrong with the fields every event carries (session or training update)."""
    p = _text_problem(event_id, MAX_EVENT_ID, True)
    if p:
        return "event_id", p
    if not model:
        return "model", "is required"
    if r.model_id(model) is None:
        return "model", _MODEL_FORMAT
    if not version_id:
        return "version_id", "is required"
    if names.version_id_problem(version_id):
        return "version_id", "is not a valid version string"
    p = _text_problem(device_id, MAX_DEVICE_ID, True)
    if p:
        return "device_id", p
    return None


def _session_problem(
    e: SessionEvent, r: _Resolver, now_us: int, oldest_us: int, retention: str
) -> tuple[str, str] | None:
    identity = _identity_problem(e.event_id, e.model, e.version_id, e.device_id, r)
    if identity:
        return identity
    p = _text_problem(e.device_type, MAX_DEVICE_TYPE, False)
    if p:
        return "device_type", p
    if e.device_type == ALL:
        return "device_type", f"{ALL!r} is reserved"
    p = _time_problem(e.occur_us, now_us, oldest_us, retention)
    if p:
        return "occur_time", p
    p = _number_problem(e.latency_ms, MAX_LATENCY_MS)
    if p:
        return "latency_ms", p
    p = _number_problem(e.ttft_ms, MAX_LATENCY_MS)
    if p:
        return "time_to_first_token_ms", p
    p = _number_problem(e.tokens_per_second, MAX_TOKENS_PER_SECOND)
    if p:
        return "tokens_per_second", p
    if len(e.error_code) > MAX_ERROR_CODE:
        return "error_code", f"must be at most {MAX_ERROR_CODE} characters"
    return None


def _references_problem(
    model_id: str, version: str, model_name: str, models: dict[str, set[str]]
) -> tuple[str, str] | None:
    if model_id not in models:
        return "model", f"model {model_name!r} not found"
    if version not in models[model_id]:
        return "version_id", f"version {version!r} of {model_name} not found"
    return None


@dataclass(slots=True)
class SessionBatch:
    """Inference sessions as devices reported them, column by column: the server fills the
    lists straight from the protobuf messages, and a batch that is entirely valid (the
    common case) is checked a column at a time instead of an event at a time."""

    event_id: list[str]
    model: list[str]  # resource names, models/{model}
    version_id: list[str]
    device_id: list[str]
    device_type: list[str]
    occur_us: list[int | None]  # microseconds since the epoch; None when not given
    latency_ms: list[float]
    ttft_ms: list[float]  # 0: not reported
    tokens_per_second: list[float]  # 0: not reported
    error: list[bool]
    error_code: list[str]

    def __len__(self) -> int:
        return len(self.event_id)

    def event(self, i: int) -> SessionEvent:
        return SessionEvent(
            self.event_id[i],
            self.model[i],
            self.version_id[i],
            self.device_id[i],
            self.device_type[i],
            self.occur_us[i],
            self.latency_ms[i],
            self.ttft_ms[i],
            self.tokens_per_second[i],
            self.error[i],
            self.error_code[i],
        )

    @classmethod
    def of(cls, events: Sequence[SessionEvent]) -> SessionBatch:
        return cls(
            [e.event_id for e in events],
            [e.model for e in events],
            [e.version_id for e in events],
            [e.device_id for e in events],
            [e.device_type for e in events],
            [e.occur_us for e in events],
            [e.latency_ms for e in events],
            [e.ttft_ms for e in events],
            [e.tokens_per_second for e in events],
            [e.error for e in events],
            [e.error_code for e in events],
        )


def _in_range(values: npt.NDArray[np.float64], limit: float) -> bool:
    """Every value within [0, limit] (false for NaN)."""
    return bool(((values >= 0.0) & (values <= limit)).all())


def _texts_ok(values: list[str], limit: int) -> bool:
    """Every value non-empty, at most `limit` characters, printable."""
    return (
        min(map(len, values)) > 0
        and max(map(len, values)) <= limit
        and "".join(values).isprintable()  # printable is a property of each character
    )


def ingest_sessions(
    session: Session,
    org_id: str,
    batch: SessionBatch,
    first_index: int,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> IngestResult:
    """Validate, store and roll up one batch (or several consecutive batches of a stream);
    `first_index` numbers its events in the stream. Runs in one transaction."""
    n = len(batch)
    if n > MAX_GROUP:
        raise InvalidArgument.field(
            "events", f"one call takes at most {MAX_GROUP} events (got {n})"
        )
    out = IngestResult()
    if not n:
        return out
    now_us = to_micros(now or now_utc())
    oldest_us = now_us - int(retention.total_seconds()) * _US
    newest_us = now_us + int(FUTURE_SKEW.total_seconds()) * _US
    resolver = _Resolver()
    good_version = _Memo(lambda v: len(v) <= 64 and names.VERSION_ID_RE.match(v) is not None)
    good_type = _Memo(lambda t: _text_problem(t, MAX_DEVICE_TYPE, False) is None and t != ALL)
    latency = np.asarray(batch.latency_ms, dtype=np.float64)
    ttft = np.asarray(batch.ttft_ms, dtype=np.float64)
    tps = np.asarray(batch.tokens_per_second, dtype=np.float64)
    times = batch.occur_us
    # The common case, a batch without a bad event, is recognised column by column; only
    # a batch failing that is examined event by event, for each bad event's field and
    # reason. Both checks are the same conditions.
    valid: list[int]
    if (
        _texts_ok(batch.event_id, MAX_EVENT_ID)
        and all(resolver.model_id(m) is not None for m in set(batch.model))
        and all(good_version(v) for v in set(batch.version_id))
        and _texts_ok(batch.device_id, MAX_DEVICE_ID)
        and all(good_type(t) for t in set(batch.device_type))
        and None not in times
        and oldest_us <= min(cast(list[int], times))
        and max(cast(list[int], times)) <= newest_us
        and _in_range(latency, MAX_LATENCY_MS)
        and _in_range(ttft, MAX_LATENCY_MS)
        and _in_range(tps, MAX_TOKENS_PER_SECOND)
        and max(map(len, batch.error_code)) <= MAX_ERROR_CODE
    ):
        valid = list(range(n))
    else:
        valid = []
        retention_text = _retention_text(retention)
        for i in range(n):
            e = batch.event(i)
            problem = _session_problem(e, resolver, now_us, oldest_us, retention_text)
            if problem is None:
                valid.append(i)
            else:
                _reject(out, e.event_id, first_index + i, *problem)
    model_of = resolver.parsed
    models = repo.existing_versions(
        session, org_id, {model_of[m] or "" for m in {batch.model[i] for i in valid}}
    )
    no_versions: set[str] = set()

    def known_version(model: str, version: str) -> bool:
        return version in models.get(model_of[model] or "", no_versions)

    known: list[int]
    if len(valid) == n and all(
        known_version(m, v) for m, v in set(zip(batch.model, batch.version_id, strict=True))
    ):
        known = valid
    else:
        known = []
        for i in valid:
            model, version = batch.model[i], batch.version_id[i]
            if known_version(model, version):
                known.append(i)
                continue
            model_id = model_of[model] or ""
            problem = _references_problem(model_id, version, model, models)
            assert problem is not None
            _reject(out, batch.event_id[i], first_index + i, *problem)
    if len(known) == n and len(set(batch.event_id)) == n:
        unique: list[int] | None = None  # all of them, in order
    else:
        unique, dropped = _dedupe(batch.event_id, known)
        out.duplicates += dropped

    def column(values: list[Any]) -> list[Any]:
        return values if unique is None else [values[i] for i in unique]

    cols = SessionColumns(
        event_id=column(batch.event_id),
        model_id=[model_of[m] or "" for m in column(batch.model)],
        version=column(batch.version_id),
        device_id=column(batch.device_id),
        device_type=column(batch.device_type),
        occurred_us=column(times),
        latency_ms=latency if unique is None else latency[unique],
        ttft_ms=ttft if unique is None else ttft[unique],
        tokens_per_second=tps if unique is None else tps[unique],
        error=column(batch.error),
        error_code=column(batch.error_code),
    )
    if not len(cols):
        out.rejected.sort(key=lambda r: r.index)
        return out
    skipped = repo.insert_sessions(session, org_id, cols)
    out.accepted = len(cols) - len(skipped)
    out.duplicates += len(skipped)
    if out.accepted:
        if skipped:
            stored = [j for j, eid in enumerate(cols.event_id) if eid not in skipped]
        else:
            stored = list(range(len(cols)))
        _merge_rollups(session, org_id, cols, stored)
    out.rejected.sort(key=lambda r: r.index)
    return out


class _Memo:
    """A predicate over strings, computed once per distinct value (batches repeat them)."""

    def __init__(self, fn: Callable[[str], bool]) -> None:
        self.fn = fn
        self.seen: dict[str, bool] = {}

    def __call__(self, value: str) -> bool:
        hit = self.seen.get(value)
        if hit is None:
            hit = self.seen[value] = self.fn(value)
        return hit


Deltas = dict[RollupKey, "_Partial"]


def _codes(values: list[str]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Each value as the index of its first occurrence among the distinct values."""
    distinct = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), np.int64, len(values)), distinct


def _groups(
    cols: SessionColumns, stored: list[int]
) -> list[tuple[tuple[str, str, str, int], npt.NDArray[np.int64]]]:
    """The stored positions grouped by (model, version, device type, 10-minute bucket).

    With numpy over whole columns: a dictionary lookup per event and group key was most of
    the rollup work of a batch."""
    idx = np.asarray(stored, dtype=np.int64)
    occurred = np.asarray(cols.occurred_us, dtype=np.int64)[idx]
    buckets, b = np.unique(occurred - occurred % _TEN_MINUTES_US, return_inverse=True)
    (m, models), (v, versions), (d, types) = (
        _codes(cols.model_id),
        _codes(cols.version),
        _codes(cols.device_type),
    )
    combined = ((m[idx] * len(versions) + v[idx]) * len(types) + d[idx]) * len(buckets) + b
    keys, inverse = np.unique(combined, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    ends = np.cumsum(np.bincount(inverse, minlength=len(keys)))
    out = []
    start = 0
    for key, end in zip(keys.tolist(), ends.tolist(), strict=True):
        rest, bi = divmod(key, len(buckets))
        rest, di = divmod(rest, len(types))
        mi, vi = divmod(rest, len(versions))
        group = (models[mi], versions[vi], types[di], int(buckets[bi]))
        out.append((group, idx[order[start:end]]))
        start = end
    return out


def _rollup_deltas(cols: SessionColumns, stored: list[int]) -> tuple[Deltas, Deltas]:
    """Per rollup key (every level): the aggregate of the stored sessions it covers, for
    the hourly and for the 10-minute rollups.

    Sessions are grouped once by (model, version, device type, 10 minutes); hours and the
    '*' levels are merged from those groups.
    """
    groups = _groups(cols, stored)
    latency = np.asarray(cols.latency_ms, dtype=np.float64)
    ttft = np.asarray(cols.ttft_ms, dtype=np.float64)
    tps = np.asarray(cols.tokens_per_second, dtype=np.float64)
    errors = np.asarray(cols.error, dtype=bool)
    fine: dict[tuple[str, str, str, int], list[_Partial]] = defaultdict(list)
    hourly: dict[tuple[str, str, str, int], list[_Partial]] = defaultdict(list)
    for (m, v, dt, bucket), idx in groups:
        t = ttft[idx]
        t = t[t > 0]
        p = tps[idx]
        p = p[p > 0]
        lat = latency[idx]
        part = _Partial(
            len(idx),
            int(errors[idx].sum()),
            float(lat.sum()),
            Sketch.of(lat),
            len(t),
            float(t.sum()),
            Sketch.of(t),
            len(p),
            float(p.sum()),
            Sketch.of(p),
        )
        hour = bucket - bucket % _HOUR_US
        for vv, dd in ((v, dt), (v, ALL), (ALL, dt), (ALL, ALL)):
            fine[(m, vv, dd, bucket)].append(part)
            hourly[(m, vv, dd, hour)].append(part)

    def finish(levels: dict[tuple[str, str, str, int], list[_Partial]]) -> Deltas:
        return {
            (m, v, dt, repo.from_micros(t)): _Partial.combine(parts)
            for (m, v, dt, t), parts in levels.items()
        }

    return finish(hourly), finish(fine)


@dataclass(frozen=True, slots=True)
class _Partial:
    """A rollup delta with live sketches (serialised once, after merging levels)."""

    sessions: int
    errors: int
    latency_sum: float
    latency: Sketch
    ttft_count: int
    ttft_sum: float
    ttft: Sketch
    tps_count: int
    tps_sum: float
    tps: Sketch

    @staticmethod
    def combine(parts: list[_Partial]) -> _Partial:
        if len(parts) == 1:
            return parts[0]
        return _Partial(
            sum(p.sessions for p in parts),
            sum(p.errors for p in parts),
            sum(p.latency_sum for p in parts),
            Sketch.merge(p.latency for p in parts),
            sum(p.ttft_count for p in parts),
            sum(p.ttft_sum for p in parts),
            Sketch.merge(p.ttft for p in parts),
            sum(p.tps_count for p in parts),
            sum(p.tps_sum for p in parts),
            Sketch.merge(p.tps for p in parts),
        )


def _add(stored: bytes, delta: Sketch) -> bytes:
    """A stored sketch plus a delta, serialised (cheap when either side is empty, as the
    TTFT and tokens/s sketches of non-generative models always are)."""
    if not delta:
        return stored
    if not stored:
        return delta.to_bytes()
    return Sketch.merge([Sketch.from_bytes(stored), delta]).to_bytes()


def _merge(a: RollupValues, b: _Partial) -> RollupValues:
    return RollupValues(
        session_count=a.session_count + b.sessions,
        error_count=a.error_count + b.errors,
        latency_sum=a.latency_sum + b.latency_sum,
        latency_sketch=_add(a.latency_sketch, b.latency),
        ttft_count=a.ttft_count + b.ttft_count,
        ttft_sum=a.ttft_sum + b.ttft_sum,
        ttft_sketch=_add(a.ttft_sketch, b.ttft),
        tps_count=a.tps_count + b.tps_count,
        tps_sum=a.tps_sum + b.tps_sum,
        tps_sketch=_add(a.tps_sketch, b.tps),
    )


def _merge_rollups(session: Session, org_id: str, cols: SessionColumns, stored: list[int]) -> None:
    hourly, fine = _rollup_deltas(cols, stored)
    # Hourly rows first, then 10-minute rows, in every transaction (lock order).
    for table, deltas in ((repo.HOURLY, hourly), (repo.TEN_MINUTES, fine)):
        current = repo.lock_rollups(session, org_id, list(deltas), table)
        merged = {key: _merge(current[key], delta) for key, delta in deltas.items()}
        repo.update_rollups(session, org_id, merged, table)


# ---------------------------------------------------------------------------------------
# window queries


@dataclass(frozen=True)
class Distribution:
    count: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    mean: float = 0.0
    relative_error_bound: float = RELATIVE_ACCURACY

    @classmethod
    def of(cls, sketch: Sketch, total: float) -> Distribution:
        n = sketch.count
        if n == 0:
            return cls()
        p50, p90, p95, p99 = sketch.quantiles(_QUANTILES)
        return cls(n, p50, p90, p95, p99, total / n)


@dataclass(frozen=True)
class InferenceStats:
    session_count: int
    error_count: int
    latency_ms: Distribution
    time_to_first_token_ms: Distribution
    tokens_per_second: Distribution
    fleet: FleetCounts

    @property
    def error_rate(self) -> float:
        return self.error_count / self.session_count if self.session_count else 0.0


Range = tuple[datetime, datetime]


def _split(start: datetime, end: datetime, unit: timedelta) -> tuple[list[Range], list[Range]]:
    """[start, end) as the whole `unit`s inside it (UTC-aligned, at most one range) and
    the parts outside them (at most two ranges, each shorter than `unit`)."""
    step = int(unit.total_seconds()) * _US
    a, b = to_micros(start), to_micros(end)
    lo, hi = -(-a // step) * step, b // step * step
    if lo >= hi:
        return [], [(start, end)]
    inner_lo, inner_hi = repo.from_micros(lo), repo.from_micros(hi)
    outer = [(x, y) for x, y in ((start, inner_lo), (inner_hi, end)) if x < y]
    return [(inner_lo, inner_hi)], outer


def inference_telemetry(
    session: Session,
    org_id: str,
    model_id: str,
    start: datetime | None,
    end: datetime | None,
    version: str = "",
    device_type: str = "",
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> InferenceStats:
    """Sessions of the model in [start, end) (optionally one version / device type), and
    the org's fleet by last heartbeat."""
    now = now or now_utc()
    v = Violations()
    if start is None:
        v.add("start_time", "is required")
    if end is None:
        v.add("end_time", "is required")
    if start is not None and end is not None:
        if end <= start:
            v.add("end_time", "must be after start_time")
        elif end - start > retention:
            v.add(
                "end_time",
                f"the window must be at most the retention period ({_retention_text(retention)})"
                " long",
            )
        if start < now - retention - WINDOW_GRACE:
            v.add(
                "start_time",
                f"is before the retention period ({_retention_text(retention)}): "
                "older sessions are not kept",
            )
    if version and names.version_id_problem(version):
        v.add("version_id", f"version id {names.version_id_problem(version)}")
    if device_type:
        problem = _text_problem(device_type, MAX_DEVICE_TYPE, False)
        if problem:
            v.add("device_type", problem)
    v.raise_if_any()
    assert start is not None and end is not None
    hours, rest = _split(start, end, timedelta(hours=1))
    ten_minutes: list[tuple[datetime, datetime]] = []
    raw: list[tuple[datetime, datetime]] = []
    for a, b in rest:
        inner, outer = _split(a, b, timedelta(minutes=10))
        ten_minutes += inner
        raw += outer
    data = repo.window(
        session,
        repo.WindowQuery(
            org_id=org_id,
            model_id=model_id,
            version=version or None,
            device_type=device_type or None,
            hours=hours,
            ten_minutes=ten_minutes,
            raw=raw,
            online_since=now - ONLINE_WITHIN,
            log_gamma=LOG_GAMMA,
        ),
    )
    if not data.model_exists:
        raise NotFound("model", names.model_name(model_id))
    rows = [*data.rollups, _raw_rollup(data.raw)]
    fleet = data.fleet
    latency = Sketch.merge_bytes(r.latency_sketch for r in rows)
    ttft = Sketch.merge_bytes(r.ttft_sketch for r in rows)
    tps = Sketch.merge_bytes(r.tps_sketch for r in rows)
    return InferenceStats(
        session_count=sum(r.session_count for r in rows),
        error_count=sum(r.error_count for r in rows),
        latency_ms=Distribution.of(latency, sum(r.latency_sum for r in rows)),
        time_to_first_token_ms=Distribution.of(ttft, sum(r.ttft_sum for r in rows)),
        tokens_per_second=Distribution.of(tps, sum(r.tps_sum for r in rows)),
        fleet=fleet,
    )


def _raw_rollup(raw: repo.RawAggregate) -> RollupValues:
    """Raw sessions summarised like a rollup row, to merge with the real ones."""
    latency, ttft, tps = (Sketch.from_buckets(raw.buckets[m]) for m in ("latency", "ttft", "tps"))
    return RollupValues(
        session_count=raw.session_count,
        error_count=raw.error_count,
        latency_sum=raw.latency_sum,
        latency_sketch=latency.to_bytes(),
        ttft_count=raw.ttft_count,
        ttft_sum=raw.ttft_sum,
        ttft_sketch=ttft.to_bytes(),
        tps_count=raw.tps_count,
        tps_sum=raw.tps_sum,
        tps_sketch=tps.to_bytes(),
    )


# ---------------------------------------------------------------------------------------
# devices


@dataclass(frozen=True)
class DeviceReport:
    device_id: str
    health: str  # one of HEALTH_VALUES, or "" when not given
    device_type: str = ""
    platform: str = ""
    os_version: str = ""
    runtime_version: str = ""


def report_heartbeat(
    session: Session, org_id: str, report: DeviceReport, now: datetime | None = None
) -> tuple[Device, bool]:
    """Record the device's health and last-seen time, registering it on first sight."""
    v = Violations()
    problem = _text_problem(report.device_id, MAX_DEVICE_ID, True)
    if problem:
        v.add("device.device_id", problem)
    if report.health not in HEALTH_VALUES:
        v.add("device.health", "is required: healthy, degraded or unhealthy")
    problem = _text_problem(report.device_type, MAX_DEVICE_TYPE, False)
    if problem:
        v.add("device.device_type", problem)
    elif report.device_type == ALL:
        v.add("device.device_type", f"{ALL!r} is reserved")
    for name in ("platform", "os_version", "runtime_version"):
        problem = _text_problem(getattr(report, name), MAX_DEVICE_FIELD, False)
        if problem:
            v.add(f"device.{name}", problem)
    v.raise_if_any()
    fields = {
        "device_type": report.device_type,
        "platform": report.platform,
        "os_version": report.os_version,
        "runtime_version": report.runtime_version,
        "health_status": report.health,
    }
    return repo.upsert_device(session, org_id, report.device_id, fields, now or now_utc())


# ---------------------------------------------------------------------------------------
# training updates


@dataclass(slots=True)
class TrainingEvent:
    event_id: str
    model: str
    version_id: str
    device_id: str
    occur_us: int | None
    sample_count: int
    metrics: dict[str, float]


def _training_problem(
    e: TrainingEvent, r: _Resolver, now_us: int, oldest_us: int, retention: str
) -> tuple[str, str] | None:
    identity = _identity_problem(e.event_id, e.model, e.version_id, e.device_id, r)
    if identity:
        return identity
    p = _time_problem(e.occur_us, now_us, oldest_us, retention)
    if p:
        return "occur_time", p
    if e.sample_count < 0:
        return "sample_count", "must not be negative"
    if e.sample_count > MAX_SAMPLE_COUNT:
        return "sample_count", f"must be at most {MAX_SAMPLE_COUNT}"
    if len(e.metrics) > MAX_METRICS:
        return "metrics", f"must have at most {MAX_METRICS} entries (got {len(e.metrics)})"
    for key, value in e.metrics.items():
        problem = _text_problem(key, MAX_METRIC_NAME, True)
        if problem:
            return "metrics", f"metric name {key!r} {problem}"
        if not math.isfinite(value):
            return f"metrics[{key}]", "must be a finite number"
    return None


def ingest_training_updates(
    session: Session,
    org_id: str,
    events: Sequence[TrainingEvent],
    first_index: int,
    retention: timedelta = DEFAULT_RETENTION,
    now: datetime | None = None,
) -> IngestResult:
    """Validate and store one batch of training updates (one transaction)."""
    if len(events) > MAX_GROUP:
        raise InvalidArgument.field(
            "updates", f"one call takes at most {MAX_GROUP} updates (got {len(events)})"
        )
    out = IngestResult()
    now_us = to_micros(now or now_utc())
    oldest_us = now_us - int(retention.total_seconds()) * _US
    retention_text = _retention_text(retention)
    resolver = _Resolver()
    valid: list[int] = []
    for i, e in enumerate(events):
        problem = _training_problem(e, resolver, now_us, oldest_us, retention_text)
        if problem:
            _reject(out, e.event_id, first_index + i, *problem)
        else:
            valid.append(i)
    model_ids = {i: resolver.model_id(events[i].model) or "" for i in valid}
    models = repo.existing_versions(session, org_id, model_ids.values())
    known: list[int] = []
    for i in valid:
        e = events[i]
        problem = _references_problem(model_ids[i], e.version_id, e.model, models)
        if problem:
            _reject(out, e.event_id, first_index + i, *problem)
        else:
            known.append(i)
    unique, dropped = _dedupe([e.event_id for e in events], known)
    out.duplicates += dropped
    rows = [
        repo.TrainingRow(
            event_id=events[i].event_id,
            model_id=model_ids[i],
            version=events[i].version_id,
            device_id=events[i].device_id,
            occurred_us=events[i].occur_us or 0,
            sample_count=events[i].sample_count,
            metrics=dict(events[i].metrics),
        )
        for i in unique
    ]
    inserted = repo.insert_training_updates(session, org_id, rows)
    out.accepted = len(inserted)
    out.duplicates += len(rows) - len(inserted)
    out.rejected.sort(key=lambda r: r.index)
    return out


def training_stats(session: Session, org_id: str, model_id: str) -> list[repo.VersionTotals]:
    """Per version of the model: update, sample and device counts, latest metrics."""
    if not repo.model_exists(session, org_id, model_id):
        raise NotFound("model", names.model_name(model_id))
    return repo.training_totals(session, org_id, model_id)


@dataclass(frozen=True)
class MetricStats:
    metric: str
    count: int
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class DeviceTraining:
    device_id: str
    update_count: int
    sample_count: int
    latest_metrics: dict[str, float]


@dataclass(frozen=True)
class VersionTraining:
    version_id: str
    update_count: int
    sample_count: int
    device_count: int
    metrics: list[MetricStats]
    devices: list[DeviceTraining]  # one page, by device_id
    next_device_page_token: str


def version_training_stats(
    session: Session,
    org_id: str,
    model_id: str,
    version: str,
    device_page_size: int = 0,
    device_page_token: str = "",
) -> VersionTraining:
    """Exact per-metric percentiles over all of one version's updates, and one page of its
    per-device breakdown by device_id; zero counts when it has none. The model must exist."""
    page = page_of(
        device_page_size,
        device_page_token,
        "version_training_devices",
        model_id,
        version,
        size_field="device_page_size",
        token_field="device_page_token",
    )
    if not repo.model_exists(session, org_id, model_id):
        raise NotFound("model", names.model_name(model_id))
    totals = repo.version_update_totals(session, org_id, model_id, version)
    values: dict[str, list[float]] = defaultdict(list)
    for m in repo.version_update_metrics(session, org_id, model_id, version):
        for key, value in m.items():
            values[key].append(float(value))
    metrics = []
    for key in sorted(values):
        p50, p95, p99 = (float(x) for x in np.quantile(values[key], (0.5, 0.95, 0.99)))
        metrics.append(MetricStats(key, len(values[key]), p50, p95, p99))
    rows = repo.version_device_page(session, org_id, model_id, version, page.offset, page.size)
    devices = [
        DeviceTraining(d.device_id, d.update_count, d.sample_count, d.latest_metrics) for d in rows
    ]
    return VersionTraining(
        version_id=version,
        update_count=totals.update_count,
        sample_count=totals.sample_count,
        device_count=totals.device_count,
        metrics=metrics,
        devices=devices,
        next_device_page_token=page.next_token(len(devices), totals.device_count),
    )


# ---------------------------------------------------------------------------------------
# retention


@dataclass
class PruneResult:
    sessions: int = 0
    rollups: int = 0


def expired_scopes(
    session: Session, retention: timedelta, now: datetime | None = None
) -> tuple[datetime, list[tuple[str, str]]]:
    """The cutoff and the (org_id, model_id) pairs holding sessions older than it."""
    cutoff = (now or now_utc()) - retention
    return cutoff, repo.expired_models(session, cutoff)


def prune_partitions(
    session: Session, cutoff: datetime, limit: int | None = None
) -> tuple[int, int]:
    """PostgreSQL: drop (up to `limit` of) the daily partitions of raw sessions that lie
    wholly before `cutoff`, oldest first; (partitions dropped, rows they held). Nothing on
    SQLite."""
    return repo.drop_session_partitions_before(session, cutoff, limit)


def prune_scope(session: Session, org_id: str, model_id: str, cutoff: datetime) -> int:
    """Delete one model's raw sessions older than `cutoff` (on PostgreSQL, after
    prune_partitions, only those of the partition holding the cutoff are left)."""
    return repo.delete_sessions_before(session, org_id, model_id, cutoff)


def prune_rollups(session: Session, cutoff: datetime) -> int:
    """Delete rollup rows whose period ended by `cutoff`."""
    return repo.delete_rollups_before(session, cutoff)
