"""A plain-text progress bar for transfers: bytes, rate, ETA, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`update(done)` as bytes move; `note(text)` for events (a resume); `finish()` at the end.

    On a terminal the bar redraws in place up to 10 times a second; otherwise (a log file,
    a CI job) it prints a line every `line_interval` seconds and a last one at the end.
    The rate counts only bytes moved since `start()` (a resume does not inflate it).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        line_interval: float = 5.0,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.line_interval = line_interval
        self.done = 0
        self._t0 = time.monotonic()
        self._base = 0
        self._last_draw = 0.0
        self._drawn = False

    def start(self, done: int) -> None:
        """(Re)start counting at `done` bytes (0, or where a resume continues)."""
        self.done = self._base = done
        self._t0 = time.monotonic()
        self._draw(force=True)

    def update(self, done: int) -> None:
        self.done = done
        self._draw()

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self.stream.write("\n")
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()
        self._drawn = False

    def finish(self) -> None:
        self._draw(force=True)
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = (self.done - self._base) / elapsed
        total = max(self.total, 1)
        fraction = min(self.done / total, 1.0) if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        remaining = self.total - self.done
        eta = human_duration(remaining / rate) if rate > 0 and remaining > 0 else "0:00"
        if remaining > 0 and rate <= 0:
            eta = "?"
        return (
            f"{self.label} {fraction * 100:5.1f}% [{bar}] {human_bytes(self.done)}"
            f"/{human_bytes(self.total)} {human_bytes(rate)}/s ETA {eta}"
        )

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.1 if self.tty else self.line_interval
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._drawn = True
