"""A small client over the generated stubs: push (resumable upload) and pull (resumable
download), both verified by sha256.

    with RegistryClient("127.0.0.1:50051", key) as rc:
        pushed = rc.push(Path("model.onnx"), "mobilenet", "1.0")
        rc.pull("mobilenet", "1.0", Path("out/model.onnx"))

Resume: a push picks its own upload id; when the stream fails with a retryable status (the
connection dropped, the server restarted, a rate limit) it asks QueryUploadStatus how many
bytes the server committed and continues from there with a new stream. A pull writes to
`PATH.part` and, after a drop or in a later run, continues from the bytes on disk. Every
failure that is not retryable, or retries that make no progress, raise ClientError with a
one-line message.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client.progress import Progress
from modelregistry.v1 import (
    catalog_pb2,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    version_service_pb2,
    version_service_pb2_grpc,
)

vpb = version_service_pb2
T = TypeVar("T")

DEFAULT_SERVER = "127.0.0.1:50051"
CHUNK_BYTES = 1024 * 1024  # bytes per upload message (the server takes up to 4 MiB)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 60.0
# Consecutive failed attempts (without any byte committed in between) before giving up.
MAX_ATTEMPTS = 8
# How long a retry waits for the server to be reachable again.
RECONNECT_TIMEOUT = 60.0

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
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ClientError(Exception):
    """A failure to report to the user as one line."""


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
class PullResult:
    path: Path
    resource: str
    format: str
    size_bytes: int
    sha256: str
    resumed_from: int  # bytes already on disk when this pull started (0: fresh)
    resumed: int  # how many times the download continued after a failure


@dataclass(frozen=True)
class _Local:
    path: Path
    size: int
    sha256: str


def format_for(path: Path) -> str:
    fmt = EXTENSION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ClientError(
            f"cannot tell the format of {path.name} from its extension: pass --format "
            f"(one of {', '.join(sorted(set(EXTENSION_FORMATS.values())))})"
        )
    return fmt


def describe(err: grpc.RpcError) -> str:
    """`CODE: message` of a failed call."""
    call: grpc.Call = err  # type: ignore[assignment]
    code = call.code()
    details = (call.details() or "").strip() or "(no details)"
    return f"{code.name if code else 'UNKNOWN'}: {details}"


def _status(err: grpc.RpcError) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds) of a failed call."""
    reason, delay = "", None
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            delay = ri.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


def retryable(err: grpc.RpcError) -> tuple[bool, float | None]:
    code = err.code()  # type: ignore[attr-defined]
    reason, delay = _status(err)
    if code in RETRYABLE:
        return True, delay
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (reason == "RATE_LIMITED" or delay):
        return True, delay  # a rate limit, not the plan's quota
    if code == grpc.StatusCode.INTERNAL and "RST_STREAM" in (err.details() or ""):  # type: ignore[attr-defined]
        return True, delay
    return False, None


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


