"""Progressive steps and interval analysis: every move of `steps.next_move`, and the state machine driven
through its steps by scripted figures (the input of a judgement, so the test states them by hand).

The controller's other collaborators are small in-memory ones (slots that serve at once, a router that
remembers the splits, a recorder that keeps rows); the same controller against real slots, NGINX and
Prometheus runs in test_controller.py, test_steps_nginx.py and test_release_e2e.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.contracts.topology import CANARY, STABLE, Topology
from app.settings import Release
from auto_deployment.release.checks import default_checks
from auto_deployment.release.control import (
    ABORT_NOW,
    PAUSE,
    PROMOTE_NOW,
    RESUME,
    ControlChannel,
    ControlRequest,
    status_text,
)
from auto_deployment.release.controller import Analysis, Controller
from auto_deployment.release.deploy import StableVersion
from auto_deployment.release.metrics import Figures, Measurement, NoData
from auto_deployment.release.state import (
    ABORT,
    DEPLOY_CANARY,
    DONE,
    NOTIFY,
    OBSERVE,
    PROMOTE,
    RECORD,
    ReleaseState,
    StateStore,
)
from auto_deployment.release.steps import (
    ABORT as ABORT_MOVE,
)
from auto_deployment.release.steps import (
    ADVANCE,
    FAILED,
    INCONCLUSIVE,
    PASSED,
    STAY,
    Progression,
    Step,
    next_move,
    parse_steps,
)

ROOT = Path(__file__).resolve().parents[2]
GATE = Release(observe_s=1.0, max_latency_ms=500, max_error_ratio=0.01, min_requests=20, runtime="native",
               slot_urls="", deploy_timeout_s=5)
INTERVAL = 0.05


# --- steps and moves, by hand ---------------------------------------------------------------------------

def test_steps_parse_from_text_and_refuse_nonsense():
    assert parse_steps("shadow,5,20,50") == (Step("shadow", 0.0, True), Step("5%", 0.05), Step("20%", 0.2),
                                             Step("50%", 0.5))
    assert parse_steps(" 20% ") == (Step("20%", 0.2),)
    for bad in ("", "0", "100", "half", "5,,x"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_progression_settings_have_documented_defaults_and_read_the_environment(monkeypatch):
    for name in ("RELEASE_STEPS", "RELEASE_INTERVAL_S", "RELEASE_FAILURE_LIMIT", "RELEASE_INCONCLUSIVE_LIMIT",
                 "RELEASE_REQUIRE_APPROVAL"):
        monkeypatch.delenv(name, raising=False)
    default = Progression.from_settings(Release.from_env())
    assert [s.name for s in default.steps] == ["shadow", "5%", "20%", "50%"]
    assert (default.interval_s, default.failure_limit, default.inconclusive_limit) == (60.0, 2, 10)
    assert default.require_approval is False
    for name, value in {"RELEASE_STEPS": "10,80", "RELEASE_INTERVAL_S": "2", "RELEASE_FAILURE_LIMIT": "3",
                        "RELEASE_INCONCLUSIVE_LIMIT": "4", "RELEASE_REQUIRE_APPROVAL": "1"}.items():
        monkeypatch.setenv(name, value)
    given = Progression.from_settings(Release.from_env())
    assert ([s.share for s in given.steps], given.interval_s, given.failure_limit, given.inconclusive_limit,
            given.require_approval) == ([0.1, 0.8], 2.0, 3, 4, True)
    monkeypatch.setenv("RELEASE_FAILURE_LIMIT", "0")
    with pytest.raises(ValueError, match="progression"):
        Progression.from_settings(Release.from_env())


P = Progression(parse_steps("5,50"), interval_s=1, failure_limit=2, inconclusive_limit=3)


@pytest.mark.parametrize(
    ("verdict", "step_over", "failures", "held", "expected"),
    [
        (PASSED, False, 0, 0, (STAY, 0, 0)),  # passing, but the step's time is not over
        (PASSED, True, 1, 2, (ADVANCE, 1, 0)),  # a pass past the step's time advances; failures stay counted
        (FAILED, False, 0, 0, (STAY, 1, 0)),  # first failure: counted, the step goes on
        (FAILED, False, 1, 0, (ABORT_MOVE, 2, 0)),  # the limit: abort at once, with time left
        (FAILED, True, 1, 2, (ABORT_MOVE, 2, 2)),
        (INCONCLUSIVE, False, 0, 0, (STAY, 0, 0)),  # no sample yet while the step runs: nothing counted
        (INCONCLUSIVE, True, 0, 0, (STAY, 0, 1)),  # past its time: held one interval
        (INCONCLUSIVE, True, 0, 2, (ABORT_MOVE, 0, 3)),  # held too long: abort, never a pass
    ],
)
def test_every_move_of_an_interval(verdict, step_over, failures, held, expected):
    move = next_move(verdict, step_over=step_over, failures=failures, held=held, progression=P, why="w")
    assert (move.action, move.failures, move.held) == expected
    assert "w" in move.reason


# --- the state machine through its steps ----------------------------------------------------------------

def good(requests: float = 1000.0, latency_ms: float = 20.0, errors: float = 0.0) -> Figures:
    return Figures({"latency_ms": latency_ms, "p99_ms": 2 * latency_ms, "requests": requests, "errors": errors,
                    "error_ratio": errors / requests if requests else 0.0}, "1s")


class Slots:
    """Slots that serve a version as soon as they are told (the deploy protocol)."""

    def __init__(self, topology: Topology, version: int) -> None:
        self.serves = {name: version for name in topology.names}
        self.moves: list[tuple[str, int]] = []

    def deploy(self, slot: str, version: int) -> None:
        self.serves[slot] = version
        self.moves.append((slot, version))

    def current(self, slot: str) -> int | None:
        return self.serves[slot]

    def serving(self, slot: str) -> int | None:
        return self.serves[slot]


class Router:
    def __init__(self) -> None:
        self.splits: list[tuple[float, bool]] = []

    def set_canary_share(self, share, shadow: bool = False) -> None:
        self.splits.append((float(share), shadow))


class Script:
    """The figures of each interval: `canary(n, step)` / `stable(n, step)`, n counting intervals from 1."""

    def __init__(self, canary: Callable[[int, int], Measurement],
                 stable: Callable[[int, int], Measurement] | None = None) -> None:
        self.canary, self.stable = canary, stable or (lambda n, step: good())
        self.calls = 0
        self.state: ReleaseState | None = None

    def figures(self, role: str, version: int, window_s: float, at: float | None = None) -> Measurement:
        step = self.state.step if self.state else 0
        if role == CANARY:
            self.calls += 1
            return self.canary(self.calls, step)
        assert role == STABLE
        return self.stable(self.calls, step)


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, row) -> None:
        self.rows.append(dict(row))


def make(tmp_path: Path, models_root: Path, script: Script, *, steps: str = "shadow,5,20,50",
         step_s: float = 0.1, failure_limit: int = 2, inconclusive_limit: int = 3,
         stop: threading.Event | None = None) -> tuple[Controller, Slots, Router, Rows]:
    topology = Topology()
    slots, router, rows = Slots(topology, 1), Router(), Rows()
    progression = Progression(parse_steps(steps), interval_s=INTERVAL, failure_limit=failure_limit,
                              inconclusive_limit=inconclusive_limit)
    (tmp_path / "version.txt").write_text("1\n")
    controller = Controller(
        topology=topology, deployer=slots, metrics=script, recorder=rows,
        stable=StableVersion(tmp_path / "version.txt", tmp_path / "run"), models_dir=models_root,
        run_dir=tmp_path / "run", analysis=Analysis(step_s * len(progression.steps), default_checks(GATE), progression),
        router=router, stop=stop, poll_s=0.01,
    )
    original = controller._enter

    def enter(new: str) -> None:  # let the script know the step it is asked about
        original(new)
        script.state = controller.state

    controller._enter = enter  # type: ignore[method-assign]
    return controller, slots, router, rows


def states(controller: Controller) -> list[str]:
    return [name for name, _ in controller.state.history]


def test_a_healthy_canary_walks_every_step_and_is_promoted(tmp_path, models_root):
    controller, slots, router, rows = make(tmp_path, models_root, Script(lambda n, step: good()))
    result = controller.run(2)
    assert result.outcome == "promoted", result.reason
    assert states(controller) == [DEPLOY_CANARY, OBSERVE, OBSERVE, OBSERVE, OBSERVE, PROMOTE, RECORD, NOTIFY, DONE]
    # drained for the deploy, each step's split, then the resting one (the topology's 20 %, no mirror)
    assert router.splits == [(0.0, False), (0.0, True), (0.05, False), (0.2, False), (0.5, False), (0.2, False)]
    assert slots.serves == {"stable_1": 2, "stable_2": 2, "canary": 2}
    assert [i["step"] for i in controller.state.intervals if i["move"] == ADVANCE] == ["shadow", "5%", "20%", "50%"]
    assert rows.rows[0]["outcome"] == "promoted" and (tmp_path / "version.txt").read_text().strip() == "2"


def test_a_slow_canary_is_aborted_at_the_failure_limit_in_its_first_step(tmp_path, models_root):
    script = Script(lambda n, step: good(latency_ms=220.0), lambda n, step: good(latency_ms=20.0))
    controller, slots, router, _ = make(tmp_path, models_root, script, step_s=10.0)  # far more time left
    started = time.monotonic()
    result = controller.run(2)
    assert result.outcome == "aborted"
    assert time.monotonic() - started < 5.0  # at once: not at the end of the step's 10 s
    assert controller.state.step == 0 and controller.state.failures == 2 and script.calls == 2
    assert "step shadow: failed 2 of 2" in result.reason and "latency vs stable" in result.reason
    # drained for the deploy, shadow, drained for the rollback, then at rest
    assert router.splits == [(0.0, False), (0.0, True), (0.0, False), (0.2, False)]
    assert slots.serves["canary"] == 1 and states(controller)[-4:] == [ABORT, RECORD, NOTIFY, DONE]


def test_one_failed_interval_below_the_limit_does_not_abort(tmp_path, models_root):
    script = Script(lambda n, step: good(latency_ms=900.0) if n == 1 else good())
    controller, *_ = make(tmp_path, models_root, script, steps="5,50")
    result = controller.run(2)
    assert result.outcome == "promoted" and controller.state.failures == 1


def test_a_step_advances_only_once_its_minimum_sample_is_reached(tmp_path, models_root):
    # 100 more canary requests each interval: the 5xx ratio needs 299 clean ones to claim <= 1 % (checks.py)
    script = Script(lambda n, step: good(requests=100.0 * n))
    controller, *_ = make(tmp_path, models_root, script, steps="50", step_s=0.0, inconclusive_limit=10)
    result = controller.run(2)
    assert result.outcome == "promoted"
    assert [i["verdict"] for i in controller.state.intervals] == [INCONCLUSIVE, INCONCLUSIVE, PASSED]
    assert script.calls == 3  # 100, 200: too few; 300 >= 299: passes


@pytest.mark.parametrize("figures", [NoData("Prometheus at http://127.0.0.1:1 unreachable"), good(requests=50.0)],
                         ids=["prometheus-down", "too-little-data"])
def test_inconclusive_holds_the_step_then_aborts_never_promotes(tmp_path, models_root, figures):
    controller, slots, router, _ = make(tmp_path, models_root, Script(lambda n, step: figures),
                                        steps="shadow,50", inconclusive_limit=3)
    result = controller.run(2)
    assert result.outcome == "aborted" and controller.state.step == 0
    assert "inconclusive for 3 interval(s) past the step's time" in result.reason
    held = [i for i in controller.state.intervals if i["reason"].startswith("step held")]
    assert len(held) == 2 and slots.serves["canary"] == 1 and router.splits[-1] == (0.2, False)


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_a_release_that_died_in_any_step_is_rolled_back_by_the_next_run(tmp_path, models_root, step):
    controller, slots, router, rows = make(tmp_path, models_root, Script(lambda n, s: good()))
    slots.serves["canary"] = 2  # the dead release had deployed the canary and moved traffic
    dead = ReleaseState(candidate=2, previous=1, state=OBSERVE, step=step, step_started=time.time() - 1,
                        history=[[DEPLOY_CANARY, "t"], [OBSERVE, "t"]], pid=999_999)
    StateStore(tmp_path / "run").save(dead)
    recovered = controller.recover()
    assert recovered["outcome"] == "failed" and "interrupted during OBSERVE" in recovered["reason"]
    assert slots.serves["canary"] == 1 and router.splits == [(0.0, False), (0.2, False)]
    assert rows.rows[0]["outcome"] == "failed" and StateStore(tmp_path / "run").load().state == DONE


def test_a_stop_during_a_step_rolls_back_at_once(tmp_path, models_root):
    stop = threading.Event()

    def canary(n: int, step: int) -> Measurement:
        if step == 1:
            stop.set()  # the signal arrives while the 5 % step is observed
        return good()

    controller, slots, router, _ = make(tmp_path, models_root, Script(canary), stop=stop)
    result = controller.run(2)
    assert result.outcome == "failed" and "interrupted during OBSERVE" in result.reason
    assert controller.state.step == 1 and slots.serves["canary"] == 1 and router.splits[-1] == (0.2, False)


# --- manual control ------------------------------------------------------------------------------------

def send(tmp_path: Path, action: str, who: str = "alice", why: str = "looking") -> None:
    ControlChannel(tmp_path / "run").send(ControlRequest(action, who, why, time.time()))


def test_pause_stops_the_analysis_and_the_steps_clock_until_resume(tmp_path, models_root):
    def canary(n: int, step: int) -> Measurement:
        if n == 1:
            send(tmp_path, PAUSE, why="checking the dashboards")
            threading.Timer(0.5, send, (tmp_path, RESUME, "bob", "all clear")).start()
        return good()

    controller, _, _, rows = make(tmp_path, models_root, Script(canary), steps="shadow,50")
    result = controller.run(2)
    assert result.outcome == "promoted"
    s = controller.state
    pause, resume = s.controls
    assert (pause["action"], pause["who"], pause["why"], pause["step"]) == (PAUSE, "alice", "checking the dashboards",
                                                                          "shadow")
    assert (resume["action"], resume["who"], resume["applied"]) == (RESUME, "bob", True)
    # nothing was analysed while paused, and the shadow step still needed its own time after the resume
    ats = [i["at"] for i in s.intervals]
    assert not [at for at in ats if pause["at"] + 0.05 < at < resume["at"]]
    shadow_after = [i for i in s.intervals if i["step"] == "shadow" and i["at"] > resume["at"]]
    assert shadow_after and shadow_after[-1]["move"] == ADVANCE
    assert rows.rows[0]["controls"] == s.controls and rows.rows[0]["decided_by"] is None
    assert [step["name"] for step in rows.rows[0]["steps"]] == ["shadow", "50%"]


def test_abort_by_hand_rolls_back_at_once_and_says_who_and_why(tmp_path, models_root):
    def canary(n: int, step: int) -> Measurement:
        if step == 1:
            send(tmp_path, ABORT_NOW, who="carol", why="users complain")
        return good()

    controller, slots, router, rows = make(tmp_path, models_root, Script(canary), step_s=10.0)
    result = controller.run(2)
    assert result.outcome == "aborted"
    assert result.reason == "aborted by hand by carol during step 5%: users complain"
    assert slots.serves["canary"] == 1 and router.splits[-1] == (0.2, False)
    [row] = rows.rows
    assert row["decided_by"] == "carol" and row["controls"][0]["action"] == ABORT_NOW
    assert row["steps"][-1]["move"] == ABORT_MOVE and row["steps"][-1]["by"] == "carol"


def test_promote_now_skips_the_remaining_steps(tmp_path, models_root):
    def canary(n: int, step: int) -> Measurement:
        if n == 1:
            send(tmp_path, PROMOTE_NOW, who="dave", why="hotfix")
        return good(latency_ms=600.0)  # the checks would fail: the person answers for it

    controller, slots, _, rows = make(tmp_path, models_root, Script(canary), step_s=10.0)
    result = controller.run(2)
    assert result.outcome == "promoted" and result.reason == "promoted by hand by dave during step shadow: hotfix"
    assert slots.serves == {"stable_1": 2, "stable_2": 2, "canary": 2}
    assert rows.rows[0]["decided_by"] == "dave"


def test_a_control_sent_while_no_release_runs_does_not_steer_the_next_one(tmp_path, models_root):
    (tmp_path / "run").mkdir()
    send(tmp_path, ABORT_NOW, who="eve", why="too late")
    controller, *_ = make(tmp_path, models_root, Script(lambda n, step: good()), steps="50")
    assert controller.run(2).outcome == "promoted" and controller.state.controls == []


def test_status_shows_step_weight_checks_and_time_left():
    state = ReleaseState(candidate=3, previous=2, state=OBSERVE, step=1, step_started=1000.0, failures=1,
                         gate={"steps": [Step("shadow", 0.0, True).to_dict(), Step("20%", 0.2).to_dict(),
                                         Step("50%", 0.5).to_dict()],
                               "step_s": 600.0, "failure_limit": 2, "inconclusive_limit": 10},
                         checks=[{"name": "latency", "status": "passed", "value": 12.5, "limit": 500.0,
                                  "text": "average latency 12.5 ms < 500 ms"}])
    text = status_text(state, now=1000.0 + 150.0)
    assert "release of version 3 (stable 2): OBSERVE" in text
    assert "step 2/3 20%: 20% of live requests to the canary" in text
    assert "time left: 7m30s in this step, 17m30s to promotion at the earliest" in text  # 450 s, + 600 s
    assert "failed intervals 1 of 2 allowed" in text
    assert "latency: passed, value 12.5, threshold 500" in text
    assert status_text(None) == "no release has run yet"


def test_cli_control_without_a_running_release_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOVIEREC_RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--pause", "--why", "x"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no release is being observed" in done.stderr
    StateStore(tmp_path / "run").save(ReleaseState(candidate=2, previous=1, state=OBSERVE))
    done = subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--abort", "--who", "frank", "--why",
                           "bad lists"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [request] = ControlChannel(tmp_path / "run").take()
    assert (request.action, request.who, request.why) == (ABORT_NOW, "frank", "bad lists")
