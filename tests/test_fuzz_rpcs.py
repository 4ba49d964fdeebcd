"""Property-based fuzzing of every RPC's request messages (hypothesis), built from the
descriptors: strings with odd code points, path traversal and near-valid resource names of
real rows, invalid UTF-8 and other bytes, boundary and random numbers, NaN and infinities,
unknown enum values, oversized repeated fields and maps, out-of-range timestamps, nested
Structs. Client-streaming RPCs get short random sequences of messages.

For every example: never INTERNAL or UNKNOWN, the server keeps answering, and a rejected
request changes nothing stored (row counts of every table and the object store's keys,
before and after; an upload the client left incomplete may keep its resumable session).

Examples per RPC: the `ci` profile (CI=true) runs a fixed, derandomized set; `dev` explores
afresh each run. MODELREGISTRY_FUZZ_EXAMPLES overrides the count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory, text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from test_auth_matrix import METHODS

from modelregistry.v1 import conversion_pb2, models_pb2
from modelregistry.v1 import model_service_pb2 as mpb
from modelregistry.v1 import version_service_pb2 as vpb
from storage.db import transaction
from storage.orm import Base
from support import onnx_models
from support.fixtures import backend_urls
from support.registry import Client, RunningServer
from support.status import rich
from support.uploads import F, store_of, upload

_EXAMPLES = int(os.environ.get("MODELREGISTRY_FUZZ_EXAMPLES", "0"))
settings.register_profile(
    "ci",
    max_examples=_EXAMPLES or 12,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=_EXAMPLES or 25,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = "ci" if os.environ.get("CI") else "dev"

FD = descriptor.FieldDescriptor
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

# --- strategies built from descriptors ---------------------------------------------------

ODD = [
    "",
    "-",
    " ",
    "\x00",
    "\x7f",
    "\u202e",  # right-to-left override
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "e\u0301",  # combining accent
    "\U0001f600",
    "../../../../etc/passwd",
    "..\\..\\windows\\system32",
    "/etc/passwd",
    "%2e%2e%2f%2e%2e%2fx",
    "models/../models/x",
    "models/-/versions/-",
    "models//versions/",
    "a" * 65,
    "x" * 5000,
    "NaN",
    "' OR 1=1 --",
    "%s%n%x",
    "${jndi:ldap://x}",
    "*",
]
PIECES = ["models", "versions", "variants", "packages", "resources", "optimizedConfigs",
          "conversionJobs", "-", "..", "", "m", "1", "pixel-8"]  # fmt: skip


def _name_strategy(real: list[str]) -> st.SearchStrategy[str]:
    piece = st.one_of(
        st.sampled_from(PIECES), st.uuids().map(str), st.text(max_size=8), st.sampled_from(real)
    )
    return st.lists(piece, min_size=1, max_size=8).map("/".join)


def strings(real: list[str]) -> st.SearchStrategy[str]:
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
    return st.one_of(
        text,
        st.sampled_from(ODD),
        st.sampled_from(real) if real else st.just(""),
        _name_strategy(real),
        st.sampled_from(real).map(lambda s: s + "\x00") if real else st.just("\x00"),
    )


BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [b"", b"\xed\xa0\x80", b"\xff\xfe\xfd", b"PK\x03\x04" + b"\x00" * 26, b"\x08\x96\x01"]
    ),
)
INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({lo, hi, 0, 1, -1, 3, 1000, 1001, 2**31 - 1, -(2**31), 2**53 + 1})
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


DOUBLES = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
FLOATS = st.one_of(
    st.sampled_from([0.0, math.nan, math.inf, -math.inf, 3.4e38]), st.floats(width=32)
)


class Builder:
    def __init__(self, real: list[str]) -> None:
        self.real = real
        self.text = strings(real)

    def scalar(self, f: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FD.TYPE_STRING:
            return self.text
        if t == FD.TYPE_BYTES:
            return BYTES
        if t == FD.TYPE_BOOL:
            return st.booleans()
        if t == FD.TYPE_DOUBLE:
            return DOUBLES
        if t == FD.TYPE_FLOAT:
            return FLOATS
        if t == FD.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1]))
        lo, hi = INT_RANGES[t]
        return ints(lo, hi)

    def message(self, desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        return st.deferred(lambda: self._message(desc, depth))

    def _message(self, desc: descriptor.Descriptor, depth: int) -> st.SearchStrategy[Any]:
        cls = message_factory.GetMessageClass(desc)
        if desc.full_name == "google.protobuf.Timestamp":
            return st.builds(
                lambda s, n: cls(seconds=s, nanos=n),
                ints(-(2**63), 2**63 - 1),
                st.one_of(st.sampled_from([0, -1, 999_999_999, 10**9]), st.integers(0, 10**9)),
            )
        fields = [f for f in desc.fields if depth < 3 or f.type != FD.TYPE_MESSAGE]
        per_field = {f.name: self.field_value(f, depth) for f in fields}

        @st.composite
        def build(draw: st.DrawFn) -> Any:
            msg = cls()
            for f in fields:
                if not draw(st.booleans()):
                    continue
                if f.containing_oneof and msg.WhichOneof(f.containing_oneof.name):
                    continue
                value = draw(per_field[f.name])
                assign(msg, f, value)
            return msg

        return build()

    def field_value(self, f: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f = f.message_type.fields_by_name["key"]
            val_f = f.message_type.fields_by_name["value"]
            value = (
                self.message(val_f.message_type, depth + 1)
                if val_f.type == FD.TYPE_MESSAGE
                else self.scalar(val_f)
            )
            small = st.dictionaries(self.scalar(key_f), value, max_size=3)
            huge = st.tuples(value).map(lambda v: {f"k{i}": v[0] for i in range(300)})
            return st.one_of(small, small, huge) if key_f.type == FD.TYPE_STRING else small
        one = (
            self.message(f.message_type, depth + 1) if f.type == FD.TYPE_MESSAGE else self.scalar(f)
        )
        if not f.is_repeated:
            return one
        small = st.lists(one, max_size=3)
        # oversized: one element many times (cheap to draw, big on the wire)
        huge = st.tuples(one, st.sampled_from([100, 1001, 5000])).map(lambda t: [t[0]] * t[1])
        return st.one_of(small, small, small, huge)


def assign(msg: Any, f: descriptor.FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        val_f = f.message_type.fields_by_name["value"]
        for k, v in value.items():
            if val_f.type == FD.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif f.is_repeated:
        if f.type == FD.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif f.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


# --- the server under fuzz ---------------------------------------------------------------


class Target:
    """A server of its own (so no other test's background work moves the counts), an org
    with real rows whose names the strings strategy mixes in."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client: Client = server.new_org()
        c = self.client
        c.models.CreateModel(
            mpb.CreateModelRequest(model_id="m", model=models_pb2.Model(framework="onnx"))
        )
        up = upload(c, "models/m/versions/1", F("model.onnx", onnx_models.mlp(8, 8, 2, 1)))
        pkg = up.packages[0]
        res = pkg.resources[0]
        job = list(
            c.versions.ConvertArtifact(
                vpb.ConvertArtifactRequest(
                    source=res.name, spec=conversion_pb2.ConversionSpec(targets=["onnx"])
                ),
                timeout=180,
            )
        )[-1].job
        variant = up.catalog_version.name.rsplit("/", 2)[0]
        self.real = [
            "m",
            "1",
            "models/m",
            "models/m/versions/1",
            f"models/-/versions/{c.versions.GetVersion(vpb.GetVersionRequest(name='models/m/versions/1')).uid}",
            variant,
            up.catalog_version.name,
            pkg.name,
            res.name,
            up.files[0].upload_id,
            job,
            "models/m/optimizedConfigs/pixel-8",
            "onnx",
            "onnx-fp16",
            "onnx-int8",
            "ort",
            "iphone-15",
            "pixel-8",
            "model.onnx",
            "weights",
            "int8",
            "onnxruntime",
        ]
        self.builder = Builder(self.real)

    def snapshot(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with transaction(self.server._sessions, readonly=True) as s:
            for table in Base.metadata.sorted_tables:
                counts[table.name] = int(s.scalar(select(func.count()).select_from(table)) or 0)
        store = store_of(self.server)
        counts["objects"] = sum(1 for _ in store.list(""))
        counts["incomplete"] = sum(1 for _ in store.list_incomplete_uploads(""))
        return counts


@pytest.fixture(scope="module", params=["embedded", "production"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    db, store = backend_urls(request, request.param, tmp)
    server = RunningServer(db, store)
    try:
        yield Target(server)
    finally:
        server.stop()


def call(
    channel: grpc.Channel, method: descriptor.MethodDescriptor, key: str, request: Any
) -> tuple[grpc.StatusCode, str]:
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kw = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    md = [("authorization", f"Bearer {key}")]
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, **kw)(iter(request), metadata=md, timeout=120):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, **kw)(iter(request), metadata=md, timeout=120)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, **kw)(request, metadata=md, timeout=120):
                pass
        else:
            channel.unary_unary(path, **kw)(request, metadata=md, timeout=120)
    except grpc.RpcError as err:
        details = rich(err)
        return details.code, details.reason
    return grpc.StatusCode.OK, ""


def requests_for(target: Target, method: descriptor.MethodDescriptor) -> st.SearchStrategy[Any]:
    one = target.builder.message(method.input_type)
    if method.client_streaming:
        return st.lists(one, min_size=0, max_size=4)
    return one


def show(request: Any) -> str:
    items = request if isinstance(request, list) else [request]
    return "\n---\n".join(text_format.MessageToString(r)[:2000] for r in items)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_fuzz_rpc(target: Target, method: descriptor.MethodDescriptor) -> None:
    channel = target.server.channel
    key = target.client.key

    @settings(settings.get_profile(PROFILE))
    @given(request=requests_for(target, method))
    def run(request: Any) -> None:
        before = target.snapshot()
        code, reason = call(channel, method, key, request)
        assert code not in NEVER, f"{method.name} answered {code.name} to:\n{show(request)}"
        if code == grpc.StatusCode.OK:
            return
        after = target.snapshot()
        # Caches an earlier, successful GetManifest or write leaves in the background (its
        # subtrees and whole manifest, and the claim on building it after writes:
        # server/manifest_builds.py), possibly while this call runs; a rejected call builds
        # nothing. The change log is written by triggers on data, so it stays in the check.
        for k in ("manifest_snapshots", "manifest_tails", "manifest_build_claims"):
            before.pop(k), after.pop(k)
        if reason == "UPLOAD_INCOMPLETE":
            # the client may resume it: its session row (and parts) stay until it expires
            for k in ("upload_sessions", "objects", "incomplete"):
                before.pop(k), after.pop(k)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, (
            f"{method.name} rejected ({code.name} {reason}) but stored {changed}:\n{show(request)}"
        )

    run()
    # still serving
    target.client.models.GetModel(mpb.GetModelRequest(name="models/m"), timeout=30)
