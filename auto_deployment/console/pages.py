"""What each console page shows, gathered from the platform's own functions (no SQL here, no second audit).

Every database read goes through :mod:`app.store` as the auditor account; the audit page calls
:func:`auto_deployment.audit.user_requests`, the function behind ``audit user``, so both answer alike.
Files (version.txt, slot pointers, the release state file, reports) are only ever read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app import store
from app.contracts import pointer
from app.contracts.topology import Topology
from auto_deployment import audit
from auto_deployment.console.settings import Console
from auto_deployment.monitor import online_eval

REPORT_SUFFIXES = (".html", ".json")
REPORTS_FOLDER = "reports"  # a version's reports: models/<n>/reports/ (the pipeline copies them there)
MAX_REPORTS = 2000  # per folder: a console page, not a file browser
_SKIPPED_DIRS = {"work"}  # <run>/pipeline/work holds a run's staged data, not reports
_USER_ID = re.compile(r"^[0-9]{1,19}$")
_BIGINT_MAX = 2**63 - 1
_MAX_TIME_CHARS = 64


class BadRequest(ValueError):
    """Input the console refuses (a 400); the message is shown to the person as is."""


# ------------------------------------------------------------------------------------------ versions
def serving_now(console: Console, topology: Topology | None = None) -> dict[str, int | None]:
    """Which version version.txt names as stable, and which each slot's pointer names (None: unset)."""
    out: dict[str, int | None] = {}
    with contextlib.suppress(ValueError, OSError):
        out["version.txt"] = pointer.read_number(console.version_file)
    for slot in (topology or Topology()).names:
        value = None
        with contextlib.suppress(ValueError, OSError):
            value = pointer.read_slot(console.run_dir, slot)
        out[slot] = value
    return out


def versions(console: Console) -> list[dict[str, Any]]:
    """Every tracked version, newest first, with its reports on disk."""
    rows = store.tracking_history(console.mysql)
    reports = reports_by_version(console)
    for row in rows:
        row["reports"] = reports.get(int(row["version_number"]), [])
    return rows


def version_detail(console: Console, version: int) -> dict[str, Any] | None:
    """One version's tracking row, what it served (``audit version``), its releases and its reports."""
    rows = store.tracking_history(console.mysql, version)
    summary = audit.version_summary(console.mysql, version)
    if not rows and not summary["requests"]:
        return None
    return {
        "row": rows[0] if rows else None,
        "served": summary,
        "releases": store.release_history(console.mysql, candidate=version),
        "reports": reports_by_version(console).get(version, []),
    }


# ------------------------------------------------------------------------------------------ releases
def releases(console: Console) -> list[dict[str, Any]]:
    return store.release_history(console.mysql)


def last_release_state(console: Console) -> dict[str, Any] | None:
    """The last release's state file (its per-check results), read only; None when absent or unreadable."""
    path = console.run_dir / "release" / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


# ------------------------------------------------------------------------------------ online quality
@dataclass
class OnlineQuality:
    rows: list[dict[str, Any]]
    log: Path
    message: str = ""
    computed_at: float = 0.0


