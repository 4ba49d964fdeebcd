"""TelemetryService ingestion over a real server, on both backends: batches, duplicates,
per-event rejections, heartbeats, org scoping."""

from __future__ import annotations

import math
import threading
import uuid
from datetime import timedelta

import grpc
import pytest

from modelregistry.v1 import telemetry_service_pb2 as pb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.telemetry import (
    day_partition,
    heartbeat,
    model_with_versions,
    now,
    partition_of_rows,
    report,
    report_updates,
    session,
    stored_rows,
    stored_sessions,
    update_event,
    window,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def model(registry: RunningServer, client: Client) -> str:
    model_with_versions(client, "m", ["1.0", "2.0"])
    return "models/m"


def test_batches_are_stored_and_counted(client: Client, model: str) -> None:
    events = [session(latency_ms=float(i + 1)) for i in range(2500)]
    resp = report(client, events[:1000], events[1000:2000], events[2000:])
    assert (resp.accepted_count, resp.duplicate_count, resp.rejected_count) == (2500, 0, 0)
    assert list(resp.rejected) == []
    got = window(client)
    assert got.session_count == 2500
    assert got.latency_ms.count == 2500
    assert got.latency_ms.mean == pytest.approx(sum(range(1, 2501)) / 2500)


def test_retried_stream_is_not_double_counted(
    registry: RunningServer, client: Client, model: str
) -> None:
    events = [session(latency_ms=5.0, error=i % 4 == 0) for i in range(1500)]
    first = report(client, events[:1000], events[1000:])
    assert first.accepted_count == 1500
    # The agent lost the answer and sends everything again, re-batched differently,
    # plus a few new events.
    extra = [session(latency_ms=7.0) for _ in range(10)]
    again = report(client, events[:700], events[700:] + extra)
    assert (again.accepted_count, again.duplicate_count) == (10, 1500)
    assert stored_sessions(registry, client) == 1510
    got = window(client)
    assert got.session_count == 1510
    assert got.error_count == 375
    assert got.error_rate == pytest.approx(375 / 1510)


def test_events_of_several_days_land_in_their_days_partitions_and_retries_stay_duplicates(
    registry: RunningServer, client: Client, model: str
) -> None:
    # Days back to near the retention (30 days) and a few minutes ahead (allowed skew):
    # on PostgreSQL each lands in the partition of its UTC day, made on demand.
    t = now()
    times = [t - timedelta(days=d, minutes=m) for d in (0, 1, 2, 7, 29) for m in (1, 30)]
    times.append(t + timedelta(minutes=4))
    events = [session(at=at, latency_ms=3.0) for at in times for _ in range(5)]
    first = report(client, events[:20], events[20:])
    assert (first.accepted_count, first.duplicate_count) == (len(events), 0)
    # A retried stream, re-batched, and the same events in two concurrent-looking batches.
    again = report(client, events[::-1][:30], events[::-1][30:], events[:10])
    assert (again.accepted_count, again.duplicate_count) == (0, len(events) + 10)
    assert stored_sessions(registry, client) == len(events)
    partitions = partition_of_rows(registry, client)
    if partitions is not None:  # PostgreSQL
        at = {e.event_id: e.occur_time.ToDatetime(tzinfo=t.tzinfo) for e in events}
        assert partitions == {e: day_partition(at[e]) for e in at}
        assert len(set(partitions.values())) == len({day_partition(x) for x in times}) >= 5


def test_an_event_id_is_unique_together_with_its_occur_time(
    registry: RunningServer, client: Client, model: str
) -> None:
    # The dedupe rule (protos: InferenceSessionEvent.event_id): a retry re-sends the same
    # event, occur_time included; the same id at another occur_time is another event. Both
    # backends alike.
    t = now()
    a = session(event_id="same", at=t - timedelta(minutes=2))
    b = session(event_id="same", at=t - timedelta(days=3))
    assert report(client, [a]).accepted_count == 1
    got = report(client, [b], [a])
    assert (got.accepted_count, got.duplicate_count) == (1, 1)
    assert stored_sessions(registry, client) == 2


def test_stored_rows_keep_every_field(registry: RunningServer, client: Client, model: str) -> None:
    # Values the bulk paths must carry exactly: text that looks like their separators or
    # is not ASCII, empty optional fields, a one-event batch with an empty device type.
    at = now().replace(microsecond=123456) - timedelta(minutes=2)
    events = [
        session(event_id="plain", at=at, latency_ms=0.0),
        session(event_id="énergie-✓", device_id="dév-ü", device_type="", latency_ms=1.5),
        session(event_id="gen", ttft_ms=120.25, tokens_per_second=33.5, version="2.0"),
        session(event_id="err", error=True, error_code='E\x1fsplit,{quoted}"x"'),
        session(event_id="err-empty", error=True),
    ]
    resp = report(client, events[:4], events[4:])
    assert resp.accepted_count == 5
    alone = session(event_id="alone", device_type="")
    assert report(client, [alone]).accepted_count == 1
    rows = stored_rows(registry, client)
    assert set(rows) == {"plain", "énergie-✓", "gen", "err", "err-empty", "alone"}
    assert rows["plain"].occurred_at.replace(tzinfo=at.tzinfo) == at
    assert rows["plain"].latency_ms == 0.0
    assert (rows["plain"].ttft_ms, rows["plain"].tokens_per_second) == (None, None)
    assert (rows["plain"].status, rows["plain"].error_code) == ("ok", None)
    assert (rows["énergie-✓"].device_id, rows["énergie-✓"].device_type) == ("dév-ü", "")
    assert rows["énergie-✓"].latency_ms == 1.5
    assert (rows["gen"].ttft_ms, rows["gen"].tokens_per_second) == (120.25, 33.5)
    assert (rows["gen"].version, rows["gen"].model_id) == ("2.0", "m")
    assert (rows["err"].status, rows["err"].error_code) == ("error", 'E\x1fsplit,{quoted}"x"')
    assert (rows["err-empty"].status, rows["err-empty"].error_code) == ("error", None)
    assert rows["alone"].device_type == ""


def test_duplicates_inside_one_batch_and_stream(client: Client, model: str) -> None:
    a = session(event_id="same-id")
    b = session(event_id="same-id", latency_ms=999.0)
    c = session()
    resp = report(client, [a, b, c], [a, c])
    assert (resp.accepted_count, resp.duplicate_count) == (2, 3)
    got = window(client)
    assert got.session_count == 2
    assert got.latency_ms.p99 == pytest.approx(10.0, rel=0.01)  # the first copy won


def test_concurrent_streams_with_the_same_events_store_them_once(
    registry: RunningServer, client: Client, model: str
) -> None:
    events = [session(latency_ms=1.0 + i % 50) for i in range(3000)]
    results: list[pb.ReportInferenceSessionsResponse] = []
    errors: list[BaseException] = []

    def send(order: int) -> None:
        evs = events if order == 0 else list(reversed(events))
        try:
            results.append(report(client, *[evs[i : i + 500] for i in range(0, 3000, 500)]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sum(r.accepted_count for r in results) == 3000
    assert sum(r.duplicate_count for r in results) == 3 * 3000
    assert stored_sessions(registry, client) == 3000
    got = window(client)
    assert got.session_count == 3000
    assert got.latency_ms.mean == pytest.approx(sum(1.0 + i % 50 for i in range(3000)) / 3000)


def test_each_bad_event_is_rejected_with_its_reason_and_the_rest_kept(
    client: Client, model: str
) -> None:
    t = now()
    bad = {
        "no-id": session(event_id=""),
        "long-id": session(event_id="x" * 129),
        "unknown-model": session(model="models/nope"),
        "malformed-model": session(model="nope"),
        "unknown-version": session(version="9.9"),
        "bad-version": session(version="bad version"),
        "no-device": session(device_id=""),
        "future": session(at=t + timedelta(minutes=10)),
        "too-old": session(at=t - timedelta(days=31)),
        "negative": session(latency_ms=-1.0),
        "nan": session(latency_ms=math.nan),
        "inf": session(latency_ms=math.inf),
        "huge": session(latency_ms=1e12),
        "bad-ttft": session(ttft_ms=-5.0),
        "nan-tps": session(tokens_per_second=math.nan),
        "reserved-type": session(device_type="*"),
    }
    expected_field = {
        "no-id": "event_id",
        "long-id": "event_id",
        "unknown-model": "model",
        "malformed-model": "model",
        "unknown-version": "version_id",
        "bad-version": "version_id",
        "no-device": "device_id",
        "future": "occur_time",
        "too-old": "occur_time",
        "negative": "latency_ms",
        "nan": "latency_ms",
        "inf": "latency_ms",
        "huge": "latency_ms",
        "bad-ttft": "time_to_first_token_ms",
        "nan-tps": "tokens_per_second",
        "reserved-type": "device_type",
    }
    good = [session(latency_ms=3.0) for _ in range(5)]
    no_time = session()
    no_time.ClearField("occur_time")
    batch = [good[0], *bad.values(), *good[1:], no_time]
    resp = report(client, [good[0]], batch)  # index counts across batches
    assert resp.accepted_count == 5
    assert resp.duplicate_count == 1
    assert resp.rejected_count == len(bad) + 1
    by_index = {r.index: r for r in resp.rejected}
    for offset, name in enumerate(bad, start=2):
        r = by_index[offset]
        assert r.field == expected_field[name], (name, r)
        assert r.reason, name
        assert r.event_id == bad[name].event_id
    assert by_index[len(batch)].field == "occur_time"
    assert "required" in by_index[len(batch)].reason
    assert "future" in by_index[2 + list(bad).index("future")].reason
    assert "retention" in by_index[2 + list(bad).index("too-old")].reason
    assert "not found" in by_index[2 + list(bad).index("unknown-model")].reason
    assert window(client).session_count == 5


def test_oversized_batch_fails_the_stream_after_keeping_earlier_batches(
    client: Client, model: str
) -> None:
    ok = [session() for _ in range(10)]
    big = [session() for _ in range(1001)]
    err = expect_error(INVALID, report, client, ok, big)
    assert "events" in err.field_violations
    assert window(client).session_count == 10


def test_batches_written_together_keep_their_stream_indexes(client: Client, model: str) -> None:
    # Batches sent back to back are usually waiting at the server together and share one
    # transaction; indexes, duplicates across batches and the oversized-batch failure are
    # still per stream, in order.
    first = [session() for _ in range(300)]
    bad = session(version="9.9")
    resp = report(client, first, [session(), bad], first[:5], [session() for _ in range(1000)])
    assert (resp.accepted_count, resp.duplicate_count, resp.rejected_count) == (1301, 5, 1)
    assert [(r.index, r.field) for r in resp.rejected] == [(301, "version_id")]
    ok = [[session() for _ in range(10)] for _ in range(6)]
    err = expect_error(INVALID, report, client, *ok, [session() for _ in range(1001)], ok[0])
    assert "index 60" in err.field_violations["events"]
    assert window(client).session_count == 1301 + 60


def test_empty_stream_and_empty_batches(client: Client, model: str) -> None:
    resp = report(client)
    assert (resp.accepted_count, resp.duplicate_count, resp.rejected_count) == (0, 0, 0)
    resp = report(client, [], [session()], [])
    assert resp.accepted_count == 1


def test_reporting_needs_a_key(registry: RunningServer) -> None:
    from modelregistry.v1 import telemetry_service_pb2_grpc

    stub = telemetry_service_pb2_grpc.TelemetryServiceStub(registry.channel)
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        stub.ReportInferenceSessions,
        iter([pb.ReportInferenceSessionsRequest(events=[session()])]),
    )


def test_an_org_reports_only_into_its_own_models(
    registry: RunningServer, client: Client, other_client: Client, model: str
) -> None:
    # The other org has no model "m": its events are rejected, never stored into ours.
    resp = report(other_client, [session(latency_ms=1.0) for _ in range(3)])
    assert resp.accepted_count == 0
    assert {r.field for r in resp.rejected} == {"model"}
    # Same event ids in two orgs are independent.
    model_with_versions(other_client, "m", ["1.0"])
    shared = [session(event_id=f"e{i}") for i in range(4)]
    assert report(client, shared).accepted_count == 4
    assert report(other_client, shared).accepted_count == 4
    assert window(client).session_count == 4
    assert window(other_client).session_count == 4
    assert stored_sessions(registry, client) == 4


# -- heartbeats --------------------------------------------------------------------------


def test_heartbeat_registers_then_updates(client: Client) -> None:
    first = heartbeat(
        client,
        "phone-1",
        device_type="pixel-8",
        platform="android",
        os_version="15",
        runtime_version="onnxruntime-1.20",
    )
    assert first.registered
    d = first.device
    assert (d.device_id, d.device_type, d.platform, d.os_version, d.runtime_version) == (
        "phone-1",
        "pixel-8",
        "android",
        "15",
        "onnxruntime-1.20",
    )
    assert d.health == pb.Device.HEALTH_HEALTHY
    assert d.create_time.seconds > 0
    assert d.last_seen_time.ToDatetime() >= d.create_time.ToDatetime()
    second = heartbeat(client, "phone-1", pb.Device.HEALTH_DEGRADED, runtime_version="ort-1.21")
    assert not second.registered
    d2 = second.device
    assert d2.health == pb.Device.HEALTH_DEGRADED
    assert d2.runtime_version == "ort-1.21"
    assert (d2.device_type, d2.platform, d2.os_version) == ("pixel-8", "android", "15")
    assert d2.create_time == d.create_time
    assert d2.last_seen_time.ToDatetime() >= d.last_seen_time.ToDatetime()


def test_bad_heartbeats_are_invalid_and_register_nothing(client: Client, model: str) -> None:
    cases = [
        (pb.Device(device_id="", health=pb.Device.HEALTH_HEALTHY), "device.device_id"),
        (pb.Device(device_id="x" * 129, health=pb.Device.HEALTH_HEALTHY), "device.device_id"),
        (pb.Device(device_id="d"), "device.health"),
        (
            pb.Device(device_id="d", health=pb.Device.HEALTH_HEALTHY, platform="p" * 65),
            "device.platform",
        ),
    ]
    for device, bad_field in cases:
        err = expect_error(
            INVALID,
            client.telemetry.ReportDeviceHeartbeat,
            pb.ReportDeviceHeartbeatRequest(device=device),
        )
        assert bad_field in err.field_violations
    assert window(client).fleet.total_devices == 0


def test_devices_are_per_org(client: Client, other_client: Client) -> None:
    assert heartbeat(client, "shared-id").registered
    assert heartbeat(other_client, "shared-id").registered
    assert not heartbeat(client, "shared-id").registered


# -- training updates --------------------------------------------------------------------


def test_training_updates_dedupe_and_reject_per_event(client: Client, model: str) -> None:
    ups = [update_event(metrics={"loss": 0.5}) for _ in range(3)]
    bad = [
        update_event(sample_count=-1),
        update_event(metrics={"loss": math.nan}),
        update_event(metrics={f"m{i}": 1.0 for i in range(65)}),
        update_event(version="7.7"),
        update_event(at=now() + timedelta(hours=1)),
    ]
    resp = report_updates(client, ups + bad, ups[:2])
    assert (resp.accepted_count, resp.duplicate_count, resp.rejected_count) == (3, 2, 5)
    assert [r.field for r in resp.rejected] == [
        "sample_count",
        "metrics[loss]",
        "metrics",
        "version_id",
        "occur_time",
    ]
    assert [r.index for r in resp.rejected] == [3, 4, 5, 6, 7]


def test_oversized_training_batch_is_invalid(client: Client, model: str) -> None:
    err = expect_error(INVALID, report_updates, client, [update_event() for _ in range(1001)])
    assert "updates" in err.field_violations


def test_unknown_event_id_formats_are_fine(client: Client, model: str) -> None:
    ids = ["a", str(uuid.uuid4()), "device-7:batch-3:42", "ü-unicode"]
    resp = report(client, [session(event_id=i) for i in ids])
    assert resp.accepted_count == len(ids)
