r"""A TCP proxy on loopback that cuts connections after some bytes, or in place of the
answer to a chosen request: a flaky network for resume tests.

>>> with CuttingProxy("127.0.0.1:50051", cut_upstream_after=[20 * MiB]) as proxy:
...     proxy.address   # 127.0.0.1:<port>; the 1st connection dies after 20 MiB sent
>>> with CuttingProxy(minio, lose_reply_to=re.compile(rb"POST [^ ]*\?uploadId=")) as p:
...     ...             # the first such request reaches the server; its answer never returns
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to `target`. Connection i (0-based) is cut (both sockets
    shut down, as a dropped link) once it has carried more than `cut_upstream_after[i]`
    bytes client -> server, or `cut_downstream_after[i]` bytes server -> client; later
    connections are forwarded whole. `downstream_bytes_per_second` throttles server ->
    client (a slow link). With `lose_reply_to`, the first request (of any connection) whose
    bytes match it is forwarded whole, and the connection is cut when the answer starts
    coming back, none of it forwarded: the request took effect, the client never learns."""

    def __init__(
        self,
        target: str,
        *,
        cut_upstream_after: Sequence[int] = (),
        cut_downstream_after: Sequence[int] = (),
        downstream_bytes_per_second: float | None = None,
        lose_reply_to: re.Pattern[bytes] | None = None,
    ) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.up_limits = list(cut_upstream_after)
        self.down_limits = list(cut_downstream_after)
        self.down_rate = downstream_bytes_per_second
        self.lose_reply_to = lose_reply_to
        self._reply_chosen = False  # a request matching it went upstream
        self.replies_lost = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CuttingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()

    def __enter__(self) -> CuttingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            up = self.up_limits[index] if index < len(self.up_limits) else None
            down = self.down_limits[index] if index < len(self.down_limits) else None
            pair = _Pair(self, client, upstream)
            for src, dst, limit, rate in (
                (client, upstream, up, None),
                (upstream, client, down, self.down_rate),
            ):
                threading.Thread(
                    target=pair.pump, args=(src, dst, limit, rate), daemon=True
                ).start()


class _Pair:
    def __init__(self, proxy: CuttingProxy, a: socket.socket, b: socket.socket) -> None:
        self.proxy = proxy
        self.a, self.b = a, b
        self.closed = False
        self.lock = threading.Lock()
        self.lose_next_reply = False  # a request matching lose_reply_to went upstream
        self.sent = b""  # the latest upstream bytes, for matches across reads

    def close(self, cut: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if cut:
                self.proxy.cuts += 1
        for s in (self.a, self.b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def pump(
        self, src: socket.socket, dst: socket.socket, limit: int | None, rate: float | None
    ) -> None:
        carried = 0
        started = time.monotonic()
        try:
            while True:
                if rate is not None:
                    ahead = carried / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                data = src.recv(64 * 1024 if rate is not None else 256 * 1024)
                if not data:
                    break
                if self.proxy.lose_reply_to is not None and self._loses(src, data):
                    self.close(cut=True)
                    return
                if limit is not None and carried + len(data) > limit:
                    dst.sendall(data[: max(0, limit - carried)])
                    self.close(cut=True)
                    return
                dst.sendall(data)
                carried += len(data)
        except OSError:
            pass
        self.close(cut=False)

    def _loses(self, src: socket.socket, data: bytes) -> bool:
        """Upstream: arm on a matching request (once per proxy). Downstream: whether this
        is the start of the armed request's answer, to be lost."""
        proxy = self.proxy
        assert proxy.lose_reply_to is not None
        if src is self.b:
            if not self.lose_next_reply:
                return False
            with proxy._lock:
                proxy.replies_lost += 1
            return True
        if not proxy._reply_chosen:
            self.sent = (self.sent + data)[-4096:]
            if proxy.lose_reply_to.search(self.sent):
                with proxy._lock:
                    self.lose_next_reply = not proxy._reply_chosen
                    proxy._reply_chosen = True
        return False
