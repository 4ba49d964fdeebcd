"""GetTrainingStats (S15) and GetVersionTrainingStats (S17) over a real server, on both
backends."""

from __future__ import annotations

from datetime import timedelta

import grpc
import numpy as np
import pytest

from modelregistry.v1 import telemetry_service_pb2 as pb
from support.registry import Client, RunningServer
from support.status import expect_error
from support.telemetry import model_with_versions, now, report_updates, update_event

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def stats(c: Client, model: str = "models/m") -> pb.GetTrainingStatsResponse:
    return c.telemetry.GetTrainingStats(pb.GetTrainingStatsRequest(name=model))


def version_stats(c: Client, name: str) -> pb.GetVersionTrainingStatsResponse:
    return c.telemetry.GetVersionTrainingStats(pb.GetVersionTrainingStatsRequest(name=name))


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
