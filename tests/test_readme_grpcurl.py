"""The README's grpcurl walk-through, run exactly as printed, against a real server.

The fenced block under "## A walk-through with grpcurl" is read from README.md and run
with bash, so the README cannot drift from the server. What the test changes, and nothing
else:
- the address: every `127.0.0.1:50051` becomes `127.0.0.1:<free port>` (tests must not
  take a fixed port);
- the key file location is *not* rewritten: the block runs in a fresh directory in which
  the test did what `make run` does (`modelregistry migrate`, `modelregistry dev-key`,
  `modelregistry serve` with the default SQLite database and blob directory), so
  `var/dev-api-key` is found relative to it just as in a checkout;
- between the commands the test adds `printf` markers (each command's output and exit
  status, with stderr merged into stdout), so each command's output can be checked alone.

grpcurl comes from the pinned tools directory (`make tools`), prepended to PATH as the
block's own `export PATH=...` line does for the default location.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.proto_comments import has_block, leading_comment
from support.serve import ServeProcess, run_cli
from support.services import tools_bin_dir

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## A walk-through with grpcurl"
README_ADDRESS = "127.0.0.1:50051"


def walkthrough_block(readme: str) -> str:
    """The first ```sh fenced block after the walk-through heading."""
    start = readme.index(HEADING)
    match = re.compile(r"^```sh\n(.*?)^```", re.S | re.M).search(readme, start)
    assert match, f"no ```sh block under {HEADING!r} in README.md"
    return match.group(1)


def split_commands(block: str) -> list[str]:
    """Commands of a shell block: comments and blank lines dropped, `\\` continuations kept
    together (verbatim, newlines included)."""
    commands: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        if not line.rstrip().endswith("\\"):
            commands.append("\n".join(current))
            current = []
    assert not current, f"dangling continuation: {current}"
    return commands


@dataclass
class Ran:
    command: str
    output: str
    status: int


def run_block(commands: list[str], cwd: Path, env: dict[str, str]) -> list[Ran]:
    script = ["exec 2>&1"]
    for i, cmd in enumerate(commands):
        script += [f"printf '\\n@@@begin {i}\\n'", cmd, f"printf '\\n@@@end {i} %s\\n' \"$?\""]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    ran = []
    for i, cmd in enumerate(commands):
        m = re.search(rf"\n@@@begin {i}\n(.*?)\n@@@end {i} (\d+)\n", out, re.S)
        assert m, f"no output markers for command {i} ({cmd!r}); whole output:\n{out}"
        ran.append(Ran(cmd, m.group(1), int(m.group(2))))
    return ran


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Ran]]:
    if not (tools_bin_dir() / "grpcurl").exists() and not shutil.which("grpcurl"):
        pytest.fail(f"grpcurl not found in {tools_bin_dir()}: run `make tools`")
    block = walkthrough_block(README.read_text())
    assert README_ADDRESS in block
    cwd = tmp_path_factory.mktemp("walkthrough")
    # What `make run` does, in a directory of the test's own.
    run_cli(cwd, "migrate")
    run_cli(cwd, "dev-key")
    assert (cwd / "var" / "dev-api-key").exists()
    with ServeProcess(cwd) as server:
        commands = split_commands(block.replace(README_ADDRESS, server.address))
        env = {**os.environ, "PATH": f"{tools_bin_dir()}{os.pathsep}{os.environ['PATH']}"}
        yield run_block(commands, cwd, env)


def one(ran: list[Ran], pick: Callable[[str], bool]) -> Ran:
    found = [r for r in ran if pick(r.command)]
    assert len(found) == 1, f"expected one such command in the README, found {len(found)}"
    return found[0]


def grpcurl_calls(ran: list[Ran], method: str) -> list[Ran]:
    return [r for r in ran if r.command.startswith("grpcurl") and method in r.command]


def test_block_parses_into_the_documented_commands(walkthrough: list[Ran]) -> None:
    assert walkthrough[0].command.startswith("export PATH=")
    assert walkthrough[1].command == "KEY=$(cat var/dev-api-key)"
    for r in walkthrough[:2]:
        assert r.status == 0 and r.output == "", r


