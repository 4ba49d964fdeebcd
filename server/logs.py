"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# json.dumps(entry, default=str) without building an encoder for every line.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, milliseconds), level, logger, msg, the
    record's extra fields, and the exception's traceback if any. Every RPC logs a line, so
    this is kept cheap: the date and time up to the second are formatted once a second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def _time(self, created: float) -> str:
        """As datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")."""
        fraction, whole = math.modf(created)  # rounded the way datetime rounds
        micros, second = round(fraction * 1e6), int(whole)
        if micros >= 1_000_000:
            micros, second = micros - 1_000_000, second + 1
        if second != self._second:
            when = datetime.fromtimestamp(second, UTC)
            self._prefix, self._second = when.strftime("%Y-%m-%dT%H:%M:%S"), second
        return f"{self._prefix}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of each record, not at set-up: a test
    harness (or a daemonizer) may swap stderr after the server configured its logging."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure(level: str = "INFO") -> None:
    # What JsonFormatter never writes need not be collected for every record: the caller's
    # file and line (a stack walk), the thread, process and multiprocessing names (the
    # logging HOWTO's "Optimization"). The attributes stay on records, set to None.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
