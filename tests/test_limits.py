"""Admission control on its own (domain/limits.py), with a fake clock."""

from __future__ import annotations

import pytest

from domain.errors import RateLimited
from domain.limits import Limiter, LimitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_burst_then_refills() -> None:
    clock = Clock()
    limiter = Limiter(LimitSettings(requests_per_second=10, burst=5), clock)
    for _ in range(5):
        limiter.admit("a")
    with pytest.raises(RateLimited) as info:
        limiter.admit("a")
    assert 0 < info.value.retry_after.total_seconds() <= 0.1
    limiter.admit("b")  # other orgs are unaffected
    clock.now += 0.1
    limiter.admit("a")
    with pytest.raises(RateLimited):
        limiter.admit("a")


def test_upload_stream_cap() -> None:
    limiter = Limiter(LimitSettings(max_upload_streams=2))
    limiter.open_upload("a")
    limiter.open_upload("a")
    with pytest.raises(RateLimited):
        limiter.open_upload("a")
    limiter.open_upload("b")
    limiter.close_upload("a")
    limiter.open_upload("a")
