"""Writes the README's benchmark table from bench/results/summary.json, between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers. Every number comes from the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MiB = 1024 * 1024


def _goal(doc: dict[str, Any]) -> str:
    goals = doc.get("goals") or ([doc["goal"]] if doc.get("goal") else [])
    return "; ".join(f"{g['text']}: **{'met' if g['met'] else 'missed'}**" for g in goals)


def _ghz(v: str) -> str:
    return v if v != "dev" else "github.com/bojand/ghz/cmd/ghz@v0.120.0"


def _load_note(sc: dict[str, Any]) -> str:
    loads = [
        d[k]["load_avg"]
        for d in sc.values()
        for k in ("ours", "mlflow", "ours_c1", "mlflow_c1")
        if isinstance(d.get(k), dict) and d[k].get("load_avg")
    ]
    if not loads:
        return ""
    return (
        f"The machine was shared with other work: its 1-minute load average was "
        f"{min(loads):.1f}-{max(loads):.1f} at the end of the loads (2 cores), so absolute "
        "figures are well below what an idle machine gives, and each registry's load ran "
        "against whatever else was running at that moment (the two run back to back)."
    )


def table(summary: dict[str, Any]) -> str:
    run, sc = summary["run"], summary["scenarios"]
    m, sw = run["machine"], run["software"]
    lines = [
        f"Measured {run['started']} with `{run['command']}` (commit {sw['commit']}) on "
        f"{m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"everything on 127.0.0.1 on this one machine. {run['models']:,} models in each "
        f"registry (the filtered list matches {run['list_matches']:,}); concurrency "
        f"{run['concurrency']}, {run['duration_s']:g} s per load after {run['warmup_s']:g} s "
        f"of warm-up; MLflow {sw['mlflow'].rsplit(' ', 1)[-1]} with {run['mlflow_workers']} "
        f"workers; {sw['postgresql']}; MinIO `{sw['minio']}`; ghz `{_ghz(sw['ghz'])}`; "
        f"{sw['wrk'].split(' [')[0]}.",
        _load_note(sc),
        "",
        "| scenario | modelregistry req/s | p50 ms | p99 ms | MLflow req/s | p50 ms | p99 ms "
        "| throughput ratio | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("get", "list", "create_model", "create_version"):
        d = sc.get(name)
        if not d:
            continue
        o, p = d["ours"], d["mlflow"]
        err = ""
        if o["errors"] or p["errors"]:
            err = f" (errors: {o['errors']} / {p['errors']})"
        lines.append(
            f"| {d['title']}{err} | {o['rps']:,.0f} | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} "
            f"| {p['rps']:,.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
            f"| {d['ratio_rps']:.2f}x | {_goal(d)} |"
        )
        if "ours_c1" in d:
            o1, p1 = d["ours_c1"], d["mlflow_c1"]
            lines.append(
                f"| {d['title']}, one request at a time | {o1['rps']:,.0f} | {o1['p50_ms']:.1f} "
                f"| {o1['p99_ms']:.1f} | {p1['rps']:,.0f} | {p1['p50_ms']:.1f} "
                f"| {p1['p99_ms']:.1f} | {o1['rps'] / p1['rps']:.2f}x | |"
            )
    a = sc.get("artifacts")
    if a and "error" in a:
        first = a["error"].strip().splitlines()[0] if a["error"].strip() else "?"
        lines += ["", f"Artifact upload/download: not measured in this run ({first[:300]})."]
    elif a:
        t = a["transfers"]
        lines += [
            "",
            f"| {a['title']} | modelregistry | MLflow proxied | MinIO direct, curl "
            "| MinIO direct, Python client | modelregistry / best direct | goal |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for direction in ("upload", "download"):
            ratio = a[f"ratio_{direction}_vs_limit"]
            goal = _goal(a) if direction == "upload" else ""
            lines.append(
                f"| {direction}, MiB/s | {t[f'{direction}/modelregistry']['mib_per_s']:.0f} "
                f"| {t[f'{direction}/mlflow']['mib_per_s']:.0f} "
                f"| {t[f'{direction}/minio-curl']['mib_per_s']:.0f} "
                f"| {t[f'{direction}/minio-py']['mib_per_s']:.0f} | {ratio:.2f}x | {goal} |"
            )
        lines.append(
            f"| server peak RSS during upload, MiB "
            f"| {t['upload/modelregistry']['peak_rss_bytes'] / MiB:.0f} "
            f"(idle {t['upload/modelregistry']['idle_rss_bytes'] / MiB:.0f}) "
            f"| {t['upload/mlflow']['peak_rss_bytes'] / MiB:.0f} "
            f"(idle {t['upload/mlflow']['idle_rss_bytes'] / MiB:.0f}, all workers) | | | | |"
        )
    lines += [
        "",
        "Charts: "
        + ", ".join(f"[`{n}`](bench/results/{n}.png)" for n in sc if "error" not in sc[n])
        + "; raw numbers in `bench/results/*.json`.",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, summary_path: Path) -> None:
    summary = json.loads(summary_path.read_text())
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} lacks the {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(summary)}\n{END}{tail}")


if __name__ == "__main__":
    update_readme(Path(sys.argv[1]), Path(sys.argv[2]))
