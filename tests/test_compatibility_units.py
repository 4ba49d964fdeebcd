"""The shipped device profile data and the estimate tables, without a server."""

from __future__ import annotations

import json
from importlib import resources

from conversion.spec import TARGETS
from domain import device_fit, device_profiles, optimization_plans

REQUIRED_SOURCES = {
    "cpu",
    "accelerator",
    "ram_bytes",
    "storage_bytes",
    "runtimes",
    "quantizations",
    "weights_budget_bytes",
    "storage_budget_bytes",
    "compute_factor",
}


def _raw() -> dict[str, object]:
    text = resources.files("domain.data").joinpath("device_profiles.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def test_shipped_profiles_cover_the_device_classes() -> None:
    shipped = device_profiles.shipped()
    assert shipped.data_version == _raw()["data_version"]
    profiles = shipped.profiles
    assert len(profiles) >= 12
    classes = {(p.platform, p.device_class) for p in profiles}
    assert ("ios", "phone") in classes and ("android", "phone") in classes
    assert any(c == "tablet" for _, c in classes)
    assert ("linux", "single-board-computer") in classes
    assert ("linux", "edge-gpu-module") in classes
    names = [p.name for p in profiles]
    assert {"raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano"} <= set(names)


def test_every_figure_cites_a_source_and_budgets_follow_the_policy() -> None:
    for p in device_profiles.shipped().profiles:
        assert set(p.sources) >= REQUIRED_SOURCES, p.name
        assert all(s.strip() for s in p.sources.values()), p.name
        share = 0.25 if p.device_class in ("phone", "tablet") else 0.5
        assert p.weights_budget_bytes == int(p.ram_bytes * share), p.name
        card = 0.05 if p.device_class in ("phone", "tablet") else 0.25
        assert p.storage_budget_bytes == int(p.storage_bytes * card), p.name
        assert p.compute_factor > 0


def test_conversion_targets_agree_with_the_conversion_service() -> None:
    assert set(optimization_plans.CONVERSION_TARGETS) == set(TARGETS)
    for name, (quantization, runtime) in optimization_plans.CONVERSION_TARGETS.items():
        t = TARGETS[name]
        assert (t.format, t.quantization, t.runtime) == (name, quantization, runtime)
        # Estimated drift is the conversion's acceptance bound.
        assert optimization_plans.ERROR_BOUND[quantization] == t.default_tolerance


def test_human_bytes() -> None:
    h = device_fit.human_bytes
    assert [h(0), h(999), h(1000), h(112_000_000), h(999_600_000), h(2_147_483_648)] == [
        "0 B",
        "999 B",
        "1 kB",
        "112 MB",
        "1 GB",
        "2.15 GB",
    ]
