"""Structured logging for operators: one line per event, `key=value` pairs after the message."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time


class KeyValueFormatter(logging.Formatter):
    """`2026-11-24T07:30:00Z INFO train: fitted model rmse=0.912 seconds=3.2`."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ")
        extra = getattr(record, "kv", None)
        tail = ""
        if extra:
            tail = " " + " ".join(f"{k}={_quote(v)}" for k, v in extra.items())
        line = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'"{text}"' if (" " in text or not text) else text


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def kv(**pairs: object) -> dict[str, dict[str, object]]:
    """`log.info("trained", extra=kv(rmse=0.91))` attaches key=value pairs to a line."""
    return {"kv": pairs}


class RepeatFilter(logging.Filter):
    """One line of a kind (digits ignored) per ``every_s``: librdkafka repeats "connect failed" 10x a second."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())[:200]
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        return True
