"""A structural scan of an ONNX file without parsing it as a whole.

The safety checks need a model's header (IR version, opsets), its node count and every
tensor's name, type, dimensions and data location, not the weights themselves. Reading
those straight from the protobuf wire format over a memory map touches only the pages
holding them: a 2 GiB model is checked in milliseconds and without first being loaded into
memory (which is what a hostile file would want). Field numbers come from onnx's own
message descriptors; everything else in the file is skipped.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _num(message: type, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)  # type: ignore[attr-defined]


M_IR = _num(onnx.ModelProto, "ir_version")
M_OPSET = _num(onnx.ModelProto, "opset_import")
M_GRAPH = _num(onnx.ModelProto, "graph")
M_FUNCTIONS = _num(onnx.ModelProto, "functions")
M_PRODUCER = _num(onnx.ModelProto, "producer_name")
M_PRODUCER_VERSION = _num(onnx.ModelProto, "producer_version")
O_DOMAIN = _num(onnx.OperatorSetIdProto, "domain")
O_VERSION = _num(onnx.OperatorSetIdProto, "version")
G_NODE = _num(onnx.GraphProto, "node")
G_INITIALIZER = _num(onnx.GraphProto, "initializer")
G_SPARSE = _num(onnx.GraphProto, "sparse_initializer")
F_NODE = _num(onnx.FunctionProto, "node")
N_NAME = _num(onnx.NodeProto, "name")
N_OP = _num(onnx.NodeProto, "op_type")
N_ATTR = _num(onnx.NodeProto, "attribute")
A_NAME = _num(onnx.AttributeProto, "name")
A_T = _num(onnx.AttributeProto, "t")
A_G = _num(onnx.AttributeProto, "g")
A_TENSORS = _num(onnx.AttributeProto, "tensors")
A_GRAPHS = _num(onnx.AttributeProto, "graphs")
A_SPARSE = _num(onnx.AttributeProto, "sparse_tensor")
A_SPARSES = _num(onnx.AttributeProto, "sparse_tensors")
S_VALUES = _num(onnx.SparseTensorProto, "values")
S_INDICES = _num(onnx.SparseTensorProto, "indices")
S_DIMS = _num(onnx.SparseTensorProto, "dims")
T_DIMS = _num(onnx.TensorProto, "dims")
T_TYPE = _num(onnx.TensorProto, "data_type")
T_NAME = _num(onnx.TensorProto, "name")
T_LOCATION = _num(onnx.TensorProto, "data_location")
T_EXTERNAL = _num(onnx.TensorProto, "external_data")
E_KEY = _num(onnx.StringStringEntryProto, "key")
E_VALUE = _num(onnx.StringStringEntryProto, "value")

MAX_DEPTH = 64


@dataclass
class Tensor:
    where: str
    name: str = ""
    data_type: int = 0
    dims: list[int] = field(default_factory=list)
    data_location: int = 0
    external: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    ir_version: int = 0
    opsets: list[tuple[str, int]] = field(default_factory=list)
    has_graph: bool = False
    node_count: int = 0
    producer: str = ""
    producer_version: str = ""
    # (description, tensor, dims of its dense form)
    tensors: list[tuple[str, Tensor, list[int]]] = field(default_factory=list)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or offset, length) of each field in buf[start:end];
    for length-delimited fields the value is the offset of the payload."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
        elif wire == 1:
            if pos + 8 > end:
                raise WireError("truncated fixed64")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little"), 0
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise WireError("a length-delimited field runs past its message")
            yield number, wire, pos, length
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise WireError("truncated fixed32")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little"), 0
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire}")


def _text(buf: memoryview, offset: int, length: int) -> str:
    try:
        return bytes(buf[offset : offset + length]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a string field is not valid UTF-8") from None


def _signed(value: int) -> int:
    """int64 fields carry two's complement in a 64-bit varint."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _repeated_ints(buf: memoryview, wire: int, value: int, length: int, out: list[int]) -> None:
    if wire == 0:
        out.append(_signed(value))
    elif wire == 2:  # packed
        pos, end = value, value + length
        while pos < end:
            v, pos = _varint(buf, pos, end)
            out.append(_signed(v))
    else:
        raise WireError("bad encoding of a repeated integer field")


