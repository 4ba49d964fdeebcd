"""GetTrainingStats (S15) and GetVersionTrainingStats (S17) over a real server, on both
backends."""

from __future__ import annotations

from datetime import timedelta

import grpc
import numpy as np
import pytest

from modelregistry.v1 import telemetry_service_pb2 as pb
from modelregistry.v1 import version_service_pb2 as vpb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.telemetry import model_with_versions, now, report_updates, update_event

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def stats(c: Client, model: str = "models/m") -> pb.GetTrainingStatsResponse:
    return c.telemetry.GetTrainingStats(pb.GetTrainingStatsRequest(name=model))


def version_stats(
    c: Client, name: str, page_size: int = 0, page_token: str = ""
) -> pb.GetVersionTrainingStatsResponse:
    return c.telemetry.GetVersionTrainingStats(
        pb.GetVersionTrainingStatsRequest(
            name=name, device_page_size=page_size, device_page_token=page_token
        )
    )


def test_training_stats_per_version(registry: RunningServer, client: Client) -> None:
    model_with_versions(client, "m", ["1.0", "2.0", "3.0"])
    t = now()
    ups = [
        # 1.0: three devices, the newest update (by occur time, not arrival) is dev-2's.
        update_event(version="1.0", device_id="dev-1", at=t - timedelta(hours=5),
                     sample_count=100, metrics={"loss": 0.9, "accuracy": 0.5}),
        update_event(version="1.0", device_id="dev-2", at=t - timedelta(hours=1),
                     sample_count=50, metrics={"loss": 0.4, "accuracy": 0.8}),
        update_event(version="1.0", device_id="dev-3", at=t - timedelta(hours=3),
                     sample_count=25, metrics={"loss": 0.6}),
        update_event(version="1.0", device_id="dev-1", at=t - timedelta(hours=2),
                     sample_count=10, metrics={"loss": 0.5}),
        # 2.0: one device, newer than everything in 1.0.
        update_event(version="2.0", device_id="dev-9", at=t - timedelta(minutes=5),
                     sample_count=7, metrics={"loss": 0.3}),
    ]  # fmt: skip
    # Arrival order differs from occurrence order.
    assert report_updates(client, ups[::-1]).accepted_count == 5
    got = stats(client)
    assert [v.version_id for v in got.versions] == ["2.0", "1.0"]  # newest update first
    v2, v1 = got.versions
    assert (v1.update_count, v1.sample_count, v1.device_count) == (4, 185, 3)
    assert dict(v1.latest_metrics) == {"loss": 0.4, "accuracy": 0.8}
    assert v1.latest_update_time.ToDatetime() == ups[1].occur_time.ToDatetime()
    assert (v2.update_count, v2.sample_count, v2.device_count) == (1, 7, 1)
    assert dict(v2.latest_metrics) == {"loss": 0.3}


def test_training_stats_of_a_model_without_updates_and_unknown_models(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    model_with_versions(client, "m")
    assert list(stats(client).versions) == []
    expect_error(NOT_FOUND, stats, client, "models/nope")
    expect_error(NOT_FOUND, stats, other_client, "models/m")
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, stats, client, "models/")
    assert "name" in err.field_violations


def test_version_stats_percentiles_are_exact_and_per_device(
    registry: RunningServer, client: Client
) -> None:
    model_with_versions(client, "m", ["1.0", "2.0"])
    rng = np.random.default_rng(3)
    t = now()
    loss = rng.uniform(0.1, 2.0, 300)
    acc = rng.uniform(0.3, 1.0, 300)
    ups = []
    for i in range(300):
        metrics = {"loss": float(loss[i])}
        if i % 3 == 0:
            metrics["accuracy"] = float(acc[i])
        ups.append(
            update_event(
                version="1.0",
                device_id=f"dev-{i % 7}",
                at=t - timedelta(minutes=300 - i),  # later index = newer
                sample_count=i,
                metrics=metrics,
            )
        )
    noise = [update_event(version="2.0", metrics={"loss": 99.0}) for _ in range(5)]
    assert report_updates(client, ups[:150], ups[150:] + noise).accepted_count == 305
    got = version_stats(client, "models/m/versions/1.0")
    assert got.version_id == "1.0"
    assert (got.update_count, got.sample_count, got.device_count) == (300, sum(range(300)), 7)
    by_metric = {m.metric: m for m in got.metrics}
    assert sorted(by_metric) == ["accuracy", "loss"]
    for name, values in (("loss", loss), ("accuracy", acc[::3])):
        m = by_metric[name]
        assert m.count == len(values)
        exact = np.quantile(values, [0.5, 0.95, 0.99])
        assert [m.p50, m.p95, m.p99] == pytest.approx(list(exact), rel=1e-12)
    devices = {d.device_id: d for d in got.devices}
    assert sorted(devices) == [f"dev-{k}" for k in range(7)]
    for k in range(7):
        mine = [i for i in range(300) if i % 7 == k]
        d = devices[f"dev-{k}"]
        assert (d.update_count, d.sample_count) == (len(mine), sum(mine))
        assert dict(d.latest_metrics) == dict(ups[mine[-1]].metrics)


