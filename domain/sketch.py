"""Log-bucketed histograms with a bounded relative error (DDSketch-style), mergeable.

A positive value x falls in bucket i = ceil(log_gamma(x)), the interval
(gamma^(i-1), gamma^i], with gamma = (1 + a) / (1 - a). Reading a bucket back as
2 * gamma^i / (gamma + 1) is within a relative error a of every value in it. Zeros are
counted exactly in their own bucket; negative values are not accepted (callers validate).

Quantiles follow numpy's default definition: rank r = q * (n - 1) over the sorted values,
linear interpolation between the values at floor(r) and ceil(r). Each of those two order
statistics is estimated within a, so their interpolation is too: |q' - q| <= a * q.

Merging adds bucket counts, so sketches of disjoint sets combine exactly into the sketch of
their union: that is what makes hourly rollups summable over any window.

Serialised form (little-endian), compact because window queries fetch hundreds of them:
b"" is the empty sketch; otherwise a header (1-byte kind, 1-byte count width w in
{1, 2, 4, 8}, uint64 zero count, uint32 n) then either
- kind b"D" (dense): int32 first key k, n unsigned w-byte counts of keys k .. k+n-1, or
- kind b"S" (sparse, for scattered keys): n int32 keys (ascending), n w-byte counts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = math.log(GAMMA)
_HEADER = struct.Struct("<cBQI")
_DENSE, _SPARSE = b"D", b"S"
_KEY = np.dtype("<i4")
_WIDTHS: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
# Beyond this many distinct buckets between the smallest and largest key, merge sparsely
# (np.unique) instead of with a dense bincount.
_DENSE_SPAN = 1 << 20

Keys = npt.NDArray[np.int32]
Counts = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


def bucket_keys(values: Floats) -> Keys:
    """Bucket index of each (positive) value."""
    return np.ceil(np.log(values) / LOG_GAMMA).astype(np.int32)


def bucket_value(keys: Keys | npt.NDArray[np.float64]) -> Floats:
    """The representative value of buckets: within RELATIVE_ACCURACY of all their members."""
    return 2.0 * np.exp(np.asarray(keys, dtype=np.float64) * LOG_GAMMA) / (GAMMA + 1.0)


class Sketch:
    """Counts per bucket plus an exact zero count. Immutable by convention."""

    __slots__ = ("counts", "keys", "zero")

    def __init__(self, zero: int = 0, keys: Keys | None = None, counts: Counts | None = None):
        self.zero = int(zero)
        self.keys: Keys = keys if keys is not None else np.empty(0, np.int32)
        self.counts: Counts = counts if counts is not None else np.empty(0, np.int64)

    @classmethod
    def of(cls, values: Floats | Sequence[float]) -> Sketch:
        """The sketch of non-negative finite values."""
        arr = np.asarray(values, dtype=np.float64)
        if len(arr) == 0:
            return cls()
        positive = arr[arr > 0]
        keys, counts = np.unique(bucket_keys(positive), return_counts=True)
        return cls(len(arr) - len(positive), keys.astype(np.int32), counts.astype(np.int64))

    @classmethod
    def from_buckets(cls, buckets: Iterable[tuple[int | None, int]]) -> Sketch:
        """From (bucket key, count) pairs, key None counting zeros (as a database computes
        them: ceil(ln(x) / LOG_GAMMA))."""
        zero = 0
        keys: list[int] = []
        counts: list[int] = []
        for key, n in buckets:
            if key is None:
                zero += n
            else:
                keys.append(key)
                counts.append(n)
        if not keys:
            return cls(zero)
        return cls(
            zero,
            *_combine(np.asarray(keys, dtype=np.int64), np.asarray(counts, dtype=np.int64)),
        )

    @property
    def count(self) -> int:
        return self.zero + int(self.counts.sum())

    def __bool__(self) -> bool:
        return self.count > 0

    # -- merging ------------------------------------------------------------------------

    @classmethod
    def merge(cls, sketches: Iterable[Sketch]) -> Sketch:
        parts = [s for s in sketches if s.zero or len(s.keys)]
        if not parts:
            return cls()
        if len(parts) == 1:
            return parts[0]
        zero = sum(s.zero for s in parts)
        keys = np.concatenate([s.keys for s in parts])
        counts = np.concatenate([s.counts for s in parts])
        return cls(zero, *_combine(keys, counts))

    def __add__(self, other: Sketch) -> Sketch:
        return Sketch.merge([self, other])

    # -- serialisation ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The serialised form; b"" for an empty sketch."""
        n = len(self.keys)
        if n == 0 and self.zero == 0:
            return b""
        top = int(self.counts.max()) if n else 0
        width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
        dtype = _WIDTHS[width]
        if n == 0:
            return _HEADER.pack(_DENSE, width, self.zero, 0) + struct.pack("<i", 0)
        first = int(self.keys[0])
        span = int(self.keys[-1]) - first + 1
        if span * width <= n * (4 + width):
            dense = np.zeros(span, dtype=dtype)
            dense[self.keys.astype(np.int64) - first] = self.counts
            return (
                _HEADER.pack(_DENSE, width, self.zero, span)
                + struct.pack("<i", first)
                + dense.tobytes()
            )
        return (
            _HEADER.pack(_SPARSE, width, self.zero, n)
            + self.keys.astype(_KEY, copy=False).tobytes()
            + self.counts.astype(dtype).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Sketch:
        return cls.merge_bytes([data])

    @classmethod
    def merge_bytes(cls, blobs: Iterable[bytes]) -> Sketch:
        """Decode and merge many serialised sketches in one pass."""
        zero = 0
        dense: list[tuple[int, npt.NDArray[np.unsignedinteger]]] = []
        sparse: list[tuple[Keys, npt.NDArray[np.unsignedinteger]]] = []
        for data in blobs:
            if not data:
                continue
            kind, width, z, n = _HEADER.unpack_from(data)
            zero += z
            off = _HEADER.size
            if kind == _DENSE:
                (first,) = struct.unpack_from("<i", data, off)
                if n:
                    dense.append((first, np.frombuffer(data, _WIDTHS[width], n, off + 4)))
            elif kind == _SPARSE:
                keys = np.frombuffer(data, _KEY, n, off)
                sparse.append((keys, np.frombuffer(data, _WIDTHS[width], n, off + 4 * n)))
            else:
                raise ValueError("not a serialised sketch")
        if not dense and not sparse:
            return cls(zero)
        lows = [f for f, _ in dense] + [int(k[0]) for k, _ in sparse]
        highs = [f + len(c) - 1 for f, c in dense] + [int(k[-1]) for k, _ in sparse]
        kmin, span = min(lows), max(highs) - min(lows) + 1
        if span <= _DENSE_SPAN:
            total = np.zeros(span, dtype=np.int64)
            for first, counts in dense:
                total[first - kmin : first - kmin + len(counts)] += counts
            for keys, counts in sparse:
                total[keys.astype(np.int64) - kmin] += counts
            nz = np.flatnonzero(total)
            return cls(zero, (nz + kmin).astype(np.int32), total[nz])
        all_keys = [np.arange(f, f + len(c), dtype=np.int64) for f, c in dense]
        all_keys += [k.astype(np.int64) for k, _ in sparse]
        all_counts = [c.astype(np.int64) for _, c in dense + sparse]
        return cls(zero, *_combine(np.concatenate(all_keys), np.concatenate(all_counts)))

    # -- reading ------------------------------------------------------------------------

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Estimates of the q-quantiles (0 <= q <= 1); 0.0 for an empty sketch."""
        n = self.count
        if n == 0:
            return [0.0 for _ in qs]
        ranks = np.asarray(qs, dtype=np.float64) * (n - 1)
        lo = np.floor(ranks).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = ranks - lo
        v_lo = self._at_ranks(lo)
        v_hi = self._at_ranks(hi)
        return [float(x) for x in v_lo + frac * (v_hi - v_lo)]

    def _at_ranks(self, ranks: npt.NDArray[np.int64]) -> Floats:
        """Estimated value of the order statistics at 0-based `ranks`."""
        out = np.zeros(len(ranks), dtype=np.float64)
        above = ranks >= self.zero
        if above.any():
            cum = np.cumsum(self.counts)
            idx = np.searchsorted(cum, ranks[above] - self.zero, side="right")
            out[above] = bucket_value(self.keys[idx])
        return out


def _combine(keys: npt.NDArray[np.integer], counts: npt.NDArray[np.integer]) -> tuple[Keys, Counts]:
    """Sum `counts` per key; keys ascending, zero counts dropped."""
    if len(keys) == 0:
        return np.empty(0, np.int32), np.empty(0, np.int64)
    kmin = int(keys.min())
    span = int(keys.max()) - kmin + 1
    if span <= _DENSE_SPAN:
        # Float weights are exact for counts below 2**53.
        dense = np.bincount(keys.astype(np.int64) - kmin, weights=counts, minlength=span)
        nz = np.flatnonzero(dense)
        return (nz + kmin).astype(np.int32), dense[nz].astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(summed, inverse, counts)
    return uniq.astype(np.int32), summed
