"""Run `modelregistry profiles ...` in-process against a test server's database.

Goes through the CLI's parser and command functions (not `main`, which reconfigures the
process's logging)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server import cli


def profiles_cli(database_url: str, *args: str) -> int:
    parsed = cli.build_parser().parse_args(["profiles", *args, "--database-url", database_url])
    return int(parsed.func(parsed))


def set_profiles(database_url: str, org: str, tmp: Path, doc: Any) -> int:
    path = tmp / f"profiles-{org}.json"
    path.write_text(json.dumps(doc))
    return profiles_cli(database_url, "set", "--org", org, str(path))
