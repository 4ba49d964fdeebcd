"""ModelService.CheckCompatibility over a real server, on both backends.

Expected outcomes are written by hand from the shipped profile data
(domain/data/device_profiles.json): weights budgets are 25% of RAM on phones and tablets and
50% on boards; storage budgets 5% of base storage (phones, tablets) or 25% of the assumed card.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from domain.errors import InvalidArgument
from modelregistry.v1 import model_service_pb2 as pb
from modelregistry.v1 import models_pb2
from support.catalog_seed import SeedPackage, deprecate, seed_version
from support.profiles_cli import profiles_cli, set_profiles
from support.registry import Client, RunningServer
from support.status import expect_error

ALL_PROFILES = [
    "iphone-16-pro",
    "iphone-15",
    "iphone-11",
    "pixel-9-pro",
    "pixel-8",
    "galaxy-s24",
    "pixel-4a",
    "ipad-pro-11-m4",
    "galaxy-tab-s9",
    "raspberry-pi-5",
    "raspberry-pi-4",
    "raspberry-pi-zero-2-w",
    "jetson-orin-nano",
]

ONNX_14MB = SeedPackage("onnx", 14_000_000, runtime="onnxruntime")
ONNX_1_2GB = SeedPackage("onnx", 1_200_000_000, runtime="onnxruntime")
ONNX_INT8_324MB = SeedPackage(
    "onnx-int8", 324_000_000, quantization="int8", runtime="onnxruntime", source="conversion"
)
SAFETENSORS_FP16_6_5GB = SeedPackage(
    "safetensors", 6_500_000_000, quantization="fp16", runtime="pytorch"
)
GGUF_INT4_1_9GB = SeedPackage("gguf", 1_900_000_000, quantization="int4", runtime="llama.cpp")


def create(c: Client, model_id: str, framework: str = "onnx") -> None:
    c.models.CreateModel(
        pb.CreateModelRequest(model_id=model_id, model=models_pb2.Model(framework=framework))
    )


def check(c: Client, model_id: str, *profiles: str) -> pb.CheckCompatibilityResponse:
    return c.models.CheckCompatibility(
        pb.CheckCompatibilityRequest(name=f"models/{model_id}", device_profiles=list(profiles))
    )


def by_profile(resp: pb.CheckCompatibilityResponse) -> dict[str, object]:
    return {r.device_profile: r for r in resp.results}


def test_small_model_runs_on_every_profile(registry: RunningServer, client: Client) -> None:
    create(client, "mobilenet")
    seeded = seed_version(registry.database_url, client.org, "mobilenet", [ONNX_14MB])
    resp = check(client, "mobilenet")
    assert resp.catalog_version == seeded.name
    assert resp.framework == "onnx"
    assert [r.device_profile for r in resp.results] == ALL_PROFILES
    for r in resp.results:
        assert r.compatible, r.device_profile
        assert r.recommended_package == seeded.packages[0]
        assert list(r.reasons) == []


def test_medium_model_needs_int8_on_small_devices(registry: RunningServer, client: Client) -> None:
    # 1.2 GB fp32 + a 324 MB int8 conversion. Budgets: iphone-11 1 GiB (1.07 GB): only the
    # int8 fits; raspberry-pi-zero-2-w 256 MiB (268 MB): nothing fits; every other profile
    # has >= 1.5 GiB (1.61 GB) and gets the fp32 package.
    create(client, "segmenter")
    seeded = seed_version(
        registry.database_url, client.org, "segmenter", [ONNX_1_2GB, ONNX_INT8_324MB]
    )
    fp32, int8 = seeded.packages
    results = by_profile(check(client, "segmenter"))

    for name in set(ALL_PROFILES) - {"iphone-11", "raspberry-pi-zero-2-w"}:
        r = results[name]
        assert r.compatible and r.recommended_package == fp32, name  # type: ignore[attr-defined]
        assert list(r.reasons) == [], name  # type: ignore[attr-defined]

    iphone = results["iphone-11"]
    assert iphone.compatible and iphone.recommended_package == int8  # type: ignore[attr-defined]
    [reason] = iphone.reasons  # type: ignore[attr-defined]
    assert (reason.code, reason.package) == ("TOO_LARGE", fp32)
    assert "1.2 GB" in reason.message and "1.07 GB" in reason.message
    assert reason.suggested_fix == "the onnx-int8 package, 324 MB, fits"

    zero = results["raspberry-pi-zero-2-w"]
    assert not zero.compatible and zero.recommended_package == ""  # type: ignore[attr-defined]
    assert [(x.code, x.package) for x in zero.reasons] == [  # type: ignore[attr-defined]
        ("TOO_LARGE", fp32),
        ("TOO_LARGE", int8),
    ]
    # No existing or convertible form fits 268 MB; int4 (0.15 x 1.2 GB = 180 MB) would.
    for x in zero.reasons:  # type: ignore[attr-defined]
        assert x.suggested_fix == (
            "upload an int4 form in a format raspberry-pi-zero-2-w runs (onnx, ort, tflite, "
            "gguf): estimated 180 MB (int4 ~ 0.15 x fp32 size) fits the 268 MB budget"
        )


def test_large_model_every_reason_with_fixes(registry: RunningServer, client: Client) -> None:
    # A 6.5 GB fp16 safetensors checkpoint (pytorch) and a 1.9 GB int4 gguf (llama.cpp).
    create(client, "llm-3b", "pytorch")
    seeded = seed_version(
        registry.database_url, client.org, "llm-3b", [SAFETENSORS_FP16_6_5GB, GGUF_INT4_1_9GB]
    )
    st, gguf = seeded.packages
    resp = check(client, "llm-3b")
    assert resp.framework == "pytorch"
    results = by_profile(resp)
    compatible = {name for name, r in results.items() if r.compatible}  # type: ignore[attr-defined]
    # gguf (1.9 GB) fits budgets of 2 GiB (2.15 GB) and up; not 1.5 GiB, 1 GiB or 256 MiB.
    assert compatible == {
        "iphone-16-pro",
        "pixel-9-pro",
        "pixel-8",
        "galaxy-s24",
        "ipad-pro-11-m4",
        "galaxy-tab-s9",
        "raspberry-pi-5",
        "raspberry-pi-4",
        "jetson-orin-nano",
    }
    for name in compatible:
        assert results[name].recommended_package == gguf  # type: ignore[attr-defined]

    # iPhone 16 Pro: safetensors fails for every reason there is; storage budget 6.4 GB.
    r = results["iphone-16-pro"]
    assert [(x.code, x.package) for x in r.reasons] == [  # type: ignore[attr-defined]
        ("UNSUPPORTED_RUNTIME", st),
        ("NO_RUNNABLE_FORMAT", st),
        ("TOO_LARGE", st),
        ("INSUFFICIENT_STORAGE", st),
    ]
    assert {x.suggested_fix for x in r.reasons} == {  # type: ignore[attr-defined]
        "the gguf-int4 package, 1.9 GB, fits"
    }
    assert "pytorch" in r.reasons[0].message  # type: ignore[attr-defined]
    assert "6.4 GB" in r.reasons[3].message  # type: ignore[attr-defined]

    # Raspberry Pi 5 runs pytorch, safetensors and fp16; only the 4 GiB budget fails.
    r = results["raspberry-pi-5"]
    assert [x.code for x in r.reasons] == ["TOO_LARGE"]  # type: ignore[attr-defined]
    # Raspberry Pi 4 (Cortex-A72) has no fp16.
    r = results["raspberry-pi-4"]
    assert [x.code for x in r.reasons] == [  # type: ignore[attr-defined]
        "UNSUPPORTED_QUANTIZATION",
        "TOO_LARGE",
    ]
    # Jetson: 16 GB storage budget, 4 GiB weights budget.
    assert [x.code for x in results["jetson-orin-nano"].reasons] == ["TOO_LARGE"]  # type: ignore[attr-defined]

    # iPhone 15: nothing fits 1.5 GiB, and even int4 of the 13 GB fp32 equivalent would not.
    r = results["iphone-15"]
    assert not r.compatible and r.recommended_package == ""  # type: ignore[attr-defined]
    fixes = {(x.code, x.package): x.suggested_fix for x in r.reasons}  # type: ignore[attr-defined]
    assert set(fixes) == {
        ("UNSUPPORTED_RUNTIME", st),
        ("NO_RUNNABLE_FORMAT", st),
        ("TOO_LARGE", st),
        ("INSUFFICIENT_STORAGE", st),
        ("TOO_LARGE", gguf),
    }
    no_fit = (
        "no form of this model fits iphone-15: even int4 weights (estimated 1.95 GB, int4 ~ "
        "0.15 x fp32 size) exceed its 1.61 GB budget; use a smaller model, or override the "
        "profile if your devices have more memory"
    )
    assert fixes[("TOO_LARGE", gguf)] == no_fit
    assert fixes[("TOO_LARGE", st)] == no_fit
    assert fixes[("NO_RUNNABLE_FORMAT", st)].startswith(
        "upload the model in a format iphone-15 runs: coreml, onnx, ort, tflite, gguf"
    )
    assert fixes[("UNSUPPORTED_RUNTIME", st)] == (
        "provide a package for a runtime iphone-15 has: coreml, onnxruntime, "
        "onnxruntime-mobile, tflite, llama.cpp"
    )


def test_requested_profiles_in_request_order(registry: RunningServer, client: Client) -> None:
    create(client, "m")
    seed_version(registry.database_url, client.org, "m", [ONNX_1_2GB])
    resp = check(client, "m", "raspberry-pi-zero-2-w", "pixel-8", "raspberry-pi-zero-2-w")
    assert [(r.device_profile, r.compatible) for r in resp.results] == [
        ("raspberry-pi-zero-2-w", False),
        ("pixel-8", True),
    ]


def test_convertible_source_suggests_a_conversion(registry: RunningServer, client: Client) -> None:
    # Only a 400 MB fp32 ONNX: too large for the Pi Zero 2 W (268 MB), but its int8
    # conversion (0.27 x 400 MB = 108 MB) would fit.
    create(client, "detector")
    seeded = seed_version(
        registry.database_url, client.org, "detector", [SeedPackage("onnx", 400_000_000)]
    )
    [r] = check(client, "detector", "raspberry-pi-zero-2-w").results
    assert not r.compatible
    [reason] = r.reasons
    assert (reason.code, reason.package) == ("TOO_LARGE", seeded.packages[0])
    assert reason.suggested_fix == (
        "convert the onnx package to onnx-int8 with VersionService.ConvertArtifact: estimated "
        "108 MB (int8 ~ 0.27 x fp32 size (400 MB)), which fits raspberry-pi-zero-2-w"
    )


def test_resolution_latest_active_and_overrides(
    registry: RunningServer, client: Client, other_client: Client
) -> None:
    name = f"blessed-{uuid.uuid4().hex[:12]}"
    create(client, name)
    create(other_client, name)
    blessed = seed_version(registry.database_url, None, name, [ONNX_14MB])
    assert check(client, name).catalog_version == blessed.name
    # The org's override of the name beats the blessed variant, for that org only.
    own_v1 = seed_version(registry.database_url, client.org, name, [ONNX_1_2GB])
    own_v2 = seed_version(registry.database_url, client.org, name, [ONNX_14MB])
    assert check(client, name).catalog_version == own_v2.name
    assert check(other_client, name).catalog_version == blessed.name
    # Deprecating the latest falls back to the newest active one.
    deprecate(registry.database_url, own_v2)
    resp = check(client, name, "raspberry-pi-zero-2-w")
    assert resp.catalog_version == own_v1.name
    assert not resp.results[0].compatible
    deprecate(registry.database_url, own_v1)
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, check, client, name)
    assert "all are deprecated" in err.message


def test_model_without_catalog_version(registry: RunningServer, client: Client) -> None:
    create(client, "empty")
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, check, client, "empty")
    assert "has no catalog version yet" in err.message
    assert "UploadArtifacts" in err.message
    [v] = err.precondition_violations
    assert (v.type, v.subject) == ("CATALOG_VERSION", "models/empty")
    assert err.reason == "NO_CATALOG_VERSION"
    # A version without packages says what is missing too.
    seed_version(registry.database_url, client.org, "empty", [], version="1.0")
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, check, client, "empty")
    assert "no packages in its latest catalog version '1.0'" in err.message


def test_unknown_profiles_list_the_known_ones(registry: RunningServer, client: Client) -> None:
    create(client, "m")
    seed_version(registry.database_url, client.org, "m", [ONNX_14MB])
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, check, client, "m", "pixel-8", "nokia-3310", "pdp-11"
    )
    assert set(err.field_violations) == {"device_profiles[1]", "device_profiles[2]"}
    described = err.field_violations["device_profiles[1]"]
    assert "'nokia-3310'" in described
    assert "known: " + ", ".join(ALL_PROFILES) in described


def test_foreign_unknown_and_malformed_models(client: Client, other_client: Client) -> None:
    create(client, "mine")
    expect_error(grpc.StatusCode.NOT_FOUND, check, other_client, "mine")
    expect_error(grpc.StatusCode.NOT_FOUND, check, client, "nope")
    for bad in ("mine", "models/", "models/Bad Name", "models/a/versions/b"):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            client.models.CheckCompatibility,
            pb.CheckCompatibilityRequest(name=bad),
        )


def test_org_overrides_change_answers_for_that_org_only(
    registry: RunningServer, client: Client, other_client: Client, tmp_path: Path
) -> None:
    for c in (client, other_client):
        create(c, "segmenter")
        seed_version(registry.database_url, c.org, "segmenter", [ONNX_1_2GB])
    assert not check(client, "segmenter", "iphone-11").results[0].compatible
    # The org's iPhone 11 app has the increased-memory entitlement: 1.5 GiB for weights.
    assert (
        set_profiles(
            registry.database_url,
            client.org,
            tmp_path,
            {
                "name": "iphone-11",
                "weights_budget_bytes": 1_610_612_736,
                "sources": {"weights_budget_bytes": "measured in our app, 2026-10"},
            },
        )
        == 0
    )
    assert check(client, "segmenter", "iphone-11").results[0].compatible
    assert not check(other_client, "segmenter", "iphone-11").results[0].compatible

    # An org-only profile: listed after the shipped ones, unknown to other orgs.
    kiosk = {
        "name": "kiosk-x86",
        "display_name": "Our x86 kiosk",
        "ram_bytes": 4 * 2**30,
        "weights_budget_bytes": 2**30,
        "storage_bytes": 64_000_000_000,
        "storage_budget_bytes": 8_000_000_000,
        "runtimes": ["onnxruntime"],
        "formats": ["onnx"],
        "quantizations": ["none", "int8"],
        "compute_factor": 1.5,
    }
    assert set_profiles(registry.database_url, client.org, tmp_path, {"profiles": [kiosk]}) == 0
    resp = check(client, "segmenter")
    assert [r.device_profile for r in resp.results] == [*ALL_PROFILES, "kiosk-x86"]
    assert [x.code for x in by_profile(resp)["kiosk-x86"].reasons] == ["TOO_LARGE"]  # type: ignore[attr-defined]
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, check, other_client, "segmenter", "kiosk-x86"
    )
    assert "kiosk-x86" not in err.field_violations["device_profiles[0]"].split("known:")[1]

    # Deleting the override restores the shipped figures.
    assert profiles_cli(registry.database_url, "delete", "--org", client.org, "iphone-11") == 0
    assert not check(client, "segmenter", "iphone-11").results[0].compatible


@pytest.mark.parametrize(
    ("doc", "bad_field"),
    [
        ({"name": "pixel-8", "weights_budget_bytes": 9 * 2**30}, "weights_budget_bytes"),
        ({"name": "pixel-8", "compute_factor": 0}, "compute_factor"),
        ({"name": "pixel-8", "formats": ["apk"]}, "formats[0]"),
        ({"name": "pixel-8", "quantizations": []}, "quantizations"),
        ({"name": "pixel-8", "ram": 1}, "ram"),
        ({"name": "pixel-8"}, ""),
        ({"name": "New Device", "compute_factor": 1}, "name"),
        ({"name": "brand-new", "compute_factor": 1.0}, "ram_bytes"),
    ],
)
def test_bad_overrides_are_rejected_and_store_nothing(
    registry: RunningServer, client: Client, tmp_path: Path, doc: dict[str, object], bad_field: str
) -> None:
    create(client, "m")
    seed_version(registry.database_url, client.org, "m", [ONNX_14MB])
    before = check(client, "m")
    good = {"name": "iphone-11", "compute_factor": 3.0}
    with pytest.raises(InvalidArgument) as info:
        set_profiles(registry.database_url, client.org, tmp_path, [good, doc])
    expected = f"profiles[1].{bad_field}" if bad_field else "profiles[1]"
    assert expected in {v.field for v in info.value.violations}
    assert check(client, "m") == before