class OnlineCache:
    """The online evaluation of the event log's tail, recomputed at most every `ttl_s` (it reads megabytes)."""

    def __init__(self, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: OnlineQuality | None = None

    def get(self, console: Console) -> OnlineQuality:
        with self._lock:
            if self._value is None or time.monotonic() - self._value.computed_at > self.ttl_s:
                self._value = online_quality(console)
            return self._value


def online_quality(console: Console) -> OnlineQuality:
    """Per (version, slot): lists, score, hit rate, average rating (`auto_deployment.monitor.online_eval`)."""
    log = console.event_log
    if not log.is_file():
        return OnlineQuality([], log, f"no event log at {log} (CONSOLE_EVENT_LOG)", time.monotonic())
    attributor = online_eval.ProvenanceAttributor(console.mysql)
    runtimes = online_eval.load_runtimes(console.data_dir)
    with online_eval.open_tail(log, console.event_log_mb) as fh:
        summary = online_eval.report(fh, attributor, runtimes, now=time.time())
    rows = [{"version": v, "slot": s, **m} for (v, s), m in summary.items()]
    rows.sort(key=lambda r: (_version_key(r["version"]), r["slot"]), reverse=True)
    for row in rows:
        if isinstance(row.get("avg_rating"), float) and math.isnan(row["avg_rating"]):
            row["avg_rating"] = None
    return OnlineQuality(rows, log, "" if rows else "no settled list in the log yet", time.monotonic())


def _version_key(version: str) -> tuple[int, int | str]:
    return (1, int(version)) if version.isdigit() else (0, version)


# --------------------------------------------------------------------------------------------- audit
@dataclass(frozen=True)
class AuditQuery:
    user_id: int
    since: datetime | None
    until: datetime | None


def parse_audit(args: dict[str, str]) -> AuditQuery:
    """The audit form's fields, checked; `BadRequest` says what is wrong in one sentence."""
    raw_user = (args.get("user_id") or "").strip()
    if not raw_user:
        raise BadRequest("user id is required: a non-negative integer such as 4242")
    if not _USER_ID.match(raw_user) or int(raw_user) > _BIGINT_MAX:
        shown = raw_user if len(raw_user) <= 40 else raw_user[:40] + "..."
        raise BadRequest(f"user id must be a non-negative integer below 2^63 (got {shown!r})")
    bounds: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        raw = (args.get(name) or "").strip()
        if not raw:
            bounds[name] = None
            continue
        if len(raw) > _MAX_TIME_CHARS:
            raise BadRequest(f"{name}: too long for an ISO-8601 date or time (at most {_MAX_TIME_CHARS} characters)")
        try:
            bounds[name] = audit.parse_time(raw)
        except (argparse.ArgumentTypeError, ValueError, OverflowError) as exc:
            raise BadRequest(f"{name}: {exc} (e.g. 2026-11-24 or 2026-11-24T12:00:00Z)") from None
    since, until = bounds["since"], bounds["until"]
    if since is not None and until is not None and since > until:
        raise BadRequest(f"empty time range: since {audit.iso(since.replace(tzinfo=None))} is after "
                         f"until {audit.iso(until.replace(tzinfo=None))}")
    return AuditQuery(int(raw_user), since, until)


def audit_user(console: Console, query: AuditQuery) -> list[dict[str, Any]]:
    """The answer of ``python -m auto_deployment audit user`` (the same function)."""
    return audit.user_requests(console.mysql, query.user_id, query.since, query.until)


# ------------------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Report:
    root: int  # index into Console.report_dirs
    path: str  # relative to that folder, POSIX
    size: int
    modified: float

    @property
    def version(self) -> int | None:
        """The version whose folder holds the report (``models/<n>/...``), if any."""
        head = self.path.split("/", 1)[0]
        return int(head) if head.isdigit() and "/" in self.path else None


def _listed(root: Path, rel: Path, models_dir: Path) -> bool:
    """Whether `rel` (under report folder `root`) may be listed and served: a report, not a bundle's own files."""
    folders = rel.parts[:-1]
    if any(p.startswith(".") or p in _SKIPPED_DIRS for p in folders) or rel.name.startswith(".") or ".." in rel.parts:
        return False
    if rel.suffix.lower() not in REPORT_SUFFIXES:
        return False
    return root != models_dir or REPORTS_FOLDER in folders  # models/<n>/reports/, beside the bundle


def reports(console: Console) -> list[tuple[Path, list[Report]]]:
    """Every ``*.html`` / ``*.json`` report under each report folder (in the models folder: ``<n>/reports/``)."""
    out = []
    for index, root in enumerate(console.report_dirs):
        found: list[Report] = []
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if not _listed(root, rel, console.models_dir):
                    continue
                if not path.is_file():
                    continue
                stat = path.stat()
                found.append(Report(index, rel.as_posix(), stat.st_size, stat.st_mtime))
                if len(found) >= MAX_REPORTS:
                    break
        out.append((root, found))
    return out


def reports_by_version(console: Console) -> dict[int, list[Report]]:
    """Reports found inside a version's folder of the models directory, by version."""
    out: dict[int, list[Report]] = {}
    for root, found in reports(console):
        if root != console.models_dir:
            continue
        for report in found:
            if report.version is not None:
                out.setdefault(report.version, []).append(report)
    return out


def report_file(console: Console, root: int, rel: str) -> tuple[Path, str] | None:
    """(folder, relative path) of a linkable report, or None: only listed folders and suffixes are served."""
    if not 0 <= root < len(console.report_dirs):
        return None
    folder = console.report_dirs[root]
    return (folder, rel) if _listed(folder, Path(rel), console.models_dir) else None
