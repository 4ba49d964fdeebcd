"""The Kotlin client (tests/interop/kotlin: grpc-kotlin coroutine stubs generated from
protos/ at build time by Maven) against a real server on both backends: the same flow as
the Go client (create, upload cut off and resumed, publish, download + sha256, manifest
then not-modified with its etag, ErrorInfo + BadRequest field violations).

Maven builds the program once per session (a no-op when nothing changed; `make
interop-build` fills a cold cache first); each flow then starts it with plain `java`.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.interop import INTEROP, run_client
from support.registry import RunningServer

pytestmark = pytest.mark.interop
PROJECT = INTEROP / "kotlin"


@pytest.fixture(scope="session")
def kotlin_program() -> list[str]:
    mvn, java = shutil.which("mvn"), shutil.which("java")
    if mvn is None or java is None:
        pytest.fail("Java and Maven (mvn) are needed for the Kotlin interop test")
    done = subprocess.run(
        [mvn, "-B", "-q", "compile"], cwd=PROJECT, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, f"mvn compile failed:\n{done.stdout}{done.stderr}"
    deps = (PROJECT / "target" / "classpath.txt").read_text().strip()
    classpath = f"{PROJECT / 'target' / 'classes'}:{deps}"
    return [java, "-cp", classpath, "dev.modelregistry.interop.MainKt"]


def test_kotlin_client_flow(registry: RunningServer, kotlin_program: list[str]) -> None:
    client = registry.new_org()
    out = run_client(kotlin_program, PROJECT, registry.address, client.key, timeout=200)
    assert "KOTLIN INTEROP FLOW PASSED" in out, out
