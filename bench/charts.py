"""One PNG chart per scenario from bench/results/*.json (run with .venv-bench's python).

.venv-bench/bin/python bench/charts.py bench/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

OURS, PEER, LIMIT = "#1f77b4", "#ff7f0e", "#7f7f7f"
MiB = 1024 * 1024


def _label(bars: Any, ax: Any, fmt: str) -> None:
    for b in bars:
        h = b.get_height()
        ax.annotate(
            fmt.format(h),
            (b.get_x() + b.get_width() / 2, h),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )


def load_chart(doc: dict[str, Any], path: Path) -> None:
    run = doc.get("run", {})
    ours, peer = doc["ours"], doc["mlflow"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    bars = a1.bar(["modelregistry", "MLflow"], [ours["rps"], peer["rps"]], color=[OURS, PEER])
    _label(bars, a1, "{:,.0f}")
    a1.set_ylabel("successful requests / s")
    a1.set_title(f"throughput ({doc['ratio_rps']:.2f}x)")
    xs = range(2)
    w = 0.38
    b1 = a2.bar(
        [x - w / 2 for x in xs],
        [ours["p50_ms"], ours["p99_ms"]],
        w,
        label="modelregistry",
        color=OURS,
    )
    b2 = a2.bar(
        [x + w / 2 for x in xs], [peer["p50_ms"], peer["p99_ms"]], w, label="MLflow", color=PEER
    )
    _label(b1, a2, "{:.1f}")
    _label(b2, a2, "{:.1f}")
    a2.set_xticks(list(xs), ["p50", "p99"])
    a2.set_ylabel("latency (ms)")
    a2.set_title("latency")
    a2.legend(fontsize=8)
    if doc["scenario"] == "list":
        a2.axhline(20, color="red", linestyle="--", linewidth=0.8)
    fig.suptitle(
        f"{doc['title']}: {run.get('models', 0):,} models, concurrency "
        f"{run.get('concurrency')}, {run.get('duration_s')} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def artifacts_chart(doc: dict[str, Any], path: Path) -> None:
    t = doc["transfers"]
    names = [
        ("modelregistry", "modelregistry", OURS),
        ("mlflow", "MLflow proxied", PEER),
        ("minio-curl", "MinIO direct (curl)", LIMIT),
        ("minio-py", "MinIO direct (py)", LIMIT),
    ]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = range(len(names))
    w = 0.38
    up = [t[f"upload/{k}"]["mib_per_s"] for k, _, _ in names]
    down = [t[f"download/{k}"]["mib_per_s"] for k, _, _ in names]
    b1 = a1.bar([x - w / 2 for x in xs], up, w, label="upload", color=[c for *_, c in names])
    b2 = a1.bar(
        [x + w / 2 for x in xs], down, w, label="download", color=[c for *_, c in names], alpha=0.55
    )
    _label(b1, a1, "{:.0f}")
    _label(b2, a1, "{:.0f}")
    a1.set_xticks(list(xs), [label for _, label, _ in names], fontsize=8)
    a1.set_ylabel("MiB/s (solid: upload, light: download)")
    a1.set_title("throughput")
    srv = [("modelregistry", OURS), ("mlflow", PEER)]
    idle = [t[f"upload/{k}"]["idle_rss_bytes"] / MiB for k, _ in srv]
    peak = [t[f"upload/{k}"]["peak_rss_bytes"] / MiB for k, _ in srv]
    b3 = a2.bar([x - w / 2 for x in range(2)], idle, w, color=[c for _, c in srv], alpha=0.55)
    b4 = a2.bar([x + w / 2 for x in range(2)], peak, w, color=[c for _, c in srv])
    _label(b3, a2, "{:.0f}")
    _label(b4, a2, "{:.0f}")
    a2.set_xticks(range(2), ["modelregistry", "MLflow (all workers)"])
    a2.set_ylabel("server RSS, MiB (light: before, solid: peak)")
    a2.set_title("server memory during upload")
    fig.suptitle(doc["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(results: Path) -> None:
    for f in sorted(results.glob("*.json")):
        if f.name == "summary.json" or f.name.endswith("-profile.json"):
            continue
        doc = json.loads(f.read_text())
        if "error" in doc:
            continue
        out = f.with_suffix(".png")
        if doc.get("scenario") == "artifacts":
            artifacts_chart(doc, out)
        elif "ours" in doc:
            load_chart(doc, out)
        print(f"bench: chart {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
