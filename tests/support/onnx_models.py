"""Small ONNX models built with onnx.helper and numpy, and broken ones, for conversion tests.

Weights are scaled (1/sqrt(fan_in)) so outputs stay around 1 and float16/int8 errors stay
well inside the default tolerances.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 7


def _w(
    rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, name: str
) -> onnx.TensorProto:
    return numpy_helper.from_array(
        (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name
    )


def _model(graph: onnx.GraphProto, opset: int, ir: int = 9) -> bytes:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelregistry-tests"
    )
    model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def mlp(inputs: int = 32, hidden: int = 64, outputs: int = 10, layers: int = 2) -> bytes:
    """Gemm/Relu stack: x[batch, inputs] -> y[batch, outputs]."""
    rng = np.random.default_rng(SEED)
    nodes, inits = [], []
    prev, width = "x", inputs
    for i in range(layers):
        out_w = outputs if i == layers - 1 else hidden
        inits += [
            _w(rng, (width, out_w), width, f"w{i}"),
            numpy_helper.from_array(np.zeros(out_w, np.float32), f"b{i}"),
        ]
        name = "y" if i == layers - 1 else f"h{i}"
        pre = name if i == layers - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [pre]))
        if i != layers - 1:
            nodes.append(helper.make_node("Relu", [pre], [name]))
        prev, width = name, out_w
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        inits,
    )
    return _model(graph, 17)


def cnn(channels: int = 8, size: int = 16, classes: int = 10) -> bytes:
    """Conv/Relu/MaxPool x2, Flatten, MatMul: x[N, 3, size, size] -> y[N, classes]."""
    rng = np.random.default_rng(SEED)
    c2 = channels * 2
    flat = c2 * (size // 4) * (size // 4)
    inits = [
        _w(rng, (channels, 3, 3, 3), 27, "c1"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "c1b"),
        _w(rng, (c2, channels, 3, 3), channels * 9, "c2"),
        _w(rng, (flat, classes), flat, "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("MaxPool", ["ar"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("MaxPool", ["br"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _model(graph, 17, ir=8)


def transformer_block(d_model: int = 64, seq: int = 8, ff: int = 4) -> bytes:
    """Pre-norm block: LayerNorm, single-head self-attention (MatMul, Softmax), residual,
    LayerNorm, MatMul-Gelu-MatMul feed-forward, residual. Opset 20 (Gelu)."""
    rng = np.random.default_rng(SEED)
    d, h = d_model, d_model * ff
    inits = [
        numpy_helper.from_array(np.ones(d, np.float32), "g1"),
        numpy_helper.from_array(np.zeros(d, np.float32), "b1"),
        numpy_helper.from_array(np.ones(d, np.float32), "g2"),
        numpy_helper.from_array(np.zeros(d, np.float32), "b2"),
        _w(rng, (d, d), d, "wq"),
        _w(rng, (d, d), d, "wk"),
        _w(rng, (d, d), d, "wv"),
        _w(rng, (d, d), d, "wo"),
        _w(rng, (d, h), d, "w1"),
        _w(rng, (h, d), h, "w2"),
        numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["n1"], axis=-1),
        helper.make_node("MatMul", ["n1", "wq"], ["q"]),
        helper.make_node("MatMul", ["n1", "wk"], ["k"]),
        helper.make_node("MatMul", ["n1", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["att"]),
        helper.make_node("MatMul", ["att", "wo"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["r1"]),
        helper.make_node("LayerNormalization", ["r1", "g2", "b2"], ["n2"], axis=-1),
        helper.make_node("MatMul", ["n2", "w1"], ["f1"]),
        helper.make_node("Gelu", ["f1"], ["f1g"]),
        helper.make_node("MatMul", ["f1g", "w2"], ["f2"]),
        helper.make_node("Add", ["r1", "f2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, d])],
        inits,
    )
    return _model(graph, 20, ir=10)


def wide_mlp(width: int, layers: int) -> bytes:
    """An MLP of `layers` width x width MatMuls (4 * width**2 bytes each), for size tests."""
    return mlp(inputs=width, hidden=width, outputs=width, layers=layers)


# --- bad inputs -------------------------------------------------------------------------------


def not_onnx() -> bytes:
    return b"this is a text file, not a model\n" * 40


def random_bytes(n: int = 4096) -> bytes:
    return np.random.default_rng(SEED).integers(0, 256, n, dtype=np.uint8).tobytes()


def truncated() -> bytes:
    data = cnn()
    return data[: len(data) // 2]


def path_traversal() -> bytes:
    """An initializer whose external data points at ../../../../etc/passwd."""
    model = onnx.load_from_string(mlp())
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    return model.SerializeToString()


def absurd_tensor() -> bytes:
    """An initializer declaring 100000 x 100000 x 100 floats (4 TB) with 16 bytes of data."""
    model = onnx.load_from_string(mlp())
    big = TensorProto()
    big.name = "huge"
    big.data_type = TensorProto.FLOAT
    big.dims.extend([100_000, 100_000, 100])
    big.raw_data = b"\0" * 16
    model.graph.initializer.append(big)
    return model.SerializeToString()


def future_opset(version: int = 99) -> bytes:
    model = onnx.load_from_string(mlp())
    model.opset_import[0].version = version
    return model.SerializeToString()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def mlp_calibration(count: int = 4, inputs: int = 32, batch: int = 2) -> list[bytes]:
    rng = np.random.default_rng(SEED + 1)
    return [npz(x=rng.standard_normal((batch, inputs)).astype(np.float32)) for _ in range(count)]


def slow_cnn(size: int = 256, channels: int = 32, layers: int = 6) -> bytes:
    """Few weights, much compute: 3x3 convolutions over a fixed size x size image. Tiny on
    disk, seconds of work per conversion: for cancellation and killed-worker tests."""
    rng = np.random.default_rng(SEED)
    inits = [_w(rng, (channels, 3, 3, 3), 27, "c0")]
    nodes = [helper.make_node("Conv", ["x", "c0"], ["a0"], pads=[1, 1, 1, 1])]
    for i in range(1, layers):
        inits.append(_w(rng, (channels, channels, 3, 3), channels * 9, f"c{i}"))
        nodes.append(helper.make_node("Relu", [f"a{i - 1}"], [f"r{i}"]))
        nodes.append(helper.make_node("Conv", [f"r{i}", f"c{i}"], [f"a{i}"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("ReduceMean", [f"a{layers - 1}"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        inits,
    )
    return _model(graph, 17, ir=8)
