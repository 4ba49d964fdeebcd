"""conversion/ on its own: the pipeline in this process, and the sandbox process."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conversion.errors import ConversionError
from conversion.pipeline import Limits, Result, run
from conversion.samples import generated_feeds
from conversion.sandbox import Request, Sandbox, SandboxLimits
from conversion.spec import TARGETS, Spec
from conversion.verify import Runner
from support import onnx_models as models

ALL = tuple(TARGETS)


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def convert(tmp: Path, data: bytes, spec: Spec, name: str = "m.onnx") -> tuple[Result, list]:
    events: list[tuple[str, float, str]] = []
    result = run(write(tmp, name, data), tmp / "out", spec, lambda *e: events.append(e))
    return result, events


def fresh_error(source: Path, output: Path, calibration: list[dict] | None = None) -> float:
    """Max abs error of `output` vs `source` recomputed here with plain onnxruntime."""
    src = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    out = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    feeds = calibration or generated_feeds(Runner(source, 1).inputs)
    worst = 0.0
    for feed in feeds:
        want = src.run(None, feed)
        cast = {
            i.name: feed[i.name].astype(np.float16) if i.type == "tensor(float16)" else feed[i.name]
            for i in out.get_inputs()
        }
        got = out.run([o.name for o in src.get_outputs()], cast)
        for a, b in zip(want, got, strict=True):
            worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return worst


@pytest.mark.parametrize(
    "build", [models.mlp, models.cnn, models.transformer_block], ids=["mlp", "cnn", "transformer"]
)
def test_every_target_converts_and_verifies(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    result, events = convert(tmp_path, build(), Spec(ALL))
    assert [t.target for t in result.targets] == list(ALL)
    for t in result.targets:
        assert t.ok, t.error
        assert t.metrics is not None
        primary = t.files[0].path
        assert t.metrics.size_bytes == primary.stat().st_size
        assert t.metrics.max_abs_error <= TARGETS[t.target].default_tolerance
        assert 0.99 < t.metrics.mean_cosine_similarity <= 1.0 + 1e-9
        assert t.metrics.median_latency_ms > 0
        again = fresh_error(tmp_path / "src" / "m.onnx", primary)
        assert again == pytest.approx(t.metrics.max_abs_error, rel=1e-3, abs=1e-6)
    # progress: stages in pipeline order, fractions never go backwards, ending at 1
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    stages = [s for s, _, _ in events]
    assert stages[:3] == ["load", "check", "reference"]
    order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    expected = ["load", "check", "reference"]
    for t in ALL:
        expected += [f"convert:{t}", f"verify:{t}"]
    assert order == expected


def test_targets_have_their_forms(tmp_path: Path) -> None:
    result, _ = convert(tmp_path, models.transformer_block(), Spec(ALL))
    by = {t.target: t for t in result.targets}
    fp16 = onnx.load(str(by["onnx-fp16"].files[0].path))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer), (
        "weights are float16"
    )
    int8 = onnx.load(str(by["onnx-int8"].files[0].path))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in int8.graph.node)
    assert by["onnx-int8"].method == "dynamic"
    ort_files = by["ort"].files
    assert [f.kind for f in ort_files] == ["weights", "operators-config"]
    assert ort_files[0].path.suffix == ".ort"
    config = ort_files[1].path.read_text()
    assert "ai.onnx;20;Gelu" in config and "ai.onnx;17;LayerNormalization" in config
    assert str(tmp_path) not in config, "no server paths leak into the sidecar"


def test_fp16_io_kept_fp16_when_asked(tmp_path: Path) -> None:
    result, _ = convert(tmp_path, models.mlp(), Spec(("onnx-fp16",), fp16_keep_io_types_fp16=True))
    (t,) = result.targets
    assert t.ok, t.error
    model = onnx.load(str(t.files[0].path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_calibration_inputs_give_static_qdq_and_are_used_for_verification(tmp_path: Path) -> None:
    blobs = models.mlp_calibration(4)
    paths = [write(tmp_path, f"c{i}.npz", b) for i, b in enumerate(blobs)]
    result, _ = convert(tmp_path, models.mlp(), Spec(("onnx-int8",), calibration=tuple(paths)))
    (t,) = result.targets
    assert t.ok, t.error
    assert t.method == "static-qdq"
    assert t.metrics is not None and t.metrics.sample_inputs == "calibration"
    assert t.metrics.samples == 4
    model = onnx.load(str(t.files[0].path))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    feeds = [dict(np.load(p)) for p in paths]
    assert fresh_error(tmp_path / "src" / "m.onnx", t.files[0].path, feeds) == pytest.approx(
        t.metrics.max_abs_error, rel=1e-3, abs=1e-6
    )


def test_output_above_tolerance_fails_and_says_why(tmp_path: Path) -> None:
    result, _ = convert(tmp_path, models.mlp(), Spec(("onnx", "onnx-int8"), tolerance=1e-9))
    onnx_result, int8 = result.targets
    assert onnx_result.ok  # exact
    assert not int8.ok
    assert "exceeds the tolerance 1e-09" in int8.error
    assert int8.metrics is not None and int8.metrics.max_abs_error > 1e-9


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (models.not_onnx(), "not a valid ONNX model"),
        (models.random_bytes(), "not a valid ONNX model"),
        (models.truncated(), "not a valid ONNX model"),
        (models.path_traversal(), "outside the model's own directory"),
        (models.absurd_tensor(), "3.6 TiB"),
        (models.future_opset(), "opset 99; supported opsets are 1 to"),
        (b"", "empty"),
    ],
    ids=["text", "random", "truncated", "traversal", "absurd", "opset", "empty"],
)
def test_bad_input_is_a_readable_error(tmp_path: Path, data: bytes, expected: str) -> None:
    with pytest.raises(ConversionError) as err:
        convert(tmp_path, data, Spec(("onnx",)))
    assert expected in err.value.message
    assert not any((tmp_path / "out").rglob("*.ort"))


def test_calibration_not_matching_the_model(tmp_path: Path) -> None:
    bad = write(tmp_path, "c.npz", models.npz(wrong=np.zeros((1, 32), np.float32)))
    with pytest.raises(ConversionError, match="no array for model input 'x'"):
        convert(tmp_path, models.mlp(), Spec(("onnx",), calibration=(bad,)))
    shape = write(tmp_path, "s.npz", models.npz(x=np.zeros((1, 7), np.float32)))
    with pytest.raises(ConversionError, match="expects"):
        convert(tmp_path, models.mlp(), Spec(("onnx",), calibration=(shape,)))


def test_external_data_inside_the_model_dir_is_accepted(tmp_path: Path) -> None:
    model = onnx.load_from_string(models.mlp())
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(
        model,
        str(src / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    result = run(src / "m.onnx", tmp_path / "out", Spec(("onnx", "ort")), lambda *e: None)
    assert all(t.ok for t in result.targets), [t.error for t in result.targets]
    assert result.source.external_data_files == ("m.data",)


def test_long_steps_keep_reporting(tmp_path: Path) -> None:
    """The ticker reports a long library call at least every tick."""
    from conversion.pipeline import ticking

    seen: list[float] = []
    with ticking(lambda s, f, m: seen.append(f), "x", 0.0, 0.5, "busy", 0.05):
        time.sleep(0.32)
    assert len(seen) >= 4
    assert seen == sorted(seen) and seen[-1] < 0.5


# --- the sandbox --------------------------------------------------------------------------


def drain(box: Sandbox, timeout: float = 120) -> list[dict]:
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msgs = box.read(0.5)
        if msgs is None:
            return out
        out += msgs
    raise AssertionError("sandbox did not finish")


def test_sandbox_runs_the_pipeline(tmp_path: Path) -> None:
    src = write(tmp_path, "m.onnx", models.cnn())
    box = Sandbox.start(SandboxLimits(memory_mb=2048, cpu_seconds=60), tmp_path / "logs")
    try:
        box.submit(Request(source=str(src), work_dir=str(tmp_path / "w"), targets=["onnx", "ort"]))
        msgs = drain(box)
    finally:
        box.kill()
    assert msgs[0]["type"] == "progress" and msgs[0]["stage"] == "load"
    final = msgs[-1]
    assert final["type"] == "result"
    assert [t["ok"] for t in final["targets"]] == [True, True]


def test_sandbox_reports_bad_input_as_error(tmp_path: Path) -> None:
    src = write(tmp_path, "m.onnx", models.path_traversal())
    box = Sandbox.start(SandboxLimits(memory_mb=2048, cpu_seconds=60), tmp_path / "logs")
    try:
        box.submit(Request(source=str(src), work_dir=str(tmp_path / "w"), targets=["onnx"]))
        msgs = drain(box)
    finally:
        box.kill()
    assert msgs[-1]["type"] == "error"
    assert "outside the model's own directory" in msgs[-1]["message"]


def test_sandbox_memory_limit_and_kill_are_reported(tmp_path: Path) -> None:
    src = write(tmp_path, "m.onnx", models.cnn())
    # Far too little address space to even import onnxruntime.
    box = Sandbox.start(SandboxLimits(memory_mb=64, cpu_seconds=60), tmp_path / "logs")
    box.submit(Request(source=str(src), work_dir=str(tmp_path / "w"), targets=["onnx"]))
    assert drain(box) == []
    death = box.death()
    box.kill()
    assert "memory" in death.reason, death.reason

    box = Sandbox.start(SandboxLimits(memory_mb=2048, cpu_seconds=60), tmp_path / "logs")
    box.proc.kill()
    assert box.read(5) in (None, [])
    death = box.death()
    box.kill()
    assert death.retryable and "SIGKILL" in death.reason


def test_limits_budget_declared_tensors() -> None:
    assert SandboxLimits(memory_mb=4096).max_tensor_bytes == 1024**3
    assert Limits().max_file_bytes == 2 * 1024**3


# --- the structural scan ------------------------------------------------------------------


def _with_subgraphs_and_sparse() -> bytes:
    """An If node whose branches hold Constant tensors, plus a sparse initializer."""
    model = onnx.load_from_string(models.mlp())
    then_graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node(
                "Constant",
                [],
                ["t"],
                value=onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "tc"),
            )
        ],
        "then",
        [],
        [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2, 3])],
    )
    else_graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node(
                "Constant",
                [],
                ["e"],
                value=onnx.numpy_helper.from_array(np.zeros((2, 3), np.float32), "ec"),
            )
        ],
        "else",
        [],
        [onnx.helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2, 3])],
    )
    model.graph.node.append(
        onnx.helper.make_node("If", ["cond"], ["z"], then_branch=then_graph, else_branch=else_graph)
    )
    sparse = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "sp"),
        onnx.numpy_helper.from_array(np.array([1, 7], np.int64), "sp_idx"),
        [4, 5],
    )
    model.graph.sparse_initializer.append(sparse)
    return model.SerializeToString()


@pytest.mark.parametrize(
    "build",
    [models.mlp, models.cnn, models.transformer_block, _with_subgraphs_and_sparse],
    ids=["mlp", "cnn", "transformer", "subgraphs"],
)
def test_scan_agrees_with_onnx(tmp_path: Path, build) -> None:  # type: ignore[no-untyped-def]
    from conversion import wire

    data = build()
    path = write(tmp_path, "m.onnx", data)
    summary = wire.scan(path)
    model = onnx.load_from_string(data)
    assert summary.ir_version == model.ir_version
    assert summary.opsets == [(o.domain, o.version) for o in model.opset_import]
    assert summary.node_count == len(model.graph.node)
    expected = {(t.name, t.data_type, tuple(t.dims)) for t in model.graph.initializer} | {
        (s.values.name, s.values.data_type, tuple(s.dims)) for s in model.graph.sparse_initializer
    }
    for node in model.graph.node:
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else []:
                for n in g.node:
                    for a in n.attribute:
                        expected.add((a.t.name, a.t.data_type, tuple(a.t.dims)))
    got = {(t.name, t.data_type, tuple(dims)) for _, t, dims in summary.tensors}
    assert expected <= got


def test_scan_of_damaged_files_fails_cleanly(tmp_path: Path) -> None:
    """Truncations and byte flips either scan or raise WireError, never anything else."""
    from conversion import wire

    data = models.transformer_block()
    rng = np.random.default_rng(3)
    cases = [data[:n] for n in rng.integers(1, len(data), 40)]
    for _ in range(40):
        flipped = bytearray(data[:4096])
        for i in rng.integers(0, len(flipped), 8):
            flipped[i] = int(rng.integers(0, 256))
        cases.append(bytes(flipped))
    for i, case in enumerate(cases):
        path = write(tmp_path, f"d{i}.onnx", case)
        with contextlib.suppress(wire.WireError):
            wire.scan(path)
