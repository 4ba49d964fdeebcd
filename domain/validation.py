"""Field rules shared by several resources."""

from __future__ import annotations

import re

from domain.errors import Violations
from domain.names import TAG_RE

FRAMEWORK_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._+-]{0,30}[a-z0-9])?$")
MAX_DESCRIPTION = 4096
MAX_TAGS = 32


def check_framework(v: Violations, field: str, value: str, *, required: bool) -> None:
    if not value:
        if required:
            v.add(field, "is required (for example 'onnx' or 'pytorch')")
        return
    if not FRAMEWORK_RE.match(value):
        v.add(field, "must be 1-32 lowercase letters, digits, '.', '_', '+' or '-'")


def check_description(v: Violations, field: str, value: str) -> None:
    if len(value) > MAX_DESCRIPTION:
        v.add(field, f"must be at most {MAX_DESCRIPTION} characters (got {len(value)})")


def normalize_tags(v: Violations, field: str, tags: list[str]) -> list[str]:
    """Validated tags with duplicates removed, in first-seen order."""
    if len(tags) > MAX_TAGS:
        v.add(field, f"at most {MAX_TAGS} tags (got {len(tags)})")
    out: list[str] = []
    for i, tag in enumerate(tags):
        if not TAG_RE.match(tag):
            v.add(
                f"{field}[{i}]",
                "tags are 1-64 lowercase letters, digits, '.', '_', ':' or '-', "
                "starting and ending with a letter or digit",
            )
        elif tag not in out:
            out.append(tag)
    return out
