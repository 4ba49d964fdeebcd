"""Running interop clients (tests/interop/): Go and Kotlin programs generated from the
protos by their own toolchains, pointed at a server the test started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

INTEROP = Path(__file__).resolve().parent.parent / "interop"


def run_client(argv: list[str], cwd: Path, address: str, key: str, timeout: float) -> str:
    """Run a client program with the server's address and a key in its environment;
    fail the test with its output when it fails."""
    env = {**os.environ, "MODELREGISTRY_ADDRESS": address, "MODELREGISTRY_KEY": key}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{output}"
    return output
