"""The canary release of a model version as a state machine (design section 6, issue 11).

Every transition is logged and persisted (``state.py``), before the work of the new state starts::

    DEPLOY_CANARY ─▶ OBSERVE (step 1) ─▶ OBSERVE (step 2) ─▶ … ─┬─▶ [AWAIT_APPROVAL] ─▶ PROMOTE ─┐
          │             │                                       └─▶ ABORT ────────────────────────┴─▶ RECORD ─▶ …
          └─────────────┴──(failure limit, inconclusive limit, deploy error, stop)──▶ ABORT        NOTIFY ─▶ DONE

- DEPLOY_CANARY: the canary's share of live traffic is drained (no user meets the candidate before its
  steps), then the candidate goes to the canary slot only; the deployer waits until it serves.
- OBSERVE: one traffic step (``steps.Step``: shadow, 5 %, 20 %, 50 % by default). Entering a step applies
  its weights through the router (NGINX upstream weights, or the mirror for shadow, and a graceful
  reload); then every interval the checks (``checks.py``) judge the canary and the stable slots over the
  step so far, and ``steps.next_move`` decides: stay, advance to the next step (OBSERVE again), promote
  after the last step, or abort at once (failure limit; inconclusive past the step's time for too long —
  Prometheus down, no data or too small a sample is never a pass).
- AWAIT_APPROVAL (only with ``RELEASE_REQUIRE_APPROVAL=1``, Flagger's confirm-promotion): the last step
  passed; its weights stay and the checks keep judging every interval over a step's length (a failure or
  inconclusive limit still aborts) until ``release --approve --who --why`` (control.py) promotes.
- PROMOTE: the stable slots, in the topology's order, move to the candidate, each serving before the
  next; then ``version.txt`` names it and is committed (`deploy.StableVersion`).
- ABORT: the canary (and any stable slot a failed promotion had moved) goes back to the previous
  stable version.
- PROMOTE and ABORT end with the resting traffic split and no mirror (`router.Router`).
- RECORD: one ``releases`` row (MySQL down: logged, and the row is kept in the state file and
  written by the next release).
- NOTIFY: email + Slack (``notices.py``); a notice that fails is logged, never fails the release. A
  caller that tells the team itself (the retraining run) passes no notifier.

Crash recovery. One release at a time (`state.release_lock`). A state file that is not DONE when
the next release starts means the previous process died; it is repaired first:

- died in DEPLOY_CANARY, OBSERVE (any step) or AWAIT_APPROVAL: no decision was taken, so the canary is rolled back
  to the stable version, traffic goes back to the resting split without mirror, and the release is
  recorded ``failed`` with reason ``interrupted``;
- died in PROMOTE: the checks had passed (their figures are in the state file), so the promotion is
  *finished* — the remaining stable slots move, then ``version.txt``. Rolling back instead would
  move slots that already serve a version which passed the checks; finishing is the shorter path to
  a consistent platform. If finishing fails, everything goes back to the previous version (``failed``);
- died in ABORT, RECORD or NOTIFY: that state is resumed (each is idempotent).

Then the new request proceeds. SIGTERM/SIGINT (or the caller's ``stop`` event) during the first
three states end the release the same way at once (canary rolled back, ``failed``); during
PROMOTE/ABORT/RECORD/NOTIFY they are noted and the release finishes first.

Exit codes (``cli.py``): 0 promoted (or nothing to do), 1 aborted or failed, 2 refused (bad request:
unknown bundle, no stable version), 3 another release is running.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.clock import now_iso
from app.contracts import bundle
from app.contracts.topology import CANARY, STABLE, Topology
from app.logs import kv
from auto_deployment.notices import Notifies, release_notice
from auto_deployment.release.checks import FAILED as CHECK_FAILED
from auto_deployment.release.checks import INCONCLUSIVE as CHECK_INCONCLUSIVE
from auto_deployment.release.checks import PASSED as CHECK_PASSED
from auto_deployment.release.checks import Check, ProportionCheck, Verdict, judge
from auto_deployment.release.control import (
    ABORT_NOW,
    APPROVE,
    PAUSE,
    PROMOTE_NOW,
    RESUME,
    ControlChannel,
    ControlRequest,
)
from auto_deployment.release.deploy import DeployError, SlotDeployer, StableVersion
from auto_deployment.release.metrics import Figures, Measurement, MetricsQuery
from auto_deployment.release.recorder import Recorder, is_row_of, release_row
from auto_deployment.release.router import NullRouter, Router
from auto_deployment.release.state import (
    ABORT,
    ABORTED,
    AWAIT_APPROVAL,
    DEPLOY_CANARY,
    DONE,
    FAILED,
    NOOP,
    NOTIFY,
    OBSERVE,
    PROMOTE,
    PROMOTED,
    RECORD,
    UNDECIDED,
    ReleaseResult,
    ReleaseState,
    StateStore,
)
from auto_deployment.release.steps import ABORT as ABORT_MOVE
from auto_deployment.release.steps import ADVANCE, DEFAULT_STEPS, Move, Progression, Step, next_move, parse_steps
from auto_deployment.release.textfile import ReleaseMetrics

log = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_NOT_PROMOTED, EXIT_REFUSED, EXIT_LOCKED = 0, 1, 2, 3
KEPT_INTERVALS = 50  # the last intervals' verdicts kept in the state file (``release --status``)


class ReleaseRefused(ValueError):
    """The request cannot start (no such bundle, no stable version to fall back to)."""


class Stopped(Exception):
    """The release was asked to stop (signal or the caller's stop event)."""


@dataclass(frozen=True)
class Analysis:
    """How a canary is judged: the observation window (shared equally by the steps), the checks
    (`checks.default_checks`) and how it progresses (steps, interval, limits)."""

    observe_s: float
    checks: tuple[Check | ProportionCheck, ...]
    progression: Progression = field(default_factory=lambda: Progression(parse_steps(DEFAULT_STEPS)))

    @property
    def step_s(self) -> float:
        """The least time a step lasts."""
        return self.observe_s / len(self.progression.steps)

    @property
    def interval_s(self) -> float:
        """The analysis interval, never more than half a step, so a short window (the demo's 60 s over four
        steps) still judges each step at least twice."""
        return min(self.progression.interval_s, self.step_s / 2) if self.step_s > 0 else self.progression.interval_s

    @property
    def live_looks(self) -> int:
        """How many times a check that only judges live steps runs in a release whose steps all take their least
        time: the intervals of every step that is not shadow (what a repeated test's error is spread over)."""
        live = sum(1 for step in self.progression.steps if not step.shadow)
        return max(1, live * math.ceil(self.step_s / self.interval_s)) if self.interval_s > 0 else max(1, live)

    def checks_for(self, step: Step) -> tuple[Check | ProportionCheck, ...]:
        """The checks that judge `step`: in a shadow step no user sees the canary, so live-only checks sit out."""
        return tuple(c for c in self.checks if not (step.shadow and getattr(c, "live_only", False)))

    def to_dict(self) -> dict[str, Any]:
        return {"observe_s": self.observe_s, "step_s": self.step_s, "checks": [c.to_dict() for c in self.checks],
                **self.progression.to_dict(), "interval_s": self.interval_s}


def _measurement_dict(m: Measurement) -> dict[str, Any]:
    return m.as_dict() if isinstance(m, Figures) else {"no_data": m.reason}


def decider_of(checks: tuple[Check | ProportionCheck, ...], verdict: Verdict, canary: Measurement) -> dict[str, Any]:
    """The check that decides this interval's verdict, with its numbers (the notices name it).

    Failed: the first failed check; inconclusive: the first inconclusive one (or "no_data" when there were no
    figures at all); passed: the check closest to its limit (least |limit - value| / |limit|), the one that
    came nearest to stopping the release. `sample` is the canary's requests (lists for a proportion check).
    """
    if not verdict.results:
        return {"name": "no_data", "status": CHECK_INCONCLUSIVE, "value": None, "limit": None, "sample": None,
                "sample_of": "requests", "text": verdict.reason}
    status = verdict.status
    if status == CHECK_PASSED:
        def margin(r: Any) -> float:
            if r.value is None or r.limit is None:
                return float("inf")
            return abs(r.limit - r.value) / max(abs(r.limit), 1e-12)

        chosen = min(verdict.results, key=margin)
    else:
        wanted = CHECK_FAILED if status == CHECK_FAILED else CHECK_INCONCLUSIVE
        chosen = next(r for r in verdict.results if r.status == wanted)
    check = next((c for c in checks if c.name == chosen.name), None)
    figure, word = (check.sample, "lists") if isinstance(check, ProportionCheck) else ("requests", "requests")
    sample = canary.get(figure) if isinstance(canary, Figures) else None
    return {**chosen.to_dict(), "sample": sample, "sample_of": word}


class Controller:
    """Drives one release through its states with injected collaborators (deployer, metrics, ...)."""

    def __init__(
        self,
        *,
        topology: Topology,
        deployer: SlotDeployer,
        metrics: MetricsQuery,
        recorder: Recorder,
        stable: StableVersion,
        models_dir: Path,
        run_dir: Path,
        analysis: Analysis,
        notifier: Notifies | None = None,
        router: Router | None = None,
        stop: threading.Event | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.topology = topology
        self.deployer = deployer
        self.metrics = metrics
        self.recorder = recorder
        self.stable = stable
        self.models_dir = Path(models_dir)
        self.analysis = analysis
        self.notifier = notifier  # None: the caller tells the team (one notice per retraining run)
        self.router = router or NullRouter()
        self.run_dir = Path(run_dir)
        self.store = StateStore(run_dir)
        self.control = ControlChannel(run_dir)
        self.gauges = ReleaseMetrics(run_dir)  # <run>/metrics/release.prom (textfile.py)
        self.stop = stop or threading.Event()
        self.poll_s = poll_s
        self.state: ReleaseState | None = None
        self._handlers: dict[str, Callable[[], str]] = {
            DEPLOY_CANARY: self._deploy_canary,
            OBSERVE: self._observe,
            AWAIT_APPROVAL: self._await_approval,
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
        problem = bundle.problem(bundle.bundle_dir(self.models_dir, candidate))
        if problem:
            raise ReleaseRefused(f"candidate {candidate} cannot be served: {problem}")
        previous = self._stable_version()
        if previous == candidate:
            reason = f"version {candidate} is already the stable version"
            log.info("release: nothing to do", extra=kv(candidate=candidate, reason=reason))
            return ReleaseResult(candidate, previous, NOOP, reason, recovered=recovered)
        self.control.clear()  # requests sent while no release ran are not for this one
        self.state = ReleaseState(candidate=candidate, previous=previous, gate=self.analysis.to_dict(),
                                  pending_records=list(pending))
        log.info("release: start", extra=kv(candidate=candidate, previous=previous, observe_s=self.analysis.observe_s,
                                            steps=",".join(st.name for st in self.analysis.progression.steps),
                                            interval_s=self.analysis.interval_s,
                                            checks=",".join(c.name for c in self.analysis.checks),
                                            require_approval=self.analysis.progression.require_approval))
        self.gauges.count(self.state, "started")
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
        return self._drive().to_dict()

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
        return ReleaseResult.of(state)

    def _enter(self, new: str) -> None:
        state = self.state
        assert state is not None
        old = state.enter(new)
        if new == RECORD and state.outcome:
            self.gauges.count(state, state.outcome)
        self.store.save(state)
        self.gauges.write(state)
        log.info(
            "release: state",
            extra=kv(candidate=state.candidate, previous=state.previous, transition=f"{old}->{new}",
                     outcome=state.outcome or "-"),
        )

    def _fail(self, reason: str) -> None:
        assert self.state is not None
        self.state.outcome, self.state.reason = FAILED, reason
        self.state.decider = None  # no check decided this

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped("stop requested")

    def _stable_version(self) -> int:
        """The version to fall back to: version.txt (the stable pointer), else what the first stable slot is told."""
        stable = self.stable.read()
        if stable is None:
            stable = self.deployer.current(self.topology.stable[0].name)
        if stable is None:
            raise ReleaseRefused("no stable version to fall back to (version.txt and the slot pointers are empty)")
        return stable

    def _resting_traffic(self) -> None:
        """The topology's own split again (best effort: a release outcome never hangs on NGINX)."""
        try:
            self.router.set_canary_share(self.topology.canary_share(), shadow=False)
        except Exception as exc:
            log.error("release: resting traffic split not restored", extra=kv(reason=f"{type(exc).__name__}: {exc}"))

    def _drain_canary(self) -> None:
        """No traffic and no mirror to the canary (best effort, as `_resting_traffic`)."""
        try:
            self.router.set_canary_share(0, shadow=False)
        except Exception as exc:
            log.error("release: canary not drained", extra=kv(reason=f"{type(exc).__name__}: {exc}"))

    # -- states -----------------------------------------------------------------------------------

    def _deploy_canary(self) -> str:
        s = self.state
        self._check_stop()
        # no user may meet the candidate before its steps: the canary's resting share is drained first
        self.router.set_canary_share(0, shadow=False)
        try:
            self.deployer.deploy(self.topology.canary.name, s.candidate)
        except DeployError as exc:
            self._fail(f"canary deploy failed: {exc}")
            return ABORT
        warm_up = getattr(self.deployer, "warm_up", None)
        if warm_up is not None:  # before the first step's window opens: cold answers are not judged
            log.info("release: canary warmed up", extra=kv(answers=warm_up(self.topology.canary.name)))
        s.observe_started = time.time()
        return OBSERVE

    def _observe(self) -> str:
        """One traffic step: apply its weights once, then analyse every interval until a move leaves it."""
        s = self.state
        progression = self.analysis.progression
        step = progression.steps[s.step]
        if s.step_started is None:
            self._check_stop()
            self.router.set_canary_share(step.share, shadow=step.shadow)
            s.step_started = time.time()
            s.next_check = s.step_started + self.analysis.interval_s
            s.held = 0
            s.step_log.append({"name": step.name, "share": step.share, "shadow": step.shadow,
                               "started_at": now_iso("milliseconds")})
            self.store.save(s)
            self.gauges.write(s)  # the step and its weight, from the moment they apply
            log.info("release: step", extra=kv(candidate=s.candidate, step=f"{s.step + 1}/{len(progression.steps)}",
                                               name=step.name, canary_share=step.share, shadow=step.shadow,
                                               step_s=self.analysis.step_s))
        return self._analyse(step)

    def _await_approval(self) -> str:
        """Every step passed: keep the last step's weights and analyse every interval until someone approves
        (`release --approve`: PROMOTE), aborts, promotes now, or a failure/inconclusive limit aborts."""
        return self._analyse(self.analysis.progression.steps[self.state.step], awaiting=True)

    def _analyse(self, step: Step, awaiting: bool = False) -> str:
        """Every interval: apply the operators' controls, judge the canary, and leave on a decisive move."""
        s = self.state
        progression = self.analysis.progression
        while True:
            self._check_stop()
            decided = self._apply_controls(step)
            if decided is not None:
                return decided
            now = time.time()
            if s.paused_at is not None:
                self.stop.wait(self.poll_s)
                continue
            if now < s.next_check:
                self.stop.wait(max(0.0, min(self.poll_s, s.next_check - now)))
                continue
            move = self._interval(step, now, awaiting)
            while s.next_check <= time.time():
                s.next_check += self.analysis.interval_s
            self.store.save(s)
            self.gauges.write(s)
            if move.action == ABORT_MOVE:
                where = f"awaiting approval after step {step.name}" if awaiting else f"step {step.name}"
                s.outcome, s.reason = ABORTED, f"{where}: {move.reason}"
                self._end_step(ABORT_MOVE)
                return ABORT
            if move.action == ADVANCE and not awaiting:
                if s.step + 1 >= len(progression.steps):
                    if progression.require_approval:
                        return self._wait_for_approval(step, move)
                    self._end_step(ADVANCE)
                    s.outcome, s.reason = PROMOTED, f"every step passed; last, {step.name}: {move.reason}"
                    return PROMOTE
                self._end_step(ADVANCE)
                s.step, s.step_started = s.step + 1, None
                return OBSERVE

    def _wait_for_approval(self, step: Step, move: Move) -> str:
        s = self.state
        s.awaiting_since = time.time()
        s.reason = f"every step passed; last, {step.name}: {move.reason}; awaiting approval"
        if s.step_log:
            s.step_log[-1]["awaiting_approval_at"] = now_iso("milliseconds")
        log.warning("release: awaiting approval", extra=kv(candidate=s.candidate, step=step.name,
                                                           how="release --approve --who NAME --why TEXT"))
        return AWAIT_APPROVAL

    def _end_step(self, move: str, **extra: Any) -> None:
        s = self.state
        if s.step_log and "ended_at" not in s.step_log[-1]:
            s.step_log[-1].update(ended_at=now_iso("milliseconds"), move=move, **extra)

    def _apply_controls(self, step: Step) -> str | None:
        """Apply the operators' pending requests (control.py); the next state when one decides the release."""
        s = self.state
        for request in self.control.take():
            decided = self._apply(request, step)
            s.controls.append({**request.to_dict(), "step": step.name, "applied": decided is not False})
            self.store.save(s)
            self.gauges.write(s)
            log.warning("release: manual control", extra=kv(candidate=s.candidate, action=request.action,
                                                            who=request.who, why=request.why, step=step.name))
            if isinstance(decided, str):
                return decided
        return None

    def _apply(self, request: ControlRequest, step: Step) -> str | bool:
        """One request: the next state (abort, promote now), True when applied, False when it changed nothing."""
        s = self.state
        now = time.time()
        if request.action == PAUSE:
            if s.paused_at is not None:
                return False
            s.paused_at = now
            return True
        if request.action == RESUME:
            if s.paused_at is None:
                return False
            paused = now - s.paused_at
            s.step_started = (s.step_started or now) + paused  # the step's clock stood still
            s.next_check = now + self.analysis.interval_s
            s.paused_at = None
            return True
        if request.action == APPROVE:
            if s.state != AWAIT_APPROVAL:
                return False  # nothing to approve yet: the steps decide first
            s.decided_by, s.paused_at = request.who, None
            s.outcome = PROMOTED
            s.reason = (f"every step passed; approved by {request.who} after {now - (s.awaiting_since or now):.0f} s "
                        f"of waiting: {request.why or 'no reason given'}")
            self._end_step(ADVANCE, by=request.who)
            return PROMOTE
        by = f"by hand by {request.who} during step {step.name}: {request.why or 'no reason given'}"
        s.decided_by = request.who
        s.decider = None  # a person decided, not a check
        s.paused_at = None
        if request.action == ABORT_NOW:
            s.outcome, s.reason = ABORTED, f"aborted {by}"
            self._end_step(ABORT_MOVE, by=request.who)
            return ABORT
        assert request.action == PROMOTE_NOW
        s.outcome, s.reason = PROMOTED, f"promoted {by}"
        self._end_step(ADVANCE, by=request.who)
        return PROMOTE

    def _interval(self, step: Step, at: float, awaiting: bool = False) -> Move:
        """Judge the canary against the checks over the step so far (awaiting approval: over the last step's
        length, a sliding window), and decide the move (`steps.next_move`)."""
        s = self.state
        progression = self.analysis.progression
        elapsed = at - (s.step_started or at)
        judged = min(elapsed, self.analysis.step_s) if awaiting else elapsed
        window = max(judged, self.analysis.interval_s)
        canary = self.metrics.figures(CANARY, s.candidate, window, at)
        stable = self.metrics.figures(STABLE, s.previous, window, at)
        s.figures = {"canary": _measurement_dict(canary), "stable": _measurement_dict(stable)}
        checks = self.analysis.checks_for(step)
        verdict = judge(checks, canary, stable)
        s.checks = [r.to_dict() for r in verdict.results]
        s.decider = decider_of(checks, verdict, canary)
        move = next_move(verdict.status, step_over=awaiting or elapsed >= self.analysis.step_s, failures=s.failures,
                         held=s.held, progression=progression, why=verdict.reason)
        s.failures, s.held = move.failures, move.held
        if s.step_log:
            s.step_log[-1].update(intervals=s.step_log[-1].get("intervals", 0) + 1, verdict=verdict.status,
                                  checks=[{k: r.to_dict()[k] for k in ("name", "status", "value", "limit")}
                                          for r in verdict.results])
        s.intervals = [*s.intervals, {"step": step.name, "at": round(at, 3), "verdict": verdict.status,
                                      "move": move.action, "reason": move.reason}][-KEPT_INTERVALS:]
        s.series.append({"at": round(at, 3), "elapsed_s": round(at - (s.observe_started or at), 3), "step": step.name,
                         "share": step.share, "verdict": verdict.status, "move": move.action,
                         "checks": [{k: r.to_dict()[k] for k in ("name", "status", "value", "limit")}
                                    for r in verdict.results], **s.figures})
        log.info("release: interval", extra=kv(candidate=s.candidate, step=step.name, elapsed_s=round(elapsed, 1),
                                               verdict=verdict.status, move=move.action, failures=s.failures,
                                               held=s.held, reason=move.reason))
        return move

    def _promote(self) -> str:
        s = self.state
        for slot in self.topology.stable:
            if slot.name in s.promoted:
                continue
            try:
                self.deployer.deploy(slot.name, s.candidate)
            except DeployError as exc:
                self._fail(f"promotion failed: {exc}; rolled back to version {s.previous}")
                return ABORT
            s.promoted.append(slot.name)
            self.store.save(s)
        s.commit, why = self.stable.write(s.candidate)
        s.outcome = PROMOTED
        s.finished_at = now_iso("milliseconds")
        self._resting_traffic()
        log.info("release: promoted", extra=kv(candidate=s.candidate, version_file=self.stable.version_file,
                                               commit=s.commit or why))
        return RECORD

    def _abort(self) -> str:
        s = self.state
        if s.outcome not in (ABORTED, FAILED):
            s.outcome = FAILED
        self._drain_canary()  # no live request nor copy for the canary while it goes back
        problems = []
        for slot in [*reversed(s.promoted), self.topology.canary.name]:
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
        s.finished_at = now_iso("milliseconds")
        self._resting_traffic()
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
        s.recorded = not any(is_row_of(row, s) for row in still)
        self._write_report()
        return NOTIFY

    def _write_report(self) -> None:
        """The release's HTML report beside the pipeline's (the console links it); never fails the release."""
        from auto_deployment.monitor import release_report  # matplotlib: only when a release ends

        s = self.state
        try:
            path = release_report.write(s.to_dict(), self.run_dir / "pipeline" / "releases")
            log.info("release: report written", extra=kv(candidate=s.candidate, report=path))
        except Exception as exc:  # a plot that cannot be drawn must not undo a promotion
            log.error("release: report not written",
                      extra=kv(candidate=s.candidate, reason=f"{type(exc).__name__}: {exc}"))

    def _notify(self) -> str:
        s = self.state
        if self.notifier is None:
            log.info("release: notice left to the caller", extra=kv(candidate=s.candidate, outcome=s.outcome))
            s.notified = []
            return DONE
        notice = release_notice(ReleaseResult.of(s))
        delivery = self.notifier.send(notice.subject, notice.body, notice.fields)
        s.notified = list(delivery.sent)
        return DONE