class _Auth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc, type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc, type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc, type-arg]
):
    def __init__(self, key: str) -> None:
        self.metadata = (("authorization", f"Bearer {key}"),)

    def _with_key(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *self.metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


class RegistryClient:
    def __init__(
        self,
        server: str,
        key: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        chunk_bytes: int = CHUNK_BYTES,
        max_attempts: int = MAX_ATTEMPTS,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        retry_delay: float = 0.5,
    ) -> None:
        if not key:
            raise ClientError("no API key: pass --key or set MODELREGISTRY_API_KEY")
        self.server = server
        self.connect_timeout = connect_timeout
        self.chunk_bytes = chunk_bytes
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        self.retry_delay = retry_delay
        self._raw = grpc.insecure_channel(
            server,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                # Reconnect quickly after a drop (the default backoff starts at 1 s).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5_000),
            ],
        )
        channel = grpc.intercept_channel(self._raw, _Auth(key))
        self.versions = version_service_pb2_grpc.VersionServiceStub(channel)
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(channel)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------

    def wait_connected(self, timeout: float | None = None) -> None:
        try:
            grpc.channel_ready_future(self._raw).result(timeout=timeout or self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise ClientError(f"cannot reach the server at {self.server}") from None

    def _unary(self, fn: Callable[..., T], request: Any) -> T:
        """A unary call, retried like the streams on retryable failures."""
        failures = 0
        while True:
            try:
                return fn(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
            except grpc.RpcError as err:
                again, delay = retryable(err)
                failures += 1
                if not again or failures >= self.max_attempts:
                    raise
                self._pause(failures, delay)

    def _pause(self, failures: int, delay: float | None) -> None:
        time.sleep(delay if delay is not None else min(self.retry_delay * 2 ** (failures - 1), 8))
        try:
            grpc.channel_ready_future(self._raw).result(timeout=self.reconnect_timeout)
        except grpc.FutureTimeoutError:
            raise ClientError(
                f"lost the connection to {self.server} and could not reconnect within "
                f"{self.reconnect_timeout:.0f} s"
            ) from None

    # --- push --------------------------------------------------------------------------

    def push(
        self,
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
        self.wait_connected()
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
                    b = self.versions.UploadBundle(
                        self._bundle_requests(
                            parent, fmt, quantization, files, sidecars, upload_id, offset, bar
                        )
                    )
                    pkg = b.package
                    model_created = b.model_created
                else:
                    a = self.versions.UploadArtifacts(
                        self._artifact_requests(
                            parent, fmt, quantization, files[0], upload_id, offset, bar
                        )
                    )
                    pkg = a.packages[0]
                    model_created = a.model_created
                break
            except grpc.RpcError as err:
                again, delay = retryable(err)
                if not again:
                    raise ClientError(describe(err)) from None
                failures += 1
                if failures >= self.max_attempts:
                    raise ClientError(
                        f"gave up after {failures} failed attempts: {describe(err)}"
                    ) from None
                self._pause(failures, delay)
                status = self._upload_status(upload_id)
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
                    pkg = self._find_package(parent, files[0], fmt)
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

    def _upload_status(self, upload_id: str) -> vpb.QueryUploadStatusResponse | _Gone | None:
        try:
            return self._unary(
                self.versions.QueryUploadStatus, vpb.QueryUploadStatusRequest(upload_id=upload_id)
            )
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                return _Gone(describe(err))  # expired or aborted: start over once
            raise ClientError(f"cannot query the upload status: {describe(err)}") from None

    def _find_package(self, parent: str, primary: _Local, fmt: str) -> catalog_pb2.ArtifactPackage:
        mv = self._unary(self.versions.GetVersion, vpb.GetVersionRequest(name=parent))
        for pkg in self._packages(mv.catalog_version):
            if pkg.format == fmt and pkg.resources and pkg.resources[0].sha256 == primary.sha256:
                return pkg
        raise ClientError(f"the upload completed but its package is not in {parent}")

    def _packages(self, catalog_version: str) -> Iterator[catalog_pb2.ArtifactPackage]:
        token = ""
        while True:
            page = self._unary(
                self.catalog.ListCatalogVersionPackages,
                catalog_service_pb2.ListCatalogVersionPackagesRequest(
                    parent=catalog_version, page_size=1000, page_token=token
                ),
            )
            yield from page.packages
            token = page.next_page_token
            if not token:
                return

    def _chunks(
        self, locals_: Sequence[_Local], offset: int, bar: Progress | None
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
                while chunk := f.read(self.chunk_bytes):
                    yield chunk
                    sent += len(chunk)
                    if bar is not None:
                        bar.update(sent)

    def _artifact_requests(
        self,
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
        for chunk in self._chunks([local], offset, bar):
            yield vpb.UploadArtifactsRequest(chunk=chunk)

    def _bundle_requests(
        self,
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
            return vpb.FileSpec(
                file_name=local.path.name, size_bytes=local.size, sha256=local.sha256
            )

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
        for chunk in self._chunks(files, offset, bar):
            yield vpb.UploadBundleRequest(chunk=chunk)

    # --- pull --------------------------------------------------------------------------

    def pull(
        self,
        model: str,
        version: str,
        out: Path,
        *,
        fmt: str | None = None,
        progress: Callable[[str, int], Progress] | None = None,
    ) -> PullResult:
        """Download the primary weights of the version's package (of format `fmt`, or its
        first package) to `out`, resuming from `out.part` if an earlier pull left one."""
        self.wait_connected()
        parent = f"models/{model}/versions/{version}"
        try:
            mv = self._unary(self.versions.GetVersion, vpb.GetVersionRequest(name=parent))
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from None
        if not mv.catalog_version:
            raise ClientError(f"{parent} has no uploaded artifacts")
        try:
            packages = list(self._packages(mv.catalog_version))
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from None
        chosen = [p for p in packages if fmt is None or p.format == fmt]
        if not chosen:
            have = ", ".join(sorted({p.format for p in packages})) or "none"
            raise ClientError(f"{parent} has no {fmt} package (formats: {have})")
        pkg = chosen[0]
        weights = sorted(
            (r for r in pkg.resources if r.kind == "weights"), key=lambda r: r.load_order
        ) or list(pkg.resources)
        if not weights:
            raise ClientError(f"{pkg.name} has no files")
        resource = weights[0]
        return self._download(resource, pkg.format, out, progress)

    def _download(
        self,
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
                    for msg in self.versions.DownloadArtifact(
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
                    again, delay = retryable(err)
                    if not again:
                        raise ClientError(describe(err)) from None
                    failures += 1
                    if failures >= self.max_attempts:
                        raise ClientError(
                            f"gave up after {failures} failed attempts: {describe(err)}"
                        ) from None
                    fh.flush()
                    resumed += 1
                    if bar is not None:
                        bar.note(f"connection lost ({describe(err)}); resuming at {have} bytes")
                    self._pause(failures, delay)
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


@dataclass(frozen=True)
class _Gone:
    why: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
