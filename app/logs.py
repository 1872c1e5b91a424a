"""Structured logging for operators: one line per event, `key=value` pairs after the message."""

from __future__ import annotations

import logging
import sys
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
