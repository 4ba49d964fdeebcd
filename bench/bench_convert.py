"""`make bench-convert`: server-side conversion of a ~100 MB model, per target.

For each target (onnx, onnx-fp16, onnx-int8, ort) this measures, in one run:

- service: ConvertArtifact over gRPC against a real server on this machine (its default
  in-process worker, the conversion in a sandbox process), from the call until the job's
  final event arrives at the client. The source was uploaded beforehand.
- direct: the same onnx / onnxruntime functions called in this one process: the ONNX
  checker and shape inference, reference outputs of the source, the conversion, and
  verification of the output (the same sample inputs and latency runs the service does).
- ratio service / direct (goal <= 1.25), the delay until the first event reaches the
  client (goal < 1 s; also shown: until the job's first `running` event), and the longest
  gap between two events at the client (goal < 2 s).

The model: a stack of transformer blocks (LayerNorm, attention MatMuls, Softmax, Gelu
feed-forward), float32, sized to about --size-mb. Service and direct runs alternate per
target so load changes on a shared machine hit both; the load average is printed.

    python bench/bench_convert.py [--size-mb 100] [--targets onnx,ort] [--repeat 3]
        [--database-url URL --object-store URL]   # default: SQLite + a temp directory
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conversion.samples import generated_feeds  # noqa: E402
from conversion.verify import Runner, compare  # noqa: E402
from modelregistry.v1 import conversion_pb2 as cpb  # noqa: E402
from modelregistry.v1 import version_service_pb2 as vpb  # noqa: E402
from support.registry import RunningServer  # noqa: E402
from support.uploads import F, upload  # noqa: E402

TARGETS = ["onnx", "onnx-fp16", "onnx-int8", "ort"]
GOAL_RATIO, GOAL_FIRST_S, GOAL_GAP_S = 1.25, 1.0, 2.0
_PIPELINE_STAGES = ("load", "check", "reference")
# Per-target tolerance for this random-weight model (the service checks it too).
TOLERANCE = {"onnx": 1e-3, "onnx-fp16": 5e-2, "onnx-int8": 1.0, "ort": 1e-3}


def transformer_stack(size_mb: float, d: int = 1024, seq: int = 16) -> bytes:
    """Blocks of 12 d*d float32 weights (4 attention + 8 feed-forward) until ~size_mb."""
    rng = np.random.default_rng(0)
    per_block = 12 * d * d * 4
    blocks = max(1, round(size_mb * 1024 * 1024 / per_block))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def w(shape: tuple[int, int], name: str) -> str:
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name
            )
        )
        return name

    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale"))
    x = "x"
    for b in range(blocks):
        p = f"b{b}_"
        for n in ("g1", "g2"):
            inits.append(numpy_helper.from_array(np.ones(d, np.float32), p + n))
        for n in ("z1", "z2"):
            inits.append(numpy_helper.from_array(np.zeros(d, np.float32), p + n))
        nodes += [
            helper.make_node("LayerNormalization", [x, p + "g1", p + "z1"], [p + "n1"], axis=-1),
            helper.make_node("MatMul", [p + "n1", w((d, d), p + "wq")], [p + "q"]),
            helper.make_node("MatMul", [p + "n1", w((d, d), p + "wk")], [p + "k"]),
            helper.make_node("MatMul", [p + "n1", w((d, d), p + "wv")], [p + "v"]),
            helper.make_node("Transpose", [p + "k"], [p + "kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [p + "q", p + "kt"], [p + "s"]),
            helper.make_node("Mul", [p + "s", "scale"], [p + "ss"]),
            helper.make_node("Softmax", [p + "ss"], [p + "pr"], axis=-1),
            helper.make_node("MatMul", [p + "pr", p + "v"], [p + "att"]),
            helper.make_node("MatMul", [p + "att", w((d, d), p + "wo")], [p + "o"]),
            helper.make_node("Add", [x, p + "o"], [p + "r1"]),
            helper.make_node(
                "LayerNormalization", [p + "r1", p + "g2", p + "z2"], [p + "n2"], axis=-1
            ),
            helper.make_node("MatMul", [p + "n2", w((d, 4 * d), p + "w1")], [p + "f1"]),
            helper.make_node("Gelu", [p + "f1"], [p + "f1g"]),
            helper.make_node("MatMul", [p + "f1g", w((4 * d, d), p + "w2")], [p + "f2"]),
            helper.make_node("Add", [p + "r1", p + "f2"], [p + "y"]),
        ]
        x = p + "y"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model.SerializeToString()


# --- direct: the same library calls in this process ------------------------------------------


def direct(source: Path, target: str, work: Path) -> tuple[float, float]:
    """(wall, CPU) seconds for check + shape inference + reference + convert + verify,
    in this process."""
    work.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    onnx.checker.check_model(str(source), full_check=True)
    inferred = work / "inferred.onnx"
    onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
    ref = Runner(inferred, 1, optimize=False)
    feeds = generated_feeds(ref.inputs)
    expected = [ref.run(f) for f in feeds]
    ref.median_latency_ms(feeds[0])
    names = ref.output_names
    del ref
    if target == "onnx":
        out = work / "out.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(inferred), so, providers=["CPUExecutionProvider"])
    elif target == "onnx-fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = work / "out.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(inferred)), keep_io_types=True), str(out))
    elif target == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre, out = work / "pre.onnx", work / "out.onnx"
        quant_pre_process(str(inferred), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    else:
        from onnxruntime.tools.convert_onnx_models_to_ort import (
            OptimizationStyle,
            convert_onnx_models_to_ort,
        )

        staged = work / "in" / "model.onnx"
        staged.parent.mkdir(exist_ok=True)
        os.link(inferred, staged) if not staged.exists() else None
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints progress
            convert_onnx_models_to_ort(
                staged, work / "ort", [OptimizationStyle.Fixed], target_platform="arm"
            )
        out = work / "ort" / "model.ort"
    runner = Runner(out, 1)
    got = [runner.run(f) for f in feeds]
    compare(expected, names, got, runner.output_names)
    runner.median_latency_ms(feeds[0])
    return time.perf_counter() - start, time.process_time() - cpu


# --- service ------------------------------------------------------------------------------


@dataclass
class ServiceRun:
    total_s: float
    cpu_s: float
    first_event_s: float
    first_running_s: float
    longest_gap_s: float
    events: int
    state: str
    stages: list[str] = field(default_factory=list)
    # (stage, seconds from its first event to the next stage's), from server timestamps
    breakdown: list[tuple[str, float]] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        """Time not spent in the sandboxed pipeline (load .. verify), which is the work the
        direct calls do: claiming, fetching, storing, recording, event delivery."""
        pipeline = sum(
            d
            for stage, d in self.breakdown
            if stage in _PIPELINE_STAGES or stage.startswith(("convert:", "verify:"))
        )
        return self.total_s - pipeline


def _cpu() -> float:
    """CPU seconds of this process (client, server, worker threads) and its reaped children
    (the sandboxes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def through_service(client: Any, resource: str, target: str) -> ServiceRun:
    cpu = _cpu()
    start = time.perf_counter()
    arrivals: list[float] = []
    events: list[cpb.ConversionEvent] = []
    for e in client.versions.ConvertArtifact(
        vpb.ConvertArtifactRequest(
            source=resource,
            spec=cpb.ConversionSpec(targets=[target], tolerance=TOLERANCE[target]),
        ),
        timeout=1800,
    ):
        arrivals.append(time.perf_counter() - start)
        events.append(e)
    total = arrivals[-1]
    time.sleep(0.5)  # let the worker reap the sandbox, so its CPU time is counted
    running = next(
        (t for t, e in zip(arrivals, events, strict=True) if e.stage == "running"), total
    )
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False)]
    breakdown: list[tuple[str, float]] = []
    stamps = [e.event_time.ToNanoseconds() / 1e9 for e in events]
    begin = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or events[i].stage != events[begin].stage:
            end = stamps[i] if i < len(events) else stamps[-1]
            breakdown.append((events[begin].stage, end - stamps[begin]))
            begin = i
    return ServiceRun(
        total_s=total,
        cpu_s=_cpu() - cpu,
        first_event_s=arrivals[0],
        first_running_s=running,
        longest_gap_s=max(gaps),
        events=len(events),
        state=cpb.ConversionJob.State.Name(events[-1].state),
        stages=[e.stage for e in events],
        breakdown=breakdown,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--object-store", default="")
    parser.add_argument("--verbose", action="store_true", help="per-stage service times")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]

    tmp = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    data = transformer_stack(args.size_mb)
    source = tmp / "model.onnx"
    source.write_bytes(data)
    print(
        f"model: transformer stack, {len(data) / 1e6:.1f} MB, load average "
        f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"
    )
    db = args.database_url or f"sqlite:///{tmp / 'registry.db'}"
    store = args.object_store or str(tmp / "blobs")
    server = RunningServer(db, store)
    rows: list[tuple[str, tuple[float, float], ServiceRun]] = []
    try:
        client = server.new_org()
        # Warm-up: a small conversion, so the worker's next sandbox is already started
        # (steady state of a running server).
        small = upload(client, "models/warmup/versions/1", F("w.onnx", transformer_stack(1, 64)))
        through_service(client, small.packages[0].resources[0].name, "onnx")
        resource = upload(client, "models/bench/versions/1", F("model.onnx", data), timeout=600)
        name = resource.packages[0].resources[0].name
        for target in targets:
            for i in range(args.repeat):
                base = direct(source, target, tmp / f"direct-{target}-{i}")
                run = through_service(client, name, target)
                if run.state != "STATE_SUCCEEDED":
                    print(f"{target}: job ended {run.state}: {run.stages}")
                rows.append((target, base, run))
                print(
                    f"  {target:10s} direct {base[0]:6.2f} s  service {run.total_s:6.2f} s  "
                    f"ratio {run.total_s / base[0]:4.2f} (CPU {base[1]:.2f} / {run.cpu_s:.2f} s)"
                    f"  overhead {run.overhead_s:4.2f} s  first event {run.first_event_s:5.3f} s"
                    f" (running {run.first_running_s:5.3f} s)  longest gap "
                    f"{run.longest_gap_s:4.2f} s",
                    flush=True,
                )
                if args.verbose:
                    print("    " + ", ".join(f"{s} {d:.2f}" for s, d in run.breakdown))
    finally:
        server.stop()
    print()
    print(
        f"{'target':10s} {'direct s':>9s} {'service s':>10s} {'ratio':>6s} {'CPU ratio':>9s} "
        f"{'overhead s':>10s} {'first ev s':>10s} {'max gap s':>9s}"
    )
    ok = True
    for target in targets:
        mine = [r for r in rows if r[0] == target]
        direct_s = statistics.median(r[1][0] for r in mine)
        svc = statistics.median(r[2].total_s for r in mine)
        cpu_ratio = statistics.median(r[2].cpu_s / r[1][1] for r in mine)
        overhead = statistics.median(r[2].overhead_s for r in mine)
        first = max(r[2].first_event_s for r in mine)
        gap = max(r[2].longest_gap_s for r in mine)
        ratio = svc / direct_s
        good = ratio <= GOAL_RATIO and first < GOAL_FIRST_S and gap < GOAL_GAP_S
        ok &= good
        print(
            f"{target:10s} {direct_s:9.2f} {svc:10.2f} {ratio:6.2f} {cpu_ratio:9.2f} "
            f"{overhead:10.2f} {first:10.3f} {gap:9.2f}  {'ok' if good else 'MISSED'}"
        )
    print(
        f"goals: ratio <= {GOAL_RATIO}, first event < {GOAL_FIRST_S} s, longest gap < "
        f"{GOAL_GAP_S} s; medians of {args.repeat} runs; load average now "
        f"{os.getloadavg()[0]:.2f}.\nCPU ratio: service CPU (this process: client, server, "
        "worker; plus its sandbox processes, including starting the next one) / direct CPU.\n"
        "overhead: service time outside the sandboxed pipeline (claim, fetch, store, record, "
        "event delivery to the client), measured within each run."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
