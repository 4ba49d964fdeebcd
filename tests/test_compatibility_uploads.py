"""CheckCompatibility and GetOptimizationPlan on catalog versions made by real uploads
(VersionService.UploadArtifacts), on both backends. Large sizes are covered by the seeded
tests in test_compatibility.py; these files are small real ones."""

from __future__ import annotations

from modelregistry.v1 import compatibility_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as pb
from support.registry import Client
from support.uploads import F, random_bytes, upload


def test_uploaded_versions_are_checked_and_planned(client: Client) -> None:
    first = upload(
        client,
        "models/kws/versions/1",
        F("kws.onnx", random_bytes(3_000_000)),
        F("kws_int8.tflite", random_bytes(800_000), fmt="tflite", extra={"quantization": "int8"}),
    )
    onnx, tflite = (p.name for p in first.packages)
    resp = client.models.CheckCompatibility(pb.CheckCompatibilityRequest(name="models/kws"))
    assert resp.catalog_version == first.catalog_version.name
    for r in resp.results:
        assert r.compatible, r.device_profile
        # The most accurate package that runs: the fp32 ONNX everywhere.
        assert r.recommended_package == onnx, r.device_profile
        if r.device_profile == "jetson-orin-nano":  # no TensorFlow Lite on the Jetson profile
            assert [(x.code, x.package) for x in r.reasons] == [
                ("UNSUPPORTED_RUNTIME", tflite),
                ("NO_RUNNABLE_FORMAT", tflite),
            ]
            assert {x.suggested_fix for x in r.reasons} == {"the onnx package, 3 MB, fits"}
        else:
            assert list(r.reasons) == [], r.device_profile

    [plan] = client.models.GetOptimizationPlan(
        pb.GetOptimizationPlanRequest(name="models/kws", device_profiles=["pixel-8"])
    ).plans
    by_format = {o.format: o for o in plan.alternatives}
    assert set(by_format) == {"onnx", "tflite", "onnx-fp16", "onnx-int8", "ort"}
    uploaded = by_format["tflite"]
    assert uploaded.package == tflite and uploaded.quantization == "int8"
    assert uploaded.expected_size_bytes == 800_000
    assert uploaded.size_provenance == cpb.PROVENANCE_MEASURED
    # No conversion measured it: drift and latency are estimates.
    assert uploaded.accuracy_provenance == cpb.PROVENANCE_ESTIMATED
    assert by_format["onnx-int8"].expected_size_bytes == 810_000  # 0.27 x 3 MB

    # A new version becomes the one checked.
    second = upload(client, "models/kws/versions/2", F("kws.onnx", random_bytes(2_000_000)))
    resp = client.models.CheckCompatibility(
        pb.CheckCompatibilityRequest(name="models/kws", device_profiles=["jetson-orin-nano"])
    )
    assert resp.catalog_version == second.catalog_version.name
    [r] = resp.results
    assert r.compatible and list(r.reasons) == []
