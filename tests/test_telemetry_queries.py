"""GetInferenceTelemetry over a real server, on both backends: percentiles against numpy
within the stated bound, filters, rollups vs raw edges, window rules, the fleet block."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import delete, select

from modelregistry.v1 import telemetry_service_pb2 as pb
from storage.db import session_factory, transaction
from storage.orm import InferenceSession, Org
from support.registry import Client, RunningServer
from support.status import expect_error
from support.telemetry import (
    _engine,
    age_device,
    heartbeat,
    model_with_versions,
    now,
    report,
    session,
    ts,
    window,
)

BOUND = 0.01
QS = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Event:
    at: datetime
    version: str
    device_type: str
    latency: float
    ttft: float
    tps: float
    error: bool


def assert_within_bound(dist: pb.LatencyDistribution, values: np.ndarray) -> None:
    assert dist.count == len(values)
    assert dist.relative_error_bound == BOUND
    if len(values) == 0:
        assert (dist.p50, dist.p99, dist.mean) == (0, 0, 0)
        return
    for name, q in QS.items():
        exact = float(np.quantile(values, q))
        got = getattr(dist, name)
        assert abs(got - exact) <= BOUND * exact * (1 + 1e-9), (name, got, exact)
    assert dist.mean == pytest.approx(float(values.mean()), rel=1e-9)


def check(resp: pb.GetInferenceTelemetryResponse, events: list[Event]) -> None:
    assert resp.session_count == len(events)
    errors = sum(e.error for e in events)
    assert resp.error_count == errors
    assert resp.error_rate == pytest.approx(errors / len(events) if events else 0.0)
    assert_within_bound(resp.latency_ms, np.array([e.latency for e in events]))
    assert_within_bound(
        resp.time_to_first_token_ms, np.array([e.ttft for e in events if e.ttft > 0])
    )
    assert_within_bound(resp.tokens_per_second, np.array([e.tps for e in events if e.tps > 0]))


FleetData = tuple[Client, datetime, list[Event]]


@pytest.fixture(scope="module")
def fleet_data(registry: RunningServer) -> FleetData:
    """6000 sessions over the last two days in a fresh org (shared by the read-only tests
    of this module): heavy-tailed latencies, exact zeros, some generative sessions."""
    client = registry.new_org()
    model_with_versions(client, "m", ["1.0", "2.0"])
    rng = np.random.default_rng(7)
    t0 = now().replace(microsecond=0)
    n = 6000
    ages = rng.uniform(60, 48 * 3600, n)
    latencies = rng.lognormal(3.0, 1.2, n)
    latencies[rng.random(n) < 0.02] = 0.0  # exact zeros are allowed
    generative = rng.random(n) < 0.4
    events = [
        Event(
            at=t0 - timedelta(seconds=float(ages[i])),
            version=["1.0", "2.0"][i % 2],
            device_type=["pixel-8", "iphone-15", "jetson"][i % 3],
            latency=float(latencies[i]),
            ttft=float(rng.lognormal(4, 0.5)) if generative[i] else 0.0,
            tps=float(rng.lognormal(3, 0.3)) if generative[i] else 0.0,
            error=bool(rng.random() < 0.05),
        )
        for i in range(n)
    ]
    msgs = [
        session(
            version=e.version,
            device_type=e.device_type,
            at=e.at,
            latency_ms=e.latency,
            ttft_ms=e.ttft,
            tokens_per_second=e.tps,
            error=e.error,
            device_id=f"d{i % 97}",
        )
        for i, e in enumerate(events)
    ]
    resp = report(client, *[msgs[i : i + 1000] for i in range(0, n, 1000)])
    assert resp.accepted_count == n
    return client, t0, events


def test_percentiles_within_the_bound_of_numpy(fleet_data: FleetData) -> None:
    client, t0, events = fleet_data
    # Unaligned window: rollups for the whole hours inside, raw rows at both edges.
    start, end = t0 - timedelta(hours=40, minutes=17, seconds=3), t0 - timedelta(minutes=29)
    inside = [e for e in events if start <= e.at < end]
    assert 3000 < len(inside) < len(events)
    check(window(client, start=start, end=end), inside)
    # Everything.
    check(window(client, start=t0 - timedelta(days=3), end=t0 + timedelta(minutes=1)), events)


def test_version_and_device_type_filters(fleet_data: FleetData) -> None:
    client, t0, events = fleet_data
    start, end = t0 - timedelta(hours=30, minutes=5), t0
    for version, device_type in [("1.0", ""), ("", "jetson"), ("2.0", "iphone-15")]:
        subset = [
            e
            for e in events
            if start <= e.at < end
            and (not version or e.version == version)
            and (not device_type or e.device_type == device_type)
        ]
        resp = window(client, start=start, end=end, version_id=version, device_type=device_type)
        check(resp, subset)
    # A version or device type nobody reported: zero counts, not an error.
    check(window(client, start=start, end=end, version_id="3.0"), [])
    check(window(client, start=start, end=end, device_type="toaster"), [])


def test_window_inside_one_hour_reads_raw_rows(fleet_data: FleetData) -> None:
    client, t0, events = fleet_data
    start = t0.replace(minute=0, second=0) - timedelta(hours=5) + timedelta(minutes=10)
    end = start + timedelta(minutes=35)
    check(window(client, start=start, end=end), [e for e in events if start <= e.at < end])


def test_windows_read_rollups_and_only_the_edges_from_raw_rows(
    registry: RunningServer, client: Client
) -> None:
    """Delete the raw rows behind the server's back: whole hours (hourly rollups) and
    whole 10 minutes (10-minute rollups) still answer; only the parts of a window under 10
    minutes at its edges come from raw rows, and those are now gone."""
    model_with_versions(client, "m")
    hour = now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    lat = [float(x) for x in range(1, 601)]
    # One session every 6 s through the hour: 100 per 10 minutes.
    msgs = [session(at=hour + timedelta(seconds=6 * i), latency_ms=lat[i]) for i in range(600)]
    assert report(client, msgs).accepted_count == 600
    with transaction(session_factory(_engine(registry.database_url))) as s:
        org_id = s.scalars(select(Org.id).where(Org.name == client.org)).one()
        s.execute(delete(InferenceSession).where(InferenceSession.org_id == org_id))
    aligned = window(client, start=hour, end=hour + timedelta(hours=1))
    assert aligned.session_count == 600
    assert_within_bound(aligned.latency_ms, np.array(lat))
    # 10-minute aligned, not hour aligned: [00:20, 00:50) from 10-minute rollups.
    got = window(client, start=hour + timedelta(minutes=20), end=hour + timedelta(minutes=50))
    assert got.session_count == 300
    assert_within_bound(got.latency_ms, np.array(lat[200:500]))
    # Hours plus 10-minute rollups plus raw edges: [-00:45, 00:33) loses the raw
    # [00:30, 00:33).
    got = window(client, start=hour - timedelta(minutes=45), end=hour + timedelta(minutes=33))
    assert got.session_count == 300
    # Under 10 minutes: raw rows only.
    assert window(client, start=hour, end=hour + timedelta(minutes=9)).session_count == 0


def test_late_events_land_in_their_own_hour(registry: RunningServer, client: Client) -> None:
    model_with_versions(client, "m")
    old = now() - timedelta(days=20)
    assert report(client, [session(at=old, latency_ms=42.0)]).accepted_count == 1
    hour = old.replace(minute=0, second=0, microsecond=0)
    got = window(client, start=hour - timedelta(hours=1), end=hour + timedelta(hours=2))
    assert got.session_count == 1
    assert got.latency_ms.p50 == pytest.approx(42.0, rel=BOUND)
    assert window(client, start=now() - timedelta(days=1), end=now()).session_count == 0


def test_zero_counts_for_a_model_without_sessions(registry: RunningServer, client: Client) -> None:
    model_with_versions(client, "quiet")
    got = window(client, "models/quiet")
    assert got.session_count == 0 and got.error_count == 0 and got.error_rate == 0
    for dist in (got.latency_ms, got.time_to_first_token_ms, got.tokens_per_second):
        assert dist.count == 0 and dist.p99 == 0 and dist.mean == 0
        assert dist.relative_error_bound == BOUND


def test_window_rules(registry: RunningServer, client: Client) -> None:
    model_with_versions(client, "m")
    t = now()

    def ask(**kw: object) -> pb.GetInferenceTelemetryResponse:
        return client.telemetry.GetInferenceTelemetry(
            pb.GetInferenceTelemetryRequest(name="models/m", **kw)  # type: ignore[arg-type]
        )

    cases = [
        ({"start_time": ts(t), "end_time": ts(t)}, "end_time"),
        ({"start_time": ts(t), "end_time": ts(t - timedelta(hours=1))}, "end_time"),
        ({"start_time": ts(t - timedelta(days=31)), "end_time": ts(t)}, "end_time"),
        (
            {"start_time": ts(t - timedelta(days=40)), "end_time": ts(t - timedelta(days=39))},
            "start_time",
        ),
        ({"end_time": ts(t)}, "start_time"),
        ({"start_time": ts(t)}, "end_time"),
        (
            {"start_time": ts(t - timedelta(hours=1)), "end_time": ts(t), "version_id": "bad v"},
            "version_id",
        ),
    ]
    # Timestamps no Timestamp may hold (before year 1, after 9999, nanos of a second or
    # more): the field is named, not an INTERNAL from converting them.
    for field, other in (("start_time", "end_time"), ("end_time", "start_time")):
        for bad in (
            timestamp_pb2.Timestamp(seconds=-(2**63)),
            timestamp_pb2.Timestamp(seconds=253_402_300_800),
            timestamp_pb2.Timestamp(seconds=ts(t).seconds, nanos=1_000_000_000),
            timestamp_pb2.Timestamp(seconds=ts(t).seconds, nanos=-1),
        ):
            cases.append(({field: bad, other: ts(t)}, field))
    for kw, bad_field in cases:
        err = expect_error(INVALID, ask, **kw)
        assert bad_field in err.field_violations, (kw, err.field_violations)
    # Exactly the retention period, from "now" as the client saw it: accepted.
    ask(start_time=ts(t - timedelta(days=30)), end_time=ts(t))


def test_unknown_and_foreign_models_are_not_found(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    model_with_versions(client, "mine")
    report(client, [session("models/mine", latency_ms=1.0)])
    expect_error(grpc.StatusCode.NOT_FOUND, window, client, "models/nope")
    expect_error(grpc.StatusCode.NOT_FOUND, window, other_client, "models/mine")
    err = expect_error(INVALID, window, client, "mine")
    assert "name" in err.field_violations


def test_org_isolation_of_aggregates(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    for c, latency, n in ((client, 10.0, 30), (other_client, 500.0, 7)):
        model_with_versions(c, "m")
        assert report(c, [session(latency_ms=latency) for _ in range(n)]).accepted_count == n
        heartbeat(c, f"{c.org}-device")
    mine, theirs = window(client), window(other_client)
    assert (mine.session_count, theirs.session_count) == (30, 7)
    assert mine.latency_ms.p99 == pytest.approx(10.0, rel=BOUND)
    assert theirs.latency_ms.p50 == pytest.approx(500.0, rel=BOUND)
    assert mine.fleet.total_devices == theirs.fleet.total_devices == 1


def test_fleet_block_by_heartbeat_age(registry: RunningServer, client: Client) -> None:
    model_with_versions(client, "m")
    model_with_versions(client, "other")
    H = pb.Device
    devices = {
        "fresh-healthy": (H.HEALTH_HEALTHY, None),
        "fresh-healthy-2": (H.HEALTH_HEALTHY, timedelta(minutes=4)),
        "fresh-degraded": (H.HEALTH_DEGRADED, None),
        "fresh-unhealthy": (H.HEALTH_UNHEALTHY, timedelta(minutes=1)),
        "stale-healthy": (H.HEALTH_HEALTHY, timedelta(minutes=6)),
        "stale-degraded": (H.HEALTH_DEGRADED, timedelta(days=2)),
        "gone": (H.HEALTH_HEALTHY, timedelta(days=60)),
    }
    for device_id, (health, age) in devices.items():
        heartbeat(client, device_id, health, device_type="pixel-8")
        if age is not None:
            age_device(registry, client, device_id, age)
    # Sessions of another model, from none of these devices: the fleet block is the org's.
    report(client, [session("models/other", device_id="someone-else")])
    fleet = window(client, "models/m").fleet
    assert (
        fleet.total_devices,
        fleet.healthy_devices,
        fleet.degraded_devices,
        fleet.offline_devices,
    ) == (7, 2, 2, 3)
    # A fresh heartbeat brings a device back online.
    heartbeat(client, "stale-healthy")
    fleet = window(client, "models/m").fleet
    assert (fleet.healthy_devices, fleet.offline_devices) == (3, 2)
