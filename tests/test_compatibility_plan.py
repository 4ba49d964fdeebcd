"""ModelService.GetOptimizationPlan over a real server, on both backends.

Expected figures are worked out by hand from the shipped profiles (compute factors: pixel-8
1.3, raspberry-pi-4 6.0, raspberry-pi-zero-2-w 20, jetson-orin-nano 0.5; Pi 4 and Pi Zero 2 W
have no fp16; Pi Zero 2 W's weights budget is 256 MiB = 268 MB) and the stated estimate rules:
size int8 = 0.27 x fp32, fp16 = 0.5 x fp32; accuracy = the conversion's acceptance bound
(1e-4 onnx/ort, 1e-2 onnx-fp16, 0.5 onnx-int8); latency = 0.25 ms per fp32 MB x (0.6 for
int8) x compute factor, or a measured latency scaled the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from modelregistry.v1 import compatibility_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2
from support.catalog_seed import SeededVersion, SeedPackage, add_package, seed_version
from support.profiles_cli import set_profiles
from support.registry import Client, RunningServer
from support.status import expect_error

MEASURED = cpb.PROVENANCE_MEASURED
ESTIMATED = cpb.PROVENANCE_ESTIMATED
SOURCE = SeedPackage("onnx", 400_000_000, runtime="onnxruntime")
INT8_CONVERTED = SeedPackage(
    "onnx-int8",
    104_000_000,
    quantization="int8",
    runtime="onnxruntime",
    source="conversion",
    metrics={
        "size_bytes": 104_000_000,
        "max_abs_error": 0.031,
        "mean_cosine_similarity": 0.9991,
        "median_latency_ms": 21.0,
    },
)


def plan(c: Client, model_id: str, *profiles: str, **kw: object) -> pb.GetOptimizationPlanResponse:
    return c.models.GetOptimizationPlan(
        pb.GetOptimizationPlanRequest(
            name=f"models/{model_id}",
            device_profiles=list(profiles),
            **kw,  # type: ignore[arg-type]
        )
    )


def one(c: Client, model_id: str, profile: str, **kw: object) -> cpb.DeviceOptimizationPlan:
    [p] = plan(c, model_id, profile, **kw).plans
    assert p.device_profile == profile
    return p


def summary(p: cpb.DeviceOptimizationPlan) -> list[tuple[str, bool]]:
    return [(o.format, o.feasible) for o in p.alternatives]


@pytest.fixture
def vision(registry: RunningServer, client: Client) -> SeededVersion:
    client.models.CreateModel(
        pb.CreateModelRequest(model_id="vision", model=models_pb2.Model(framework="onnx"))
    )
    return seed_version(registry.database_url, client.org, "vision", [SOURCE])


def test_estimated_plan_from_an_fp32_onnx(client: Client, vision: SeededVersion) -> None:
    resp = plan(client, "vision", "pixel-8")
    assert resp.source_size_bytes == 400_000_000
    [p] = resp.plans
    # Latency ties (130 ms) are broken by accuracy: the source (0), ort (1e-4), fp16 (1e-2).
    assert summary(p) == [
        ("onnx-int8", True),
        ("onnx", True),
        ("ort", True),
        ("onnx-fp16", True),
    ]
    int8, source, ort, fp16 = p.alternatives
    assert p.recommended == int8
    assert int8.quantization == "int8" and int8.package == ""
    assert int8.expected_size_bytes == 108_000_000
    assert int8.expected_max_abs_error == pytest.approx(0.5)
    assert int8.expected_latency_ms == pytest.approx(100 * 0.6 * 1.3)
    assert (int8.size_provenance, int8.accuracy_provenance, int8.latency_provenance) == (
        ESTIMATED,
        ESTIMATED,
        ESTIMATED,
    )
    assert int8.estimate_rule == (
        "size: int8 ~ 0.27 x fp32 size (400 MB); "
        "accuracy: <= 0.5, the conversion's acceptance bound for onnx-int8; "
        "latency: 0.25 ms per MB of fp32 weights (400 MB) x 0.6 (int8 vs fp32 speed on CPU) "
        "x compute factor 1.3 of pixel-8"
    )
    # The existing package's size is known exactly; its drift is zero by definition.
    assert source.package == vision.packages[0]
    assert source.expected_size_bytes == 400_000_000 and source.size_provenance == MEASURED
    assert source.expected_max_abs_error == 0 and source.accuracy_provenance == ESTIMATED
    assert source.expected_latency_ms == pytest.approx(130.0)
    assert "size:" not in source.estimate_rule
    assert fp16.expected_size_bytes == 200_000_000
    assert fp16.expected_max_abs_error == pytest.approx(1e-2)
    assert ort.expected_size_bytes == 400_000_000
    assert ort.expected_max_abs_error == pytest.approx(1e-4)


def test_profiles_shape_the_plan(client: Client, vision: SeededVersion) -> None:
    # Pi 4: no fp16; int8 at 100 x 0.6 x 6.0 = 360 ms.
    p = one(client, "vision", "raspberry-pi-4")
    assert summary(p) == [("onnx-int8", True), ("onnx", True), ("ort", True), ("onnx-fp16", False)]
    assert p.recommended.expected_latency_ms == pytest.approx(360.0)
    assert any("fp16" in r for r in p.alternatives[3].infeasible_reasons)
    # Pi Zero 2 W: 268 MB budget; only the 108 MB int8 fits; 100 x 0.6 x 20 = 1200 ms.
    p = one(client, "vision", "raspberry-pi-zero-2-w")
    assert summary(p) == [
        ("onnx-int8", True),
        ("onnx", False),
        ("ort", False),
        ("onnx-fp16", False),
    ]
    assert p.recommended.expected_latency_ms == pytest.approx(1200.0)
    assert "268 MB" in p.alternatives[1].infeasible_reasons[0]
    # Jetson: compute factor 0.5.
    p = one(client, "vision", "jetson-orin-nano")
    assert p.recommended.format == "onnx-int8"
    assert p.recommended.expected_latency_ms == pytest.approx(30.0)
    # All profiles when none are named, in profile order.
    assert len(plan(client, "vision").plans) == 13


def test_accuracy_tolerance_and_size_budget(client: Client, vision: SeededVersion) -> None:
    # int8's estimated 0.5 drift is over 0.05: the most accurate of the 130 ms forms wins.
    p = one(client, "vision", "pixel-8", accuracy_tolerance=0.05)
    assert p.recommended.format == "onnx" and p.recommended.package == vision.packages[0]
    int8 = next(o for o in p.alternatives if o.format == "onnx-int8")
    assert not int8.feasible
    assert int8.infeasible_reasons == [
        "onnx-int8's max abs error 0.5 (estimated) exceeds the accuracy tolerance 0.05"
    ]
    # A 150 MB size budget leaves only int8.
    p = one(client, "vision", "pixel-8", size_budget_bytes=150_000_000)
    assert [o.format for o in p.alternatives if o.feasible] == ["onnx-int8"]
    onnx = next(o for o in p.alternatives if o.format == "onnx")
    assert onnx.infeasible_reasons == ["onnx is 400 MB, over the requested size budget of 150 MB"]
    # Both: nothing qualifies, so there is no recommendation.
    p = one(client, "vision", "pixel-8", accuracy_tolerance=0.05, size_budget_bytes=150_000_000)
    assert not p.HasField("recommended")
    assert not any(o.feasible for o in p.alternatives)


def test_plan_switches_to_measured_after_a_conversion(
    registry: RunningServer, client: Client, vision: SeededVersion
) -> None:
    before = one(client, "vision", "pixel-8", accuracy_tolerance=0.05)
    assert before.recommended.package == vision.packages[0]
    assert before.recommended.latency_provenance == ESTIMATED

    # The conversion service stores an onnx-int8 package with its measurements.
    int8_name = add_package(registry.database_url, vision, INT8_CONVERTED)

    after = one(client, "vision", "pixel-8", accuracy_tolerance=0.05)
    rec = after.recommended
    assert rec.format == "onnx-int8" and rec.package == int8_name
    assert rec.expected_size_bytes == 104_000_000
    assert rec.expected_max_abs_error == pytest.approx(0.031)
    assert rec.expected_latency_ms == pytest.approx(21.0 * 1.3)
    assert (rec.size_provenance, rec.accuracy_provenance, rec.latency_provenance) == (
        MEASURED,
        MEASURED,
        MEASURED,
    )
    assert rec.estimate_rule == ""
    # The estimated int8 option is gone; the others now scale the measured latency:
    # 21 ms / 0.6 = 35 ms for fp32 on the server, x 1.3 on the Pixel 8.
    assert summary(after) == [
        ("onnx-int8", True),
        ("onnx", True),
        ("ort", True),
        ("onnx-fp16", True),
    ]
    source = after.alternatives[1]
    assert source.expected_latency_ms == pytest.approx(35.0 * 1.3)
    assert source.latency_provenance == ESTIMATED
    assert source.estimate_rule.startswith(
        "accuracy: 0, these are the source weights; latency: the measured onnx-int8 latency "
        "21 ms / 0.6 x 1 (none vs fp32 speed on CPU) x compute factor 1.3 of pixel-8"
    )


def test_compute_factor_override(
    registry: RunningServer, client: Client, vision: SeededVersion, tmp_path: Path
) -> None:
    set_profiles(
        registry.database_url, client.org, tmp_path, {"name": "pixel-8", "compute_factor": 2.0}
    )
    p = one(client, "vision", "pixel-8")
    assert p.recommended.expected_latency_ms == pytest.approx(100 * 0.6 * 2.0)
    assert "compute factor 2 of pixel-8" in p.recommended.estimate_rule


def test_no_runnable_source_leaves_no_recommendation(
    registry: RunningServer, client: Client
) -> None:
    # A TorchScript file only: phones cannot load it and nothing here converts it.
    client.models.CreateModel(
        pb.CreateModelRequest(model_id="torchy", model=models_pb2.Model(framework="pytorch"))
    )
    seed_version(
        registry.database_url,
        client.org,
        "torchy",
        [SeedPackage("pt", 50_000_000, runtime="pytorch")],
    )
    p = one(client, "torchy", "iphone-16-pro")
    assert not p.HasField("recommended")
    [only] = p.alternatives
    assert only.format == "pt" and not only.feasible
    assert len(only.infeasible_reasons) == 2  # runtime and format
    assert one(client, "torchy", "raspberry-pi-5").recommended.format == "pt"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"accuracy_tolerance": -0.1}, "accuracy_tolerance"),
        ({"accuracy_tolerance": math.nan}, "accuracy_tolerance"),
        ({"accuracy_tolerance": math.inf}, "accuracy_tolerance"),
        ({"size_budget_bytes": -1}, "size_budget_bytes"),
    ],
)
def test_bad_plan_requests(
    client: Client, vision: SeededVersion, kw: dict[str, object], field: str
) -> None:
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, plan, client, "vision", **kw)
    assert set(err.field_violations) == {field}


def test_plan_errors(client: Client, other_client: Client, vision: SeededVersion) -> None:
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, plan, client, "vision", "pixel-99")
    assert "known: iphone-16-pro" in err.field_violations["device_profiles[0]"]
    expect_error(grpc.StatusCode.NOT_FOUND, plan, other_client, "vision")
    client.models.CreateModel(
        pb.CreateModelRequest(model_id="bare", model=models_pb2.Model(framework="onnx"))
    )
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, plan, client, "bare")
