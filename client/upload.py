"""Push: a resumable upload of a weights file (plus sidecars, as one bundle) to a model
version, verified by sha256.

A push picks its own upload id; when the stream fails with a retryable status (the
connection dropped, the server restarted, a rate limit) it asks QueryUploadStatus how many
bytes the server committed and continues from there with a new stream.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from client.connection import Connection
from client.errors import ClientError, describe
from client.progress import Progress
from modelregistry.v1 import catalog_pb2, version_service_pb2

vpb = version_service_pb2

EXTENSION_FORMATS = {
    ".onnx": "onnx",
    ".ort": "ort",
    ".tflite": "tflite",
    ".lite": "tflite",
    ".mlmodel": "coreml",
    ".pt": "pt",
    ".pth": "pt",
    ".ptl": "pt",
    ".gguf": "gguf",
    ".safetensors": "safetensors",
    ".bin": "bin",
}


@dataclass(frozen=True)
class Sidecar:
    path: Path
    kind: str


@dataclass(frozen=True)
class PushResult:
    package: str  # resource name of the package
    resources: list[str]
    size_bytes: int  # all files
    sha256: str  # of the primary file
    upload_id: str
    resumed: int  # how many times the upload continued after a failure
    model_created: bool


@dataclass(frozen=True)
class _Local:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class _Gone:
    """The server expired or discarded the upload."""

    why: str


def format_for(path: Path) -> str:
    fmt = EXTENSION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ClientError(
            f"cannot tell the format of {path.name} from its extension: pass --format "
            f"(one of {', '.join(sorted(set(EXTENSION_FORMATS.values())))})"
        )
    return fmt


def _hash_file(path: Path) -> _Local:
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                digest.update(chunk)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ClientError(f"cannot read {path}: not a regular file")
    return _Local(path, size, digest.hexdigest())


def push(
    conn: Connection,
    path: Path,
    model: str,
    version: str,
    *,
    fmt: str | None = None,
    sidecars: Sequence[Sidecar] = (),
    quantization: str = "",
    progress: Callable[[str, int], Progress] | None = None,
) -> PushResult:
    """Upload `path` (plus sidecars, as one bundle) to models/{model}/versions/{version}."""
    fmt = fmt or format_for(path)
    files = [_hash_file(path), *(_hash_file(s.path) for s in sidecars)]
    total = sum(f.size for f in files)
    if files[0].size == 0:
        raise ClientError(f"{path} is empty: a weights file must not be empty")
    conn.wait_connected()
    parent = f"models/{model}/versions/{version}"
    upload_id = str(uuid.uuid4())
    bar = progress(f"push {path.name}", total) if progress else None
    offset = 0
    failures = 0
    resumed = 0
    restarted = False
    while True:
        if bar is not None:
            bar.start(offset)
        try:
            if sidecars:
                b = conn.versions.UploadBundle(
                    _bundle_requests(
                        conn.chunk_bytes,
                        parent,
                        fmt,
                        quantization,
                        files,
                        sidecars,
                        upload_id,
                        offset,
                        bar,
                    )
                )
                pkg = b.package
                model_created = b.model_created
            else:
                a = conn.versions.UploadArtifacts(
                    _artifact_requests(
                        conn.chunk_bytes,
                        parent,
                        fmt,
                        quantization,
                        files[0],
                        upload_id,
                        offset,
                        bar,
                    )
                )
                pkg = a.packages[0]
                model_created = a.model_created
            break
        except grpc.RpcError as err:
            failures += 1
            delay = conn.give_up_unless_retryable(err, failures)
            conn.pause(failures, delay)
            status = _upload_status(conn, upload_id)
            if isinstance(status, _Gone):
                # Expired or discarded on the server: start over once, with a new id.
                if restarted:
                    raise ClientError(f"upload {upload_id}: {status.why}") from None
                restarted = True
                upload_id = str(uuid.uuid4())
                new_offset = 0
            elif status is None:  # the server never saw the upload start
                new_offset = 0
            elif status.complete:
                # Recorded, but the response was lost with the connection.
                pkg = _find_package(conn, parent, files[0], fmt)
                model_created = False
                break
            else:
                new_offset = status.committed_size
            if new_offset > offset:
                failures = 0  # progress was made: the retry budget starts over
            offset = new_offset
            resumed += 1
            if bar is not None:
                bar.note(f"connection lost ({describe(err)}); resuming at {offset} bytes")
    if bar is not None:
        bar.update(total)
        bar.finish()
    weights = pkg.resources[0]
    if weights.sha256 != files[0].sha256 or weights.size_bytes != files[0].size:
        raise ClientError(
            f"the server recorded sha256 {weights.sha256} ({weights.size_bytes} bytes) "
            f"but {path} has {files[0].sha256} ({files[0].size} bytes)"
        )
    for resource, local in zip(pkg.resources, files, strict=False):
        if resource.sha256 != local.sha256:
            raise ClientError(f"sha256 mismatch for {local.path.name} on the server")
    return PushResult(
        package=pkg.name,
        resources=[r.name for r in pkg.resources],
        size_bytes=total,
        sha256=files[0].sha256,
        upload_id=upload_id,
        resumed=resumed,
        model_created=model_created,
    )


def _upload_status(
    conn: Connection, upload_id: str
) -> vpb.QueryUploadStatusResponse | _Gone | None:
    try:
        return conn.unary(
            conn.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id=upload_id)
        )
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.NOT_FOUND:
            return None
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return _Gone(describe(err))  # expired or aborted: start over once
        raise ClientError(f"cannot query the upload status: {describe(err)}") from None


def _find_package(
    conn: Connection, parent: str, primary: _Local, fmt: str
) -> catalog_pb2.ArtifactPackage:
    mv = conn.unary(conn.versions.GetVersion, vpb.GetVersionRequest(name=parent))
    for pkg in conn.packages(mv.catalog_version):
        if pkg.format == fmt and pkg.resources and pkg.resources[0].sha256 == primary.sha256:
            return pkg
    raise ClientError(f"the upload completed but its package is not in {parent}")


def _chunks(
    chunk_bytes: int, locals_: Sequence[_Local], offset: int, bar: Progress | None
) -> Iterator[bytes]:
    """The concatenated bytes of `locals_` from `offset`, `chunk_bytes` at a time."""
    sent = offset
    start = offset
    for local in locals_:
        if start >= local.size:
            start -= local.size
            continue
        with local.path.open("rb") as f:
            f.seek(start)
            start = 0
            while chunk := f.read(chunk_bytes):
                yield chunk
                sent += len(chunk)
                if bar is not None:
                    bar.update(sent)


def _artifact_requests(
    chunk_bytes: int,
    parent: str,
    fmt: str,
    quantization: str,
    local: _Local,
    upload_id: str,
    offset: int,
    bar: Progress | None,
) -> Iterator[vpb.UploadArtifactsRequest]:
    yield vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
    yield vpb.UploadArtifactsRequest(
        file=vpb.UploadFileHeader(
            file=vpb.FileSpec(
                file_name=local.path.name, size_bytes=local.size, sha256=local.sha256
            ),
            format=fmt,
            quantization=quantization,
            upload_id=upload_id,
            write_offset=offset,
        )
    )
    for chunk in _chunks(chunk_bytes, [local], offset, bar):
        yield vpb.UploadArtifactsRequest(chunk=chunk)


def _bundle_requests(
    chunk_bytes: int,
    parent: str,
    fmt: str,
    quantization: str,
    files: Sequence[_Local],
    sidecars: Sequence[Sidecar],
    upload_id: str,
    offset: int,
    bar: Progress | None,
) -> Iterator[vpb.UploadBundleRequest]:
    def spec(local: _Local) -> vpb.FileSpec:
        return vpb.FileSpec(file_name=local.path.name, size_bytes=local.size, sha256=local.sha256)

    yield vpb.UploadBundleRequest(
        header=vpb.UploadBundleHeader(
            parent=parent,
            format=fmt,
            quantization=quantization,
            primary=spec(files[0]),
            extras=[spec(f) for f in files[1:]],
            extras_kind=[s.kind for s in sidecars],
            upload_id=upload_id,
            write_offset=offset,
        )
    )
    for chunk in _chunks(chunk_bytes, files, offset, bar):
        yield vpb.UploadBundleRequest(chunk=chunk)
