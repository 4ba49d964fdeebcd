"""Doc comments as written in protos/, for tests that check a tool prints them.

>>> leading_comment("model_service.proto", r"rpc GetModel\\(")
['// Gets one model by resource name.']
"""

from __future__ import annotations

import re
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos" / "modelregistry" / "v1"


def leading_comment(proto: str, pattern: str, *, after: str | None = None) -> list[str]:
    """The `//` lines right above the first line of protos/modelregistry/v1/`proto` that
    matches the regex `pattern` (searching from the first line matching `after`, when
    given), indentation removed."""
    lines = (PROTO_DIR / proto).read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if re.search(after, line))
    at = next(i for i in range(start, len(lines)) if re.search(pattern, lines[i]))
    comment: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip())
    assert comment, f"no doc comment above {pattern!r} in {proto}"
    return comment


def has_block(output: str, block: list[str]) -> bool:
    """Whether `block` appears as consecutive lines of `output` (indentation ignored)."""
    lines = [line.strip() for line in output.splitlines()]
    n = len(block)
    return any(lines[i : i + n] == block for i in range(len(lines) - n + 1))
