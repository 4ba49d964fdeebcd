"""Per-org admission control: a request-rate token bucket and a cap on concurrent upload
streams. State is per server process (the caps protect the process itself); with N
replicas an org's effective cap is N times the configured one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from domain.errors import RateLimited


@dataclass(frozen=True)
class LimitSettings:
    # Sustained requests per second per org, and the burst allowed above it.
    requests_per_second: float = 2000.0
    burst: float = 4000.0
    # Upload streams one org may have open at once.
    max_upload_streams: int = 16


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Limiter:
    def __init__(
        self, settings: LimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def admit(self, org: str) -> None:
        """Take one request token for `org`, or raise RateLimited saying when to retry."""
        s = self.settings
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(org)
            if bucket is None:
                bucket = self._buckets[org] = _Bucket(s.burst, now)
            bucket.tokens = min(
                s.burst, bucket.tokens + (now - bucket.stamp) * s.requests_per_second
            )
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = (1 - bucket.tokens) / s.requests_per_second
        raise RateLimited(
            f"request rate limit of {s.requests_per_second:g}/s for this org exceeded; "
            f"retry in {wait:.2f} s",
            timedelta(seconds=wait),
        )

    def open_upload(self, org: str) -> None:
        """Count an upload stream in; raise RateLimited when the org has too many open."""
        with self._lock:
            open_now = self._streams.get(org, 0)
            if open_now >= self.settings.max_upload_streams:
                raise RateLimited(
                    f"this org already has {open_now} upload streams open "
                    f"(limit {self.settings.max_upload_streams}); retry when one finishes",
                    timedelta(seconds=1),
                )
            self._streams[org] = open_now + 1

    def close_upload(self, org: str) -> None:
        with self._lock:
            left = self._streams.get(org, 0) - 1
            if left > 0:
                self._streams[org] = left
            else:
                self._streams.pop(org, None)
