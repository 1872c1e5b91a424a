"""`python -m auto_deployment release`: the canary release of a model version (design section 6).

The controller is a state machine; every transition is logged and persisted, before the work of
the new state starts, to ``<run>/release/state.json``::

    DEPLOY_CANARY ─▶ OBSERVE ─▶ ANALYSE ─┬─▶ PROMOTE ─┐
          │             │          │      └─▶ ABORT ───┴─▶ RECORD ─▶ NOTIFY ─▶ DONE
          └─────────────┴──────────┴──(deploy error, stop)──▶ ABORT

- DEPLOY_CANARY: the candidate goes to the canary slot only; the deployer waits until it serves.
- OBSERVE: the canary serves its 20% for the window; a progress line every ~10% of it.
- ANALYSE: Prometheus' figures of the canary serving the candidate over the window against the
  gate. No data (Prometheus down, an error, nothing recorded) is an abort: never promote blind.
- PROMOTE: stable_1, then stable_2 move to the candidate, each serving before the next; then
  ``version.txt`` and ``<run>/slots/stable`` name it.
- ABORT: the canary (and any stable slot a failed promotion had moved) goes back to the previous
  stable version.
- RECORD: one ``releases`` row (MySQL down: logged, and the row is kept in the state file and
  written by the next release).
- NOTIFY: email + Slack; a notice that fails is logged, never fails the release.

Crash recovery. One release at a time (``flock`` on ``<run>/release/lock``). A state file that is
not DONE when the next release starts means the previous process died; it is repaired first:

- died in DEPLOY_CANARY, OBSERVE or ANALYSE: no decision was taken, so the canary is rolled back
  to the stable version and the release is recorded ``failed`` with reason ``interrupted``;
- died in PROMOTE: the gate had passed (its figures are in the state file), so the promotion is
  *finished* — the remaining stable slots move, then ``version.txt``. Rolling back instead would
  move slots that already serve a version which passed the gate; finishing is the shorter path to
  a consistent platform. If finishing fails, everything goes back to the previous version
  (``failed``);
- died in ABORT, RECORD or NOTIFY: that state is resumed (each is idempotent).

Then the new request proceeds. SIGTERM/SIGINT (or the caller's ``stop`` event) during the first
three states end the release the same way at once (canary rolled back, ``failed``); during
PROMOTE/ABORT/RECORD/NOTIFY they are noted and the release finishes first.

Exit codes: 0 promoted (or nothing to do), 1 aborted or failed, 2 refused (bad request: unknown
bundle, no stable version), 3 another release is running.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from app.contracts import bundle, pointer
from app.logs import kv
from app.settings import MySQL, Notify, Paths, Release
from auto_deployment.data.ingest import parse_duration
from auto_deployment.notices import Delivery, Notifier
from auto_deployment.release.deploy import DeployError, SlotDeployer, build_deployer, parse_slot_urls
from auto_deployment.release.metrics import CANARY_SELECTOR, STABLE_SELECTOR, Figures, Measurement, MetricsQuery, NoData

log = logging.getLogger(__name__)

# states
DEPLOY_CANARY = "DEPLOY_CANARY"
OBSERVE = "OBSERVE"
ANALYSE = "ANALYSE"
PROMOTE = "PROMOTE"
ABORT = "ABORT"
RECORD = "RECORD"
NOTIFY = "NOTIFY"
DONE = "DONE"
UNDECIDED = (DEPLOY_CANARY, OBSERVE, ANALYSE)  # no decision taken yet: interruptible, rolled back

# outcomes (the `releases.outcome` column)
PROMOTED = "promoted"
ABORTED = "aborted"
FAILED = "failed"

EXIT_PROMOTED, EXIT_NOT_PROMOTED, EXIT_REFUSED, EXIT_LOCKED = 0, 1, 2, 3
PROGRESS_STEPS = 10  # a progress line every 1/10 of the window


class ReleaseRefused(ValueError):
    """The request cannot start (no such bundle, no stable version to fall back to)."""


class ReleaseLocked(RuntimeError):
    """Another release holds the lock."""


class Stopped(Exception):
    """The release was asked to stop (signal or the caller's stop event)."""


# --- gate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """When a canary may be promoted (app.settings.Release, overridable from the command line)."""

    observe_s: float
    max_latency_ms: float
    max_error_ratio: float
    min_requests: int

    @classmethod
    def from_settings(cls, release: Release | None = None, **overrides: Any) -> Gate:
        release = release or Release.from_env()
        values = {
            "observe_s": release.observe_s,
            "max_latency_ms": release.max_latency_ms,
            "max_error_ratio": release.max_error_ratio,
            "min_requests": release.min_requests,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def judge(self, canary: Measurement) -> tuple[bool, str]:
        """(promote?, why): every failed criterion is named, so the reason is complete."""
        if isinstance(canary, NoData):
            return False, f"no data from Prometheus: {canary.reason}"
        failures = []
        if canary.requests < self.min_requests:
            failures.append(f"too few canary requests: {canary.requests:.0f} < {self.min_requests}")
        if canary.error_ratio > self.max_error_ratio:
            failures.append(f"error ratio {canary.error_ratio:.4f} > {self.max_error_ratio:g}")
        if canary.latency_ms >= self.max_latency_ms:
            failures.append(f"average latency {canary.latency_ms:.1f} ms >= {self.max_latency_ms:g} ms")
        if failures:
            return False, "; ".join(failures)
        return True, (
            f"average latency {canary.latency_ms:.1f} ms < {self.max_latency_ms:g} ms, "
            f"error ratio {canary.error_ratio:.4f} <= {self.max_error_ratio:g}, "
            f"{canary.requests:.0f} requests >= {self.min_requests}"
        )


# --- state file and lock --------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ReleaseState:
    """Everything needed to finish or repair a release after a crash (the JSON of state.json)."""

    candidate: int
    previous: int
    state: str = DEPLOY_CANARY
    started_at: str = field(default_factory=_now_iso)
    gate: dict[str, float] = field(default_factory=dict)
    observe_started: float | None = None  # unix time the canary started serving the candidate
    figures: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    reason: str = ""
    finished_at: str | None = None
    promoted: list[str] = field(default_factory=list)  # stable slots already moved to the candidate
    row_made: bool = False  # this release's row exists (in MySQL or in pending_records)
    recorded: bool = False  # this release's row is in MySQL
    notified: list[str] = field(default_factory=list)
    pending_records: list[dict[str, Any]] = field(default_factory=list)  # rows MySQL did not take yet
    history: list[list[str]] = field(default_factory=list)  # [state, time] of every transition
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleaseState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateStore:
    """`<run>/release/state.json`, replaced atomically on every transition."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / "release"
        self.path = self.directory / "state.json"

    def load(self) -> ReleaseState | None:
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
        pointer.write_json_atomic(self.path, state.to_dict())


@contextlib.contextmanager
def release_lock(run_dir: Path, candidate: int | None = None) -> Iterator[None]:
    """Exclusive `flock` on `<run>/release/lock`; `ReleaseLocked` (naming the holder) if taken."""
    path = Path(run_dir) / "release" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ReleaseLocked(f"another release is running ({holder}); lock {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} candidate={candidate} since={_now_iso()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --- collaborators ---------------------------------------------------------------------------------


class Recorder(Protocol):
    def record(self, row: Mapping[str, Any]) -> None:
        """Store one `releases` row; raise when it could not be stored."""
        ...


class Notifies(Protocol):
    def send(self, subject: str, body: str, fields: Mapping[str, object] | None = None) -> Delivery: ...


class HeldNotifier:
    """Sends nothing: the caller (a retraining run) tells the team once, release figures included.

    Without it a run that releases its version would send two notices for one event.
    """

    def send(self, subject: str, body: str, fields: Mapping[str, object] | None = None) -> Delivery:
        log.info("release notice held for the caller's notice", extra=kv(subject=subject))
        return Delivery(skipped={"all": "held: the retraining run's notice covers this release"})


class MySQLRecorder:
    """`releases` rows through `auto_deployment.schema` (admin account)."""

    def __init__(self, settings: MySQL | None = None) -> None:
        self.settings = settings or MySQL.from_env()

    def record(self, row: Mapping[str, Any]) -> None:
        from auto_deployment import schema

        conn = schema.connect(self.settings, "admin")
        try:
            schema.record_release(conn, dict(row))
        finally:
            conn.close()


def release_row(state: ReleaseState) -> dict[str, Any]:
    """The `releases` row (auto_deployment.schema.RELEASE_COLUMNS) of a finished release."""
    row: dict[str, Any] = {
        "candidate_version": state.candidate,
        "previous_version": state.previous,
        "started_at": state.started_at,
        "ended_at": state.finished_at or _now_iso(),
        "outcome": state.outcome,
        "reason": state.reason,
    }
    for side in ("canary", "stable"):
        figures = state.figures.get(side) or {}
        row[f"{side}_latency_ms"] = figures.get("latency_ms")
        row[f"{side}_requests"] = _round(figures.get("requests"))
        row[f"{side}_errors"] = _round(figures.get("errors"))
        row[f"{side}_error_ratio"] = figures.get("error_ratio")
    return row


def _is_row_of(row: Mapping[str, Any], state: ReleaseState) -> bool:
    return row.get("candidate_version") == state.candidate and row.get("started_at") == state.started_at


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def _measurement_dict(m: Measurement) -> dict[str, Any]:
    return m.as_dict() if isinstance(m, Figures) else {"no_data": m.reason}


# --- the controller --------------------------------------------------------------------------------


@dataclass
class ReleaseResult:
    candidate: int
    previous: int | None
    outcome: str  # promoted | aborted | failed | noop
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    recorded: bool = False
    notified: list[str] = field(default_factory=list)
    recovered: dict[str, Any] | None = None  # what a repaired earlier release ended as

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.outcome in (PROMOTED, "noop") else EXIT_NOT_PROMOTED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Controller:
    """Drives one release through its states with injected collaborators (deployer, metrics, ...)."""

    def __init__(
        self,
        deployer: SlotDeployer,
        metrics: MetricsQuery,
        notifier: Notifies,
        recorder: Recorder,
        paths: Paths,
        gate: Gate,
        stop: threading.Event | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.deployer = deployer
        self.metrics = metrics
        self.notifier = notifier
        self.recorder = recorder
        self.paths = paths
        self.gate = gate
        self.store = StateStore(paths.run_dir)
        self.stop = stop or threading.Event()
        self.poll_s = poll_s
        self.state: ReleaseState | None = None
        self._handlers = {
            DEPLOY_CANARY: self._deploy_canary,
            OBSERVE: self._observe,
            ANALYSE: self._analyse,
            PROMOTE: self._promote,
            ABORT: self._abort,
            RECORD: self._record,
            NOTIFY: self._notify,
        }

    # -- entry points -----------------------------------------------------------------------------

    def run(self, candidate: int) -> ReleaseResult:
        """Repair an interrupted release if any, then release `candidate`. Call under `release_lock`."""
        recovered = self.recover()
        pending = self.state.pending_records if self.state else []  # rows MySQL has not taken yet
        problem = bundle.problem(bundle.bundle_dir(self.paths.models_dir, candidate))
        if problem:
            raise ReleaseRefused(f"candidate {candidate} cannot be served: {problem}")
        previous = self._stable_version(candidate)
        if previous == candidate:
            reason = f"version {candidate} is already the stable version"
            log.info("release: nothing to do", extra=kv(candidate=candidate, reason=reason))
            return ReleaseResult(candidate, previous, "noop", reason, recovered=recovered)
        self.state = ReleaseState(
            candidate=candidate, previous=previous, gate=asdict(self.gate), pending_records=list(pending)
        )
        log.info(
            "release: start",
            extra=kv(candidate=candidate, previous=previous, observe_s=self.gate.observe_s,
                     max_latency_ms=self.gate.max_latency_ms, max_error_ratio=self.gate.max_error_ratio,
                     min_requests=self.gate.min_requests),
        )
        self._enter(DEPLOY_CANARY)
        result = self._drive()
        result.recovered = recovered
        return result

    def recover(self) -> dict[str, Any] | None:
        """Finish or repair what an earlier, dead release process left (see the module docstring)."""
        state = self.store.load()
        self.state = state
        if state is None or state.state == DONE:
            return None
        log.warning(
            "release: repairing an interrupted release",
            extra=kv(candidate=state.candidate, previous=state.previous, state=state.state, pid=state.pid),
        )
        state.pid = os.getpid()
        if state.state in UNDECIDED:
            self._fail(f"interrupted during {state.state} (the release process died); canary rolled back")
            self._enter(ABORT)
        elif state.state == PROMOTE:
            log.info("release: finishing the interrupted promotion", extra=kv(done=",".join(state.promoted) or "-"))
        result = self._drive()
        return result.to_dict()

    # -- machinery --------------------------------------------------------------------------------

    def _drive(self) -> ReleaseResult:
        state = self.state
        assert state is not None
        while state.state != DONE:
            try:
                next_state = self._handlers[state.state]()
            except Stopped as exc:
                self._fail(f"interrupted during {state.state} ({exc}); canary rolled back")
                next_state = ABORT
            except Exception as exc:
                if state.state not in UNDECIDED:
                    raise  # the state file says where we were: the next run finishes the job
                log.exception("release: unexpected error", extra=kv(state=state.state))
                self._fail(f"error during {state.state}: {type(exc).__name__}: {exc}; canary rolled back")
                next_state = ABORT
            self._enter(next_state)
        return ReleaseResult(
            candidate=state.candidate, previous=state.previous, outcome=state.outcome or FAILED,
            reason=state.reason, figures=state.figures, recorded=state.recorded, notified=state.notified,
        )

    def _enter(self, new: str) -> None:
        state = self.state
        assert state is not None
        old = state.state if state.history else "-"
        state.state = new
        state.history.append([new, _now_iso()])
        self.store.save(state)
        log.info(
            "release: state",
            extra=kv(candidate=state.candidate, previous=state.previous, transition=f"{old}->{new}",
                     outcome=state.outcome or "-"),
        )

    def _fail(self, reason: str) -> None:
        assert self.state is not None
        self.state.outcome, self.state.reason = FAILED, reason

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped("stop requested")

    def _stable_version(self, candidate: int) -> int:
        """The version to fall back to: version.txt (the stable pointer), else what stable_1 is told."""
        stable = pointer.read_stable(self.paths.version_file, self.paths.run_dir)
        if stable is None:
            stable = self.deployer.current("stable_1")
        if stable is None:
            raise ReleaseRefused("no stable version to fall back to (version.txt and the slot pointers are empty)")
        return stable

    # -- states -----------------------------------------------------------------------------------

    def _deploy_canary(self) -> str:
        s = self.state
        self._check_stop()
        try:
            self.deployer.deploy(pointer.CANARY, s.candidate)
        except DeployError as exc:
            self._fail(f"canary deploy failed: {exc}")
            return ABORT
        s.observe_started = time.time()
        return OBSERVE

    def _observe(self) -> str:
        s = self.state
        window = self.gate.observe_s
        start = s.observe_started or time.time()
        end = start + window
        marks = [start + window * i / PROGRESS_STEPS for i in range(1, PROGRESS_STEPS)]
        log.info("release: observing the canary", extra=kv(candidate=s.candidate, window_s=window))
        while True:
            self._check_stop()
            now = time.time()
            if now >= end:
                return ANALYSE
            if marks and now >= marks[0]:
                while marks and now >= marks[0]:
                    marks.pop(0)
                self._progress(now - start, window)
            wake = min(end, marks[0] if marks else end)
            self.stop.wait(max(0.0, min(self.poll_s, wake - time.time())))

    def _progress(self, elapsed: float, window: float) -> None:
        s = self.state
        live = self.metrics.figures(CANARY_SELECTOR, s.candidate, elapsed)
        pairs: dict[str, object] = {"candidate": s.candidate, "progress": f"{100 * elapsed / window:.0f}%",
                                    "elapsed_s": round(elapsed)}
        if isinstance(live, Figures):
            pairs.update(latency_ms=round(live.latency_ms, 1), error_ratio=round(live.error_ratio, 4),
                         requests=round(live.requests))
        else:
            pairs.update(no_data=live.reason)
        log.info("release: canary so far", extra=kv(**pairs))

    def _analyse(self) -> str:
        s = self.state
        self._check_stop()
        at = time.time()
        canary = self.metrics.figures(CANARY_SELECTOR, s.candidate, self.gate.observe_s, at)
        stable = self.metrics.figures(STABLE_SELECTOR, s.previous, self.gate.observe_s, at)
        s.figures = {"canary": _measurement_dict(canary), "stable": _measurement_dict(stable)}
        passed, reason = self.gate.judge(canary)
        s.outcome, s.reason = (PROMOTED if passed else ABORTED), reason
        log.info(
            "release: analysis",
            extra=kv(candidate=s.candidate, decision="promote" if passed else "abort", reason=reason),
        )
        return PROMOTE if passed else ABORT

    def _promote(self) -> str:
        s = self.state
        for slot in pointer.STABLE_SLOTS:
            if slot in s.promoted:
                continue
            try:
                self.deployer.deploy(slot, s.candidate)
            except DeployError as exc:
                self._fail(f"promotion failed: {exc}; rolled back to version {s.previous}")
                return ABORT
            s.promoted.append(slot)
            self.store.save(s)
        pointer.write_stable(self.paths.version_file, self.paths.run_dir, s.candidate)
        s.outcome = PROMOTED
        s.finished_at = _now_iso()
        log.info("release: promoted", extra=kv(candidate=s.candidate, version_file=self.paths.version_file))
        return RECORD

    def _abort(self) -> str:
        s = self.state
        if s.outcome not in (ABORTED, FAILED):
            s.outcome = FAILED
        problems = []
        for slot in [*reversed(s.promoted), pointer.CANARY]:
            try:
                self.deployer.deploy(slot, s.previous)
            except DeployError as exc:
                problems.append(str(exc))
                log.error("release: rollback of a slot failed", extra=kv(slot=slot, reason=exc))
                continue
            if slot in s.promoted:
                s.promoted.remove(slot)
            self.store.save(s)
        if problems:
            s.outcome = FAILED
            s.reason += f"; ROLLBACK INCOMPLETE: {'; '.join(problems)}"
        s.finished_at = _now_iso()
        log.warning("release: not promoted", extra=kv(candidate=s.candidate, outcome=s.outcome, reason=s.reason))
        return RECORD

    def _record(self) -> str:
        s = self.state
        if not s.row_made:
            s.pending_records.append(release_row(s))
            s.row_made = True  # the row exists now: in MySQL below, or pending in the state file
        still: list[dict[str, Any]] = []
        for row in s.pending_records:
            try:
                self.recorder.record(row)
                log.info("release: recorded", extra=kv(candidate=row["candidate_version"], outcome=row["outcome"]))
            except Exception as exc:  # the release happened; MySQL being down must not undo or fail it
                still.append(row)
                log.error(
                    "release: row not recorded, kept in the state file",
                    extra=kv(candidate=row["candidate_version"], reason=f"{type(exc).__name__}: {exc}",
                             state_file=self.store.path),
                )
        s.pending_records = still
        s.recorded = not any(_is_row_of(row, s) for row in still)
        return NOTIFY

    def _notify(self) -> str:
        s = self.state
        canary = s.figures.get("canary") or {}
        stable = s.figures.get("stable") or {}
        verb = {PROMOTED: "promoted", ABORTED: "aborted", FAILED: "FAILED"}.get(s.outcome or FAILED, s.outcome)
        subject = f"movierec release of model version {s.candidate}: {verb}"
        body = {
            PROMOTED: f"Version {s.candidate} now serves on every slot (was {s.previous}): {s.reason}.",
            ABORTED: f"Version {s.candidate} did not pass the canary gate; every slot serves {s.previous}: "
                     f"{s.reason}.",
        }.get(s.outcome or FAILED, f"The release of version {s.candidate} failed: {s.reason}.")
        fields: dict[str, object] = {
            "candidate": s.candidate, "previous": s.previous, "outcome": s.outcome, "reason": s.reason,
            "started_at": s.started_at, "finished_at": s.finished_at,
        }
        for name, figures in (("canary", canary), ("stable", stable)):
            for key in ("latency_ms", "error_ratio", "requests", "errors", "no_data"):
                if key in figures:
                    fields[f"{name}_{key}"] = figures[key]
        fields["recorded_in_mysql"] = s.recorded
        delivery = self.notifier.send(subject, body, fields)
        s.notified = list(delivery.sent)
        return DONE


# --- wiring ----------------------------------------------------------------------------------------


def build_controller(
    gate: Gate,
    *,
    paths: Paths | None = None,
    prometheus_url: str | None = None,
    runtime: str | None = None,
    slot_urls: Mapping[str, str] | None = None,
    deploy_timeout_s: float | None = None,
    compose_hup: bool = False,
    notify: Notify | None = None,
    notifier: Notifies | None = None,
    mysql: MySQL | None = None,
    stop: threading.Event | None = None,
) -> Controller:
    """A controller with the real collaborators, from settings plus explicit overrides."""
    from app.settings import Monitoring
    from auto_deployment.release.metrics import Prometheus

    paths = paths or Paths.from_env()
    deployer = build_deployer(runtime, slot_urls, paths, timeout_s=deploy_timeout_s, compose_hup=compose_hup)
    metrics = Prometheus(prometheus_url or Monitoring.from_env().prometheus_url)
    notifier = notifier or Notifier(notify)
    return Controller(deployer, metrics, notifier, MySQLRecorder(mysql), paths, gate, stop=stop)


def release_version(
    candidate: int,
    *,
    observe_s: float | None = None,
    stop: threading.Event | None = None,
    gate: Gate | None = None,
    **wiring: Any,
) -> ReleaseResult:
    """Python API (the retraining pipeline): release `candidate` under the lock; raises ReleaseLocked."""
    gate = gate or Gate.from_settings(observe_s=observe_s)
    controller = build_controller(gate, stop=stop, **wiring)
    with release_lock(controller.paths.run_dir, candidate):
        return controller.run(candidate)


# --- command line ----------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", type=int, help="model version to release (models/<N>/)")
    parser.add_argument("--observe", type=_duration, metavar="DURATION",
                        help="observation window: 30s, 15m, 12h, 2d (default RELEASE_OBSERVE_S)")
    parser.add_argument("--max-latency-ms", type=float,
                        help="gate: canary average latency below (RELEASE_MAX_LATENCY_MS)")
    parser.add_argument("--max-error-ratio", type=float,
                        help="gate: canary error ratio at most (RELEASE_MAX_ERROR_RATIO)")
    parser.add_argument("--min-requests", type=int, help="gate: canary requests at least (RELEASE_MIN_REQUESTS)")
    parser.add_argument("--prometheus-url", help="Prometheus base URL (default PROMETHEUS_URL)")
    parser.add_argument("--runtime", choices=("native", "compose"), help="how slots are deployed (RELEASE_RUNTIME)")
    parser.add_argument("--slot-url", action="append", default=[], metavar="SLOT=URL",
                        help="a slot's own base URL (repeatable; default RELEASE_SLOT_URLS / loopback ports)")
    parser.add_argument("--deploy-timeout", type=_duration, metavar="DURATION",
                        help="longest wait for a slot to serve a version (RELEASE_DEPLOY_TIMEOUT_S)")
    parser.add_argument("--compose-hup", action="store_true",
                        help="compose runtime: also `docker-compose kill -s HUP` the slot's service")
    parser.add_argument("--status", action="store_true", help="print the state file of the last release and exit")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.warning("release: signal received, stopping", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def main(args: argparse.Namespace) -> int:
    paths = Paths.from_env()
    if args.status:
        state = StateStore(paths.run_dir).load()
        print(json.dumps(state.to_dict() if state else None, indent=2))
        return 0
    if args.candidate is None:
        print("release: --candidate N is required", file=sys.stderr)
        return EXIT_REFUSED
    try:
        gate = Gate.from_settings(
            observe_s=args.observe, max_latency_ms=args.max_latency_ms,
            max_error_ratio=args.max_error_ratio, min_requests=args.min_requests,
        )
        urls = {}
        for item in args.slot_url:
            urls.update(parse_slot_urls(item))
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    stop = threading.Event()
    _stop_on_signals(stop)
    controller = build_controller(
        gate, paths=paths, prometheus_url=args.prometheus_url, runtime=args.runtime, slot_urls=urls,
        deploy_timeout_s=args.deploy_timeout, compose_hup=args.compose_hup, stop=stop,
    )
    try:
        with release_lock(paths.run_dir, args.candidate):
            result = controller.run(args.candidate)
    except ReleaseLocked as exc:
        log.error("release: refused", extra=kv(reason=exc))
        print(f"release refused: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except ReleaseRefused as exc:
        log.error("release: refused", extra=kv(reason=exc))
        print(f"release refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return result.exit_code
