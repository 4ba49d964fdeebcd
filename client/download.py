"""Pull: a resumable download of a model version's primary weights (or of every file of its
package), verified by sha256.

A pull writes each file to `PATH.part` (with `PATH.part.json` naming what it is a part of)
and, after a drop or in a later run, continues from the bytes on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from client.connection import Connection
from client.errors import ClientError, describe
from client.progress import Progress
from modelregistry.v1 import catalog_pb2, version_service_pb2

vpb = version_service_pb2


@dataclass(frozen=True)
class PullResult:
    path: Path
    resource: str
    format: str
    size_bytes: int
    sha256: str
    resumed_from: int  # bytes already on disk when this pull started (0: fresh)
    resumed: int  # how many times the download continued after a failure


def pull(
    conn: Connection,
    model: str,
    version: str,
    out: Path,
    *,
    fmt: str | None = None,
    progress: Callable[[str, int], Progress] | None = None,
) -> PullResult:
    """Download the primary weights of the version's package (of format `fmt`, or its
    first package) to `out`, resuming from `out.part` if an earlier pull left one."""
    pkg = _package(conn, model, version, fmt)
    weights = sorted(
        (r for r in pkg.resources if r.kind == "weights"), key=lambda r: r.load_order
    ) or list(pkg.resources)
    if not weights:
        raise ClientError(f"{pkg.name} has no files")
    return _download(conn, weights[0], pkg.format, out, progress)


def pull_package(
    conn: Connection,
    model: str,
    version: str,
    out_dir: Path,
    *,
    fmt: str | None = None,
    progress: Callable[[str, int], Progress] | None = None,
) -> list[PullResult]:
    """Download every file of the version's package (of format `fmt`, or its first
    package) that has bytes, in load order, into `out_dir` under its file name; each
    resumes and is verified as pull's. A resource recorded without bytes (a catalog
    entry naming a file stored elsewhere) is left out: the package's listing names it."""
    pkg = _package(conn, model, version, fmt)
    files = sorted((r for r in pkg.resources if r.stored), key=lambda r: r.load_order)
    if not files:
        raise ClientError(f"{pkg.name} has no stored files")
    seen: set[str] = set()
    for r in files:
        name = r.file_name
        # The server sanitizes file names; a client still never writes outside out_dir.
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ClientError(f"{r.name} has a file name unfit for a local file: {name!r}")
        if name in seen:
            raise ClientError(f"{pkg.name} holds two files named {name!r}")
        seen.add(name)
    return [_download(conn, r, pkg.format, out_dir / r.file_name, progress) for r in files]


def _package(
    conn: Connection, model: str, version: str, fmt: str | None
) -> catalog_pb2.ArtifactPackage:
    """The version's package of format `fmt`, or its first package."""
    conn.wait_connected()
    parent = f"models/{model}/versions/{version}"
    try:
        mv = conn.unary(conn.versions.GetVersion, vpb.GetVersionRequest(name=parent))
    except grpc.RpcError as err:
        raise ClientError(describe(err)) from None
    if not mv.catalog_version:
        raise ClientError(f"{parent} has no uploaded artifacts")
    try:
        packages = list(conn.packages(mv.catalog_version))
    except grpc.RpcError as err:
        raise ClientError(describe(err)) from None
    chosen = [p for p in packages if fmt is None or p.format == fmt]
    if not chosen:
        have = ", ".join(sorted({p.format for p in packages})) or "none"
        raise ClientError(f"{parent} has no {fmt} package (formats: {have})")
    return chosen[0]


def _download(
    conn: Connection,
    resource: catalog_pb2.ArtifactResource,
    fmt: str,
    out: Path,
    progress: Callable[[str, int], Progress] | None,
) -> PullResult:
    part = out.with_name(out.name + ".part")
    meta = out.with_name(out.name + ".part.json")
    want = {"resource": resource.uid, "sha256": resource.sha256, "size": resource.size_bytes}
    digest = hashlib.sha256()
    have = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if part.exists() and meta.exists() and _read_json(meta) == want:
            with part.open("rb") as f:
                while chunk := f.read(4 * 1024 * 1024):
                    digest.update(chunk)
                    have += len(chunk)
            if have > resource.size_bytes:
                digest, have = hashlib.sha256(), 0
        meta.write_text(json.dumps(want))
        fh = part.open("r+b" if have else "wb")
    except OSError as exc:
        raise ClientError(f"cannot write {out}: {exc.strerror or exc}") from None
    resumed_from = have
    bar = progress(f"pull {out.name}", resource.size_bytes) if progress else None
    failures = 0
    resumed = 0
    with fh:
        fh.seek(have)
        fh.truncate()
        while have < resource.size_bytes:
            if bar is not None:
                bar.start(have)
            try:
                for msg in conn.versions.DownloadArtifact(
                    vpb.DownloadArtifactRequest(name=resource.name, read_offset=have)
                ):
                    if msg.data:
                        fh.write(msg.data)
                        digest.update(msg.data)
                        have += len(msg.data)
                        if bar is not None:
                            bar.update(have)
                break
            except grpc.RpcError as err:
                failures += 1
                delay = conn.give_up_unless_retryable(err, failures)
                fh.flush()
                resumed += 1
                if bar is not None:
                    bar.note(f"connection lost ({describe(err)}); resuming at {have} bytes")
                conn.pause(failures, delay)
            except OSError as exc:
                raise ClientError(f"cannot write {part}: {exc.strerror or exc}") from None
        fh.flush()
        os.fsync(fh.fileno())
    if bar is not None:
        bar.finish()
    sha = digest.hexdigest()
    if have != resource.size_bytes or sha != resource.sha256:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise ClientError(
            f"downloaded {have} bytes with sha256 {sha}, but {resource.name} has "
            f"{resource.size_bytes} bytes with sha256 {resource.sha256}; removed the "
            "partial download, pull again"
        )
    os.replace(part, out)
    meta.unlink(missing_ok=True)
    return PullResult(
        path=out,
        resource=resource.name,
        format=fmt,
        size_bytes=have,
        sha256=sha,
        resumed_from=resumed_from,
        resumed=resumed,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
