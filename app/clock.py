"""Time as every part writes it: UTC ISO stamps, sortable ids, and one duration grammar.

One grammar for every duration a person types (``--every``, ``--collect``, ``--observe``, settings):
a number with a unit ``ms``, ``s``, ``m``, ``h``, ``d`` or ``w``; a bare number is seconds.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d|w)?\s*", re.ASCII)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def now_iso(timespec: str = "seconds") -> str:
    """``2026-11-24T07:30:00Z`` (``timespec`` as `datetime.isoformat`, e.g. ``milliseconds``)."""
    return datetime.now(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def now_ms() -> int:
    """Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000


def stamp_id() -> str:
    """Sortable by creation time, unique across concurrent processes: ``20261124T073000Z-3fa9c1``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def parse_duration(text: str) -> float:
    """``"15m"`` → 900.0 seconds; units ms, s, m, h, d, w; a bare number is seconds."""
    match = _DURATION.fullmatch(text or "")
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 500ms, 30s, 15m, 6h, 2d)")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """Whole seconds in the largest unit that divides them: 900 → ``15m``, 172800 → ``2d`` (≥ 1 s).

    The output parses back with `parse_duration`, and is also a valid Prometheus range.
    """
    whole = max(1, round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def duration_arg(text: str) -> float:
    """`parse_duration` as an argparse ``type=``: a bad value becomes a usage error naming the examples."""
    import argparse  # only command lines need it

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