class _Scanner:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.summary = Summary()

    def model(self) -> Summary:
        s, buf = self.summary, self.buf
        for number, wire, value, length in _fields(buf, 0, len(buf)):
            if number == M_IR and wire == 0:
                s.ir_version = _signed(value)
            elif number == M_OPSET and wire == 2:
                s.opsets.append(self.opset(value, length))
            elif number == M_GRAPH and wire == 2:
                s.has_graph = True
                s.node_count += self.graph(value, length, 0, top=True)
            elif number == M_FUNCTIONS and wire == 2:
                for n, w, v, ln in _fields(buf, value, value + length):
                    if n == F_NODE and w == 2:
                        self.node(v, ln, 1)
            elif number == M_PRODUCER and wire == 2:
                s.producer = _text(buf, value, length)
            elif number == M_PRODUCER_VERSION and wire == 2:
                s.producer_version = _text(buf, value, length)
        return s

    def opset(self, start: int, length: int) -> tuple[str, int]:
        domain, version = "", 0
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if n == O_DOMAIN and w == 2:
                domain = _text(self.buf, v, ln)
            elif n == O_VERSION and w == 0:
                version = _signed(v)
        return domain, version

    def graph(self, start: int, length: int, depth: int, *, top: bool = False) -> int:
        if depth > MAX_DEPTH:
            raise WireError("subgraphs nested too deep")
        nodes = 0
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if w != 2:
                continue
            if n == G_NODE:
                nodes += 1
                self.node(v, ln, depth)
            elif n == G_INITIALIZER:
                t = self.tensor(v, ln, "initializer")
                self.summary.tensors.append((f"initializer {t.name!r}", t, t.dims))
            elif n == G_SPARSE:
                self.sparse(v, ln, "sparse initializer")
        return nodes if top else 0

    def node(self, start: int, length: int, depth: int) -> None:
        name = op = ""
        attrs: list[tuple[int, int]] = []
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if n == N_NAME and w == 2:
                name = _text(self.buf, v, ln)
            elif n == N_OP and w == 2:
                op = _text(self.buf, v, ln)
            elif n == N_ATTR and w == 2:
                attrs.append((v, ln))
        label = f"node {name or op!r}"
        for v, ln in attrs:
            self.attribute(v, ln, label, depth)

    def attribute(self, start: int, length: int, label: str, depth: int) -> None:
        attr = ""
        found: list[tuple[int, int, int]] = []
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if n == A_NAME and w == 2:
                attr = _text(self.buf, v, ln)
            elif w == 2 and n in (A_T, A_TENSORS, A_G, A_GRAPHS, A_SPARSE, A_SPARSES):
                found.append((n, v, ln))
        where = f"{label} attribute {attr!r}"
        for n, v, ln in found:
            if n in (A_T, A_TENSORS):
                t = self.tensor(v, ln, where)
                self.summary.tensors.append((where, t, t.dims))
            elif n in (A_SPARSE, A_SPARSES):
                self.sparse(v, ln, where)
            else:
                self.graph(v, ln, depth + 1)

    def sparse(self, start: int, length: int, where: str) -> None:
        dims: list[int] = []
        parts: list[tuple[str, Tensor]] = []
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if n == S_DIMS:
                _repeated_ints(self.buf, w, v, ln, dims)
            elif n == S_VALUES and w == 2:
                parts.append(("values", self.tensor(v, ln, where)))
            elif n == S_INDICES and w == 2:
                parts.append(("indices", self.tensor(v, ln, where)))
        for part, t in parts:
            label = f"{where} {t.name!r}" if part == "values" else f"{where} {t.name!r} indices"
            self.summary.tensors.append((label, t, dims if part == "values" else t.dims))

    def tensor(self, start: int, length: int, where: str) -> Tensor:
        t = Tensor(where)
        for n, w, v, ln in _fields(self.buf, start, start + length):
            if n == T_DIMS:
                _repeated_ints(self.buf, w, v, ln, t.dims)
            elif n == T_TYPE and w == 0:
                t.data_type = _signed(v)
            elif n == T_NAME and w == 2:
                t.name = _text(self.buf, v, ln)
            elif n == T_LOCATION and w == 0:
                t.data_location = _signed(v)
            elif n == T_EXTERNAL and w == 2:
                key = value = ""
                for en, ew, ev, eln in _fields(self.buf, v, v + ln):
                    if en == E_KEY and ew == 2:
                        key = _text(self.buf, ev, eln)
                    elif en == E_VALUE and ew == 2:
                        value = _text(self.buf, ev, eln)
                t.external[key] = value
        return t


def scan(path: Path) -> Summary:
    """The structure of the ONNX model at `path`; raises WireError when it is not a
    well-formed protobuf message."""
    with path.open("rb") as f:
        if path.stat().st_size == 0:
            return Summary()
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mm)
    try:
        return _Scanner(buf).model()
    finally:
        buf.release()
        # A traceback may still hold a slice of the map; then the GC closes it later.
        with contextlib.suppress(BufferError):
            mm.close()