def test_version_without_updates_answers_zero_counts(
    registry: RunningServer, client: Client
) -> None:
    model_with_versions(client, "m", ["1.0"])
    for name in ("models/m/versions/1.0", "models/m/versions/never-registered"):
        got = version_stats(client, name)
        assert (got.update_count, got.sample_count, got.device_count) == (0, 0, 0)
        assert list(got.metrics) == [] and list(got.devices) == []


def test_version_stats_need_the_model_and_a_valid_name(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    model_with_versions(client, "m", ["1.0"])
    report_updates(client, [update_event(metrics={"loss": 1.0})])
    expect_error(NOT_FOUND, version_stats, client, "models/nope/versions/1.0")
    expect_error(NOT_FOUND, version_stats, other_client, "models/m/versions/1.0")
    for name in ("", "models/m", "models/m/versions/", "models/-/versions/1.0", "m/1.0"):
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, version_stats, client, name)
        assert "name" in err.field_violations


def _many_devices(client: Client, n: int) -> dict[str, tuple[int, int, dict[str, float]]]:
    """Updates of version 1.0 from n devices (1-3 updates each, reported in a shuffled
    order), plus noise in 2.0; per device of 1.0: (updates, samples, newest metrics)."""
    model_with_versions(client, "m", ["1.0", "2.0"])
    rng = np.random.default_rng(11)
    t = now()
    ups = []
    want: dict[str, tuple[int, int, dict[str, float]]] = {}
    for k in range(n):
        device = f"dev-{k:03d}"
        count = int(rng.integers(1, 4))
        samples = 0
        for j in range(count):
            metrics = {"loss": float(rng.uniform(0.1, 2.0))}
            ups.append(
                update_event(
                    version="1.0",
                    device_id=device,
                    at=t - timedelta(minutes=10 * (count - j)),  # later j = newer
                    sample_count=k + j,
                    metrics=metrics,
                )
            )
            samples += k + j
        want[device] = (count, samples, metrics)
    noise = [update_event(version="2.0", device_id="dev-zzz") for _ in range(3)]
    order = rng.permutation(len(ups))
    assert report_updates(client, [ups[i] for i in order] + noise).accepted_count == len(ups) + 3
    return want


def test_version_stats_page_devices_by_device_id(registry: RunningServer, client: Client) -> None:
    want = _many_devices(client, 123)
    name = "models/m/versions/1.0"
    first = version_stats(client, name, page_size=10_000)  # over the maximum: all, one page
    assert first.next_device_page_token == ""
    assert [d.device_id for d in first.devices] == sorted(want)
    aggregates = (first.update_count, first.sample_count, first.device_count, list(first.metrics))
    assert first.device_count == 123
    assert first.update_count == sum(c for c, _, _ in want.values())

    seen: list[pb.DeviceTrainingSummary] = []
    token, pages = "", 0
    while True:
        got = version_stats(client, name, page_size=20, page_token=token)
        pages += 1
        assert len(got.devices) == (20 if got.next_device_page_token else 3)
        # The aggregates are over all updates on every page.
        assert (got.update_count, got.sample_count, got.device_count, list(got.metrics)) == (
            aggregates
        )
        seen.extend(got.devices)
        token = got.next_device_page_token
        if not token:
            break
    assert pages == 7
    assert [d.device_id for d in seen] == sorted(want)
    for d in seen:
        count, samples, latest = want[d.device_id]
        assert (d.update_count, d.sample_count, dict(d.latest_metrics)) == (count, samples, latest)


def test_version_stats_default_device_page_is_50(registry: RunningServer, client: Client) -> None:
    want = _many_devices(client, 60)
    got = version_stats(client, "models/m/versions/1.0")
    assert [d.device_id for d in got.devices] == sorted(want)[:50]
    assert got.device_count == 60 and got.next_device_page_token
    rest = version_stats(client, "models/m/versions/1.0", page_token=got.next_device_page_token)
    assert [d.device_id for d in rest.devices] == sorted(want)[50:]
    assert rest.next_device_page_token == ""


def test_version_stats_reject_bad_device_paging(registry: RunningServer, client: Client) -> None:
    _many_devices(client, 3)
    name = "models/m/versions/1.0"
    err = expect_error(INVALID, version_stats, client, name, page_size=-1)
    assert "device_page_size" in err.field_violations
    token = version_stats(client, name, page_size=1).next_device_page_token
    assert token
    assert len(version_stats(client, name, page_size=1, page_token=token).devices) == 1
    listed = client.versions.ListVersions(vpb.ListVersionsRequest(parent="models/m", page_size=1))
    foreign = [
        "not a token",
        "e30",  # {}
        token[:-2],
        listed.next_page_token,  # another RPC's
    ]
    for bad in foreign:
        err = expect_error(INVALID, version_stats, client, name, page_token=bad)
        assert "device_page_token" in err.field_violations, bad
    # A token is bound to the version it was issued for.
    err = expect_error(INVALID, version_stats, client, "models/m/versions/2.0", page_token=token)
    assert "device_page_token" in err.field_violations
