"""What a release remembers: its state file, its result, and the lock that keeps one release at a time.

``<run>/release/state.json`` is replaced atomically (`app.files.write_json_atomic`) on every
transition, before the work of the new state starts, so a release process that dies can be finished
or repaired by the next one from this file alone. ``<run>/release/lock`` is an `flock`
(`app.files.exclusive_lock`) naming its holder, so a refused release can say who holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.clock import now_iso
from app.files import LockHeld, exclusive_lock, write_json_atomic
from app.logs import kv
from app.store import ABORTED, FAILED, PROMOTED  # noqa: F401 - re-exported to the release package

log = logging.getLogger(__name__)

# states (the controller's handler table is keyed by them)
DEPLOY_CANARY = "DEPLOY_CANARY"
OBSERVE = "OBSERVE"
AWAIT_APPROVAL = "AWAIT_APPROVAL"  # every step passed; RELEASE_REQUIRE_APPROVAL=1 waits for `release --approve`
ANALYSE = "ANALYSE"
PROMOTE = "PROMOTE"
ABORT = "ABORT"
RECORD = "RECORD"
NOTIFY = "NOTIFY"
DONE = "DONE"
UNDECIDED = (DEPLOY_CANARY, OBSERVE, AWAIT_APPROVAL, ANALYSE)  # no decision taken yet: interruptible, rolled back
# OBSERVE runs the traffic steps, each analysed every interval (`steps.next_move`); ANALYSE, the single
# end-of-window analysis of earlier versions, is only ever found in an old state file (repaired as undecided).

# outcomes: the `releases.outcome` column's (app.store), plus "noop" for a release with nothing to do
NOOP = "noop"


def _now() -> str:
    return now_iso("milliseconds")


class ReleaseLocked(RuntimeError):
    """Another release holds the lock (the CLI exits 3)."""


@dataclass
class ReleaseState:
    """Everything needed to finish or repair a release after a crash (the JSON of state.json)."""

    candidate: int
    previous: int
    state: str = DEPLOY_CANARY
    started_at: str = field(default_factory=_now)
    gate: dict[str, Any] = field(default_factory=dict)  # the observation window and the checks, as data
    observe_started: float | None = None  # unix time the canary started serving the candidate
    step: int = 0  # index of the traffic step (steps.Step) being observed
    step_started: float | None = None  # unix time its weights were applied; None: not applied yet
    next_check: float | None = None  # unix time of its next analysis interval
    failures: int = 0  # failed intervals in this release (steps.next_move)
    held: int = 0  # inconclusive intervals in a row past the step's time
    intervals: list[dict[str, Any]] = field(default_factory=list)  # the last intervals' verdicts and moves
    step_log: list[dict[str, Any]] = field(default_factory=list)  # each step reached (the `releases.steps` column)
    series: list[dict[str, Any]] = field(default_factory=list)  # every interval's check values and figures (report)
    paused_at: float | None = None  # unix time of `release --pause`; None when running
    controls: list[dict[str, Any]] = field(default_factory=list)  # manual controls applied (control.py)
    decided_by: str | None = None  # who aborted, promoted or approved by hand; None: the checks decided
    awaiting_since: float | None = None  # unix time the release began to wait for `release --approve`
    decider: dict[str, Any] | None = None  # the check that decided, with its numbers (`controller.decider_of`)
    counted: list[str] = field(default_factory=list)  # events already added to the release counters (textfile)
    figures: dict[str, Any] = field(default_factory=dict)  # {"canary": {...}, "stable": {...}}
    checks: list[dict[str, Any]] = field(default_factory=list)  # each check's result (checks.CheckResult)
    outcome: str | None = None
    reason: str = ""
    finished_at: str | None = None
    promoted: list[str] = field(default_factory=list)  # stable slots already moved to the candidate
    commit: str | None = None  # the git commit of version.txt made by the promotion, if any
    row_made: bool = False  # this release's row exists (in MySQL or in pending_records)
    recorded: bool = False  # this release's row is in MySQL
    notified: list[str] = field(default_factory=list)
    pending_records: list[dict[str, Any]] = field(default_factory=list)  # rows MySQL did not take yet
    history: list[list[str]] = field(default_factory=list)  # [state, time] of every transition
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleaseState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def enter(self, new: str) -> str:
        """Move to `new`, stamped in the history; returns the state left."""
        old = self.state if self.history else "-"
        self.state = new
        self.history.append([new, _now()])
        return old


@dataclass
class ReleaseResult:
    """The typed outcome of one release request: what the CLI prints and the notices render."""

    candidate: int
    previous: int | None
    outcome: str  # promoted | aborted | failed | noop
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    commit: str | None = None
    recorded: bool = False
    notified: list[str] = field(default_factory=list)
    recovered: dict[str, Any] | None = None  # what a repaired earlier release ended as
    decider: dict[str, Any] | None = None  # the deciding check: name, status, value, limit, sample, text
    decided_by: str | None = None  # the person who decided by hand (abort, promote-now, approve); None: the checks

    @classmethod
    def of(cls, state: ReleaseState) -> ReleaseResult:
        return cls(
            candidate=state.candidate, previous=state.previous, outcome=state.outcome or FAILED,
            reason=state.reason, figures=state.figures, checks=state.checks, started_at=state.started_at,
            finished_at=state.finished_at, commit=state.commit, recorded=state.recorded, notified=state.notified,
            decider=state.decider, decided_by=state.decided_by,
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome in (PROMOTED, NOOP) else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateStore:
    """`<run>/release/state.json`, replaced atomically on every transition."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / "release"
        self.path = self.directory / "state.json"

    def load(self) -> ReleaseState | None:
        """The last release's state; None when there is none (an unreadable file is set aside)."""
        try:
            return ReleaseState.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError) as exc:
            broken = self.path.with_name(f"state.broken-{int(time.time())}.json")
            self.path.replace(broken)
            log.error("release: unreadable state file set aside", extra=kv(path=broken, reason=exc))
            return None

    def save(self, state: ReleaseState) -> None:
        write_json_atomic(self.path, state.to_dict())


@contextlib.contextmanager
def release_lock(run_dir: Path, candidate: int | None = None) -> Iterator[None]:
    """Exclusive `flock` on `<run>/release/lock`; `ReleaseLocked` (naming the holder) if taken."""
    path = Path(run_dir) / "release" / "lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(path, f"pid={os.getpid()} candidate={candidate} since={_now()}"))
        except LockHeld as exc:
            raise ReleaseLocked(f"another release is running ({exc.holder or 'unknown'}); lock {path}") from None
        yield
