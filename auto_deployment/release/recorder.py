"""The `releases` row of a finished release, and the writer that stores it (design section 5).

The row is made once, when the release reaches RECORD, and kept in the state file until MySQL takes
it: a release never fails because MySQL is down, and the next release writes what is pending.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from app import store
from app.clock import now_iso
from app.settings import MySQL
from auto_deployment.release.state import ReleaseState

log = logging.getLogger(__name__)


class Recorder(Protocol):
    def record(self, row: Mapping[str, Any]) -> None:
        """Store one `releases` row; raise when it could not be stored."""
        ...


class MySQLRecorder:
    """`releases` rows through `app.store` (pipeline account)."""

    def __init__(self, settings: MySQL) -> None:
        self.settings = settings

    def record(self, row: Mapping[str, Any]) -> None:
        store.record_release(self.settings, row)


def release_row(state: ReleaseState) -> dict[str, Any]:
    """The `releases` row (`app.store.RELEASE_COLUMNS`) of a finished release."""
    row: dict[str, Any] = {
        "candidate_version": state.candidate,
        "previous_version": state.previous,
        "started_at": state.started_at,
        "ended_at": state.finished_at or now_iso("milliseconds"),
        "outcome": state.outcome,
        "reason": state.reason,
        "steps": state.step_log or None,
        "decided_by": state.decided_by,
        "controls": state.controls or None,
    }
    for side in ("canary", "stable"):
        figures = state.figures.get(side) or {}
        row[f"{side}_latency_ms"] = figures.get("latency_ms")
        row[f"{side}_requests"] = _round(figures.get("requests"))
        row[f"{side}_errors"] = _round(figures.get("errors"))
        row[f"{side}_error_ratio"] = figures.get("error_ratio")
    return row


def is_row_of(row: Mapping[str, Any], state: ReleaseState) -> bool:
    """Whether a pending row is this release's own (not one an earlier release left)."""
    return row.get("candidate_version") == state.candidate and row.get("started_at") == state.started_at


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)
