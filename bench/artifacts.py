"""Upload and download of one large artifact through each path, with the server's memory.

- this service: VersionService.UploadArtifacts (client stream, 4 MiB chunks) and
  VersionService.DownloadArtifact (server stream), from a Python gRPC client;
- MLflow: its proxied artifact API (`--serve-artifacts`), `PUT`/`GET
  /api/2.0/mlflow-artifacts/artifacts/<path>`, with curl;
- direct MinIO, the limit: a presigned PUT/GET with curl (one stream, like the two above),
  and the MinIO Python client (`fput_object`/`get_object`, multipart); the faster is the
  limit.

Peak RSS is the summed resident memory of the server process and all its children
(MLflow's workers), sampled every 50 ms while the upload runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from stack import MLFLOW_BUCKET, OURS_BUCKET, RssSampler, Stack, log

CHUNK = 4 * 1024 * 1024
MiB = 1024 * 1024


@dataclass
class Transfer:
    path: str
    direction: str
    bytes: int
    seconds: list[float]
    peak_rss_bytes: int = 0
    idle_rss_bytes: int = 0

    @property
    def best_seconds(self) -> float:
        return min(self.seconds)

    @property
    def mib_per_s(self) -> float:
        # Best of the repetitions: other work on a shared machine only ever slows a run.
        return self.bytes / MiB / min(self.seconds)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["median_seconds"] = statistics.median(self.seconds)
        d["mib_per_s"] = self.mib_per_s
        return d


def make_file(path: Path, size: int) -> None:
    block = 8 * MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def _curl(argv: list[str], timeout: float) -> float:
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
         "--write-out", "%{time_total}", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"curl {' '.join(argv[:3])}... failed: {done.stderr.strip()}")
    return float(done.stdout.strip())


# ---------------------------------------------------------------------------------------
# this service


def _channel(address: str) -> Any:
    import grpc

    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 16 * MiB),
            ("grpc.max_receive_message_length", 16 * MiB),
        ],
    )


def upload_ours(address: str, token: str, path: Path, parent: str) -> tuple[float, str]:
    """(seconds, resource name) of one UploadArtifacts stream of the file."""
    from modelregistry.v1 import version_service_pb2 as vpb
    from modelregistry.v1 import version_service_pb2_grpc

    size = path.stat().st_size

    def stream() -> Iterator[vpb.UploadArtifactsRequest]:
        yield vpb.UploadArtifactsRequest(target=vpb.UploadTarget(parent=parent))
        yield vpb.UploadArtifactsRequest(
            file=vpb.UploadFileHeader(
                file=vpb.FileSpec(file_name="model.onnx", kind="weights", size_bytes=size),
                format="onnx",
                upload_id=str(uuid.uuid4()),
            )
        )
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield vpb.UploadArtifactsRequest(chunk=chunk)

    with _channel(address) as ch:
        stub = version_service_pb2_grpc.VersionServiceStub(ch)
        start = time.monotonic()
        resp = stub.UploadArtifacts(
            stream(), metadata=[("authorization", f"Bearer {token}")], timeout=3600
        )
        seconds = time.monotonic() - start
    resource = resp.packages[0].resources[0]
    if resource.size_bytes != size:
        raise RuntimeError(f"UploadArtifacts stored {resource.size_bytes} bytes of {size}")
    return seconds, resource.name


def download_ours(address: str, token: str, resource: str, size: int) -> float:
    from modelregistry.v1 import version_service_pb2 as vpb
    from modelregistry.v1 import version_service_pb2_grpc

    with _channel(address) as ch:
        stub = version_service_pb2_grpc.VersionServiceStub(ch)
        start = time.monotonic()
        got = 0
        for msg in stub.DownloadArtifact(
            vpb.DownloadArtifactRequest(name=resource),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=3600,
        ):
            got += len(msg.data)
        seconds = time.monotonic() - start
    if got != size:
        raise RuntimeError(f"DownloadArtifact returned {got} bytes of {size}")
    return seconds


# ---------------------------------------------------------------------------------------
# scenario


def _pair(path: str, size: int) -> tuple[Transfer, Transfer]:
    return Transfer(path, "upload", size, []), Transfer(path, "download", size, [])


def run(
    stack: Stack, address: str, token: str, mlflow_url: str, size: int, reps: int, tmp: Path
) -> dict[str, Any]:
    assert stack.minio is not None and stack.ours is not None and stack.mlflow is not None
    path = tmp / "artifact.bin"
    log(f"writing a {size / MiB:.0f} MiB random file")
    make_file(path, size)
    timeout = 3600.0
    results: dict[str, Transfer] = {}

    # Direct MinIO: presigned single-stream PUT/GET with curl, and the Python client.
    client = stack.minio.client()
    up, down = _pair("minio-curl", size)
    for r in range(reps):
        key = f"direct/curl-{r}.bin"
        put = client.presigned_put_object(OURS_BUCKET, key, expires=timedelta(hours=1))
        up.seconds.append(_curl(["--upload-file", str(path), put], timeout))
        get = client.presigned_get_object(OURS_BUCKET, key, expires=timedelta(hours=1))
        down.seconds.append(_curl([get], timeout))
    results["upload/minio-curl"], results["download/minio-curl"] = up, down

    up, down = _pair("minio-py", size)
    for r in range(reps):
        key = f"direct/py-{r}.bin"
        start = time.monotonic()
        client.fput_object(OURS_BUCKET, key, str(path), part_size=64 * MiB)
        up.seconds.append(time.monotonic() - start)
        start = time.monotonic()
        obj = client.get_object(OURS_BUCKET, key)
        try:
            got = sum(len(b) for b in obj.stream(CHUNK))
        finally:
            obj.close()
            obj.release_conn()
        down.seconds.append(time.monotonic() - start)
        if got != size:
            raise RuntimeError(f"MinIO get_object returned {got} bytes of {size}")
    results["upload/minio-py"], results["download/minio-py"] = up, down

    # This service.
    up, down = _pair("modelregistry", size)
    with RssSampler(stack.ours.pid) as rss:
        up.idle_rss_bytes = rss.baseline
        resources = []
        for r in range(reps):
            secs, resource = upload_ours(
                address, token, path, f"models/upload-bench/versions/r{r}-{uuid.uuid4().hex[:8]}"
            )
            up.seconds.append(secs)
            resources.append(resource)
    up.peak_rss_bytes = rss.peak
    with RssSampler(stack.ours.pid) as rss:
        down.idle_rss_bytes = rss.baseline
        for resource in resources:
            down.seconds.append(download_ours(address, token, resource, size))
    down.peak_rss_bytes = rss.peak
    results["upload/modelregistry"], results["download/modelregistry"] = up, down

    # MLflow's proxied artifact API.
    up, down = _pair("mlflow", size)
    with RssSampler(stack.mlflow.pid) as rss:
        up.idle_rss_bytes = rss.baseline
        urls = []
        for r in range(reps):
            url = (
                f"{mlflow_url}/api/2.0/mlflow-artifacts/artifacts/bench/"
                f"{uuid.uuid4().hex[:8]}/r{r}/model.onnx"
            )
            up.seconds.append(_curl(["--upload-file", str(path), url], timeout))
            urls.append(url)
    up.peak_rss_bytes = rss.peak
    with RssSampler(stack.mlflow.pid) as rss:
        down.idle_rss_bytes = rss.baseline
        for url in urls:
            down.seconds.append(_curl([url], timeout))
    down.peak_rss_bytes = rss.peak
    results["upload/mlflow"], results["download/mlflow"] = up, down
    # MLflow stores under its bucket; check one object is really there at full size.
    stored = [o for o in client.list_objects(MLFLOW_BUCKET, prefix="bench/", recursive=True)]
    if not stored or any(o.size != size for o in stored):
        raise RuntimeError(f"MLflow's proxied uploads did not all land in MinIO: {stored}")
    path.unlink()
    return {k: v.to_json() for k, v in results.items()}
