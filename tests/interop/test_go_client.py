"""The Go client (generated/go, protoc-gen-go + protoc-gen-go-grpc) against a real server on
both backends: tests/interop/go/interop_test.go creates a model, uploads a file it cuts off
on purpose and resumes, publishes, downloads and compares sha256, reads the manifest and
then the same manifest with its etag, and decodes a rich error."""

from __future__ import annotations

import shutil

import pytest

from support.interop import INTEROP, run_client
from support.registry import RunningServer

pytestmark = pytest.mark.interop


def test_go_client_flow(registry: RunningServer) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("the go command is needed for the Go interop test")
    client = registry.new_org()
    out = run_client(
        [go, "test", "-count=1", "-v", "./..."],
        INTEROP / "go",
        registry.address,
        client.key,
        timeout=280,
    )
    assert "--- PASS: TestFlow" in out, out
