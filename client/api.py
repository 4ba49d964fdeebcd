"""The registry client behind `modelregistry push` / `pull`: push (resumable upload) and
pull (resumable download), both verified by sha256.

    with RegistryClient("127.0.0.1:50051", key) as rc:
        pushed = rc.push(Path("model.onnx"), "mobilenet", "1.0")
        rc.pull("mobilenet", "1.0", Path("out/model.onnx"))
        rc.pull_package("piper", "2", Path("out/piper"))  # weights, tokenizer, ...

Every failure that is not retryable, or retries that make no progress, raise ClientError
with a one-line message. The work lives in client/upload.py (push), client/download.py
(pull), client/connection.py (channel, key, retried calls) and client/errors.py (what a
failed call means).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from client import download, upload
from client.connection import Connection
from client.download import PullResult
from client.progress import Progress
from client.upload import PushResult, Sidecar


class RegistryClient(Connection):
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
        return upload.push(
            self,
            path,
            model,
            version,
            fmt=fmt,
            sidecars=sidecars,
            quantization=quantization,
            progress=progress,
        )

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
        return download.pull(self, model, version, out, fmt=fmt, progress=progress)

    def pull_package(
        self,
        model: str,
        version: str,
        out_dir: Path,
        *,
        fmt: str | None = None,
        progress: Callable[[str, int], Progress] | None = None,
    ) -> list[PullResult]:
        """Download every stored file of the version's package (of format `fmt`, or its
        first package) into `out_dir`, each resumable and verified as pull's."""
        return download.pull_package(self, model, version, out_dir, fmt=fmt, progress=progress)
