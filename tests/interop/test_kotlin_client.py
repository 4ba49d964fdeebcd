"""The Kotlin client (tests/interop/kotlin: grpc-kotlin coroutine stubs generated from
protos/ at build time by Maven) against a real server on both backends: the same flow as
the Go client (create, upload cut off and resumed, publish, download + sha256, manifest
then not-modified with its etag, ErrorInfo + BadRequest field violations)."""

from __future__ import annotations

import shutil

import pytest

from support.interop import INTEROP, run_client
from support.registry import RunningServer

pytestmark = pytest.mark.interop


def test_kotlin_client_flow(registry: RunningServer) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        pytest.fail("Maven (mvn) is needed for the Kotlin interop test")
    client = registry.new_org()
    # A cold ~/.m2 downloads protoc, the plugins and the libraries from Maven Central first.
    out = run_client(
        [mvn, "-B", "-q", "compile", "exec:java"],
        INTEROP / "kotlin",
        registry.address,
        client.key,
        timeout=290,
    )
    assert "KOTLIN INTEROP FLOW PASSED" in out, out
