"""`modelregistry push` / `modelregistry pull`: the agent-side commands (client/api.py).

Both show a progress bar on stderr, resume by themselves after a dropped connection,
verify sha256 at the end, and report any failure as one line on stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from client.api import RegistryClient
from client.connection import DEFAULT_SERVER
from client.errors import ClientError
from client.progress import Progress, human_bytes
from client.upload import Sidecar


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the model id (slug), e.g. mobilenet-v3")
    p.add_argument("--version", required=True, help="the version string, e.g. 1.0.0")
    p.add_argument(
        "--server",
        default=os.environ.get("MODELREGISTRY_SERVER", DEFAULT_SERVER),
        help="host:port of the registry (env MODELREGISTRY_SERVER; default %(default)s)",
    )
    p.add_argument(
        "--key",
        default=None,
        help="API key (default: env MODELREGISTRY_API_KEY; prefer the environment, "
        "command lines are visible to other users)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = sub.add_parser(
        "push",
        help="upload a model file (plus sidecar files, as one bundle) to a version; "
        "resumes after dropped connections, verifies sha256",
    )
    push.add_argument("file", help="the primary weights file")
    _common(push)
    push.add_argument(
        "--sidecar",
        action="append",
        default=[],
        metavar="FILE:KIND",
        help="a file stored next to the weights in the same package (kinds: tokenizer, "
        "config, sidecar, operators-config, vocab, data); repeatable",
    )
    push.add_argument(
        "--format", default=None, help="package format (default: from the file's extension)"
    )
    push.add_argument("--quantization", default="", help="none (default), fp16, int8, ...")
    push.set_defaults(func=cmd_push)

    pull = sub.add_parser(
        "pull",
        help="download a version's primary weights file (--all: every file of its package); "
        "resumes from the bytes on disk, verifies sha256",
    )
    _common(pull)
    pull.add_argument("--format", default=None, help="which package (default: the first one)")
    pull.add_argument(
        "--all",
        action="store_true",
        help="every file of the package (weights, tokenizer, ...), into the -o directory",
    )
    pull.add_argument(
        "-o", "--output", required=True, help="where to write the file (--all: a directory)"
    )
    pull.set_defaults(func=cmd_pull)


def main(argv: list[str]) -> int:
    """`modelregistry push|pull ...` (server.cli.main hands these over)."""
    parser = argparse.ArgumentParser(prog="modelregistry")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _client(args: argparse.Namespace) -> RegistryClient:
    key = args.key or os.environ.get("MODELREGISTRY_API_KEY", "")
    return RegistryClient(args.server, key.strip())


def _progress(args: argparse.Namespace) -> type[Progress] | None:
    return None if args.quiet else Progress


def _sidecar(spec: str) -> Sidecar:
    path, sep, kind = spec.rpartition(":")
    if not sep or not path:
        return Sidecar(Path(spec), "sidecar")
    return Sidecar(Path(path), kind or "sidecar")


def _fail(command: str, message: str) -> int:
    print(f"modelregistry {command}: {message}", file=sys.stderr, flush=True)
    return 1


def cmd_push(args: argparse.Namespace) -> int:
    try:
        sidecars = [_sidecar(s) for s in args.sidecar]
        with _client(args) as rc:
            result = rc.push(
                Path(args.file),
                args.model,
                args.version,
                fmt=args.format,
                sidecars=sidecars,
                quantization=args.quantization,
                progress=_progress(args),
            )
    except ClientError as exc:
        return _fail("push", str(exc))
    except KeyboardInterrupt:
        return _fail("push", "interrupted")
    except Exception as exc:  # no tracebacks for users; the type names the bug
        return _fail("push", f"unexpected error: {type(exc).__name__}: {exc}")
    extra = f" (resumed {result.resumed}x)" if result.resumed else ""
    print(
        f"pushed {args.file} to models/{args.model}/versions/{args.version}: "
        f"{result.package} ({human_bytes(result.size_bytes)}, sha256 {result.sha256}){extra}"
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        with _client(args) as rc:
            if args.all:
                results = rc.pull_package(
                    args.model,
                    args.version,
                    Path(args.output),
                    fmt=args.format,
                    progress=_progress(args),
                )
            else:
                results = [
                    rc.pull(
                        args.model,
                        args.version,
                        Path(args.output),
                        fmt=args.format,
                        progress=_progress(args),
                    )
                ]
    except ClientError as exc:
        return _fail("pull", str(exc))
    except KeyboardInterrupt:
        return _fail("pull", "interrupted (run the same pull again to resume)")
    except Exception as exc:
        return _fail("pull", f"unexpected error: {type(exc).__name__}: {exc}")
    for result in results:
        notes = []
        if result.resumed_from:
            notes.append(f"continued from {human_bytes(result.resumed_from)} on disk")
        if result.resumed:
            notes.append(f"resumed {result.resumed}x")
        extra = f" ({', '.join(notes)})" if notes else ""
        print(
            f"pulled models/{args.model}/versions/{args.version} ({result.format}) to "
            f"{result.path}: {human_bytes(result.size_bytes)}, sha256 {result.sha256} verified"
            f"{extra}"
        )
    return 0