def test_reflection_lists_and_describes(walkthrough: list[Ran]) -> None:
    listed = one(walkthrough, lambda c: c.startswith("grpcurl") and c.endswith(" list"))
    assert listed.status == 0, listed.output
    assert set(listed.output.split()) >= {
        "modelregistry.v1.ModelService",
        "modelregistry.v1.VersionService",
        "modelregistry.v1.CatalogService",
        "modelregistry.v1.TelemetryService",
        "grpc.health.v1.Health",
    }
    described = one(walkthrough, lambda c: c.endswith(" describe modelregistry.v1.ModelService"))
    assert described.status == 0, described.output
    assert "modelregistry.v1.ModelService is a service:" in described.output
    assert "rpc CreateModel ( .modelregistry.v1.CreateModelRequest )" in described.output
    assert "rpc GetManifest" in described.output
    service_comment = leading_comment("model_service.proto", r"^service ModelService \{")
    assert has_block(described.output, service_comment), described.output


def test_describe_prints_the_proto_comments(walkthrough: list[Ran]) -> None:
    rpc = one(walkthrough, lambda c: c.endswith(" describe modelregistry.v1.ModelService.GetModel"))
    assert rpc.status == 0, rpc.output
    assert "modelregistry.v1.ModelService.GetModel is a method:" in rpc.output
    comment = leading_comment("model_service.proto", r"^\s*rpc GetModel\(")
    assert has_block(rpc.output, comment), rpc.output
    message = one(walkthrough, lambda c: c.endswith(" describe modelregistry.v1.ListModelsRequest"))
    assert message.status == 0, message.output
    declared = r"^message ListModelsRequest \{"
    assert has_block(message.output, leading_comment("model_service.proto", declared))
    page_size = leading_comment("model_service.proto", r"^\s+int32 page_size = ", after=declared)
    assert has_block(message.output, page_size), message.output


def test_health_is_serving(walkthrough: list[Ran]) -> None:
    health = one(walkthrough, lambda c: "grpc.health.v1.Health/Check" in c)
    assert health.status == 0, health.output
    assert '"status": "SERVING"' in health.output


def test_create_then_list(walkthrough: list[Ran]) -> None:
    created, _bad = grpcurl_calls(walkthrough, "/CreateModel")
    assert created.status == 0, created.output
    assert '"name": "models/mobilenet-v3"' in created.output
    assert '"framework": "onnx"' in created.output
    listed = one(walkthrough, lambda c: "/ListModels" in c)
    assert listed.status == 0, listed.output
    assert '"model_id": "mobilenet-v3"' in listed.output
    assert '"total_size": 1' in listed.output


def test_bad_input_is_invalid_argument_with_field_violations(walkthrough: list[Ran]) -> None:
    _, bad = grpcurl_calls(walkthrough, "/CreateModel")
    assert bad.status != 0
    assert "Code: InvalidArgument" in bad.output, bad.output
    assert "google.rpc.BadRequest" in bad.output, bad.output
    assert re.search(r'"field":\s*"model_id"', bad.output), bad.output
    assert "google.rpc.ErrorInfo" in bad.output, bad.output


def test_manifest_with_and_without_key_then_not_modified(walkthrough: list[Ran]) -> None:
    calls = [r for r in walkthrough if "/GetManifest" in r.command]
    anonymous, with_key, etag_line, not_modified = calls
    assert "authorization" not in anonymous.command
    for r in (anonymous, with_key, etag_line, not_modified):
        assert r.status == 0, f"{r.command}\n{r.output}"
    assert '"etag"' in anonymous.output
    assert "mobilenet-v3" not in anonymous.output  # no key: the blessed catalog only
    assert "mobilenet-v3" in with_key.output
    assert etag_line.command.startswith("ETAG=") and etag_line.output == ""
    assert re.search(r'"not_modified":\s*true', not_modified.output), not_modified.output
    assert "mobilenet-v3" not in not_modified.output
