"""Approval before promotion (RELEASE_REQUIRE_APPROVAL=1, Flagger's confirm-promotion gate).

The controller is driven through its steps by scripted figures (the harness of test_steps.py); the
operator's side is the real CLI (`python -m auto_deployment release --status / --approve`) in another
process, and the `releases` row goes through `app.store` into a real MariaDB.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app import store
from auto_deployment.release.control import APPROVE, ControlChannel, status_text
from auto_deployment.release.controller import Controller
from auto_deployment.release.metrics import Measurement, NoData
from auto_deployment.release.recorder import MySQLRecorder
from auto_deployment.release.state import (
    ABORT,
    AWAIT_APPROVAL,
    DEPLOY_CANARY,
    DONE,
    NOTIFY,
    OBSERVE,
    PROMOTE,
    RECORD,
    ReleaseState,
    StateStore,
)
from auto_deployment.release.steps import Step
from tests.release.test_steps import Script, good, make, send, states

ROOT = Path(__file__).resolve().parents[2]


def requiring_approval(controller: Controller) -> Controller:
    analysis = controller.analysis
    controller.analysis = dataclasses.replace(
        analysis, progression=dataclasses.replace(analysis.progression, require_approval=True))
    return controller


def cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "RELEASE_"))}
    env.update(PYTHONPATH=str(ROOT), MOVIEREC_RUN_DIR=str(run_dir))
    return subprocess.run([sys.executable, "-m", "auto_deployment", "release", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def wait_for(run_dir: Path, predicate, timeout_s: float = 60.0) -> ReleaseState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = StateStore(run_dir).load()
        if state is not None and predicate(state):
            return state
        time.sleep(0.02)
    raise AssertionError("the release never reached the awaited state")


def test_a_release_waits_for_approval_keeps_analysing_and_promotes_once_approved(tmp_path, models_root,
                                                                                  mysql_settings):
    def canary(n: int, step: int) -> Measurement:
        if n == 1:
            send(tmp_path, APPROVE, who="eve", why="too early")  # before the steps decided: changes nothing
        return good()

    script = Script(canary)
    controller, slots, router, _ = make(tmp_path, models_root, script, steps="5,50")
    requiring_approval(controller).recorder = MySQLRecorder(mysql_settings)
    run_dir = tmp_path / "run"
    seen: dict[str, object] = {}

    def operator() -> None:
        waiting = wait_for(run_dir, lambda s: s.state == AWAIT_APPROVAL)
        seen["status"] = cli(run_dir, "--status")
        # the checks keep running while it waits: three more intervals judged after it began to wait
        wait_for(run_dir, lambda s: len([i for i in s.intervals if i["at"] > waiting.awaiting_since]) >= 3)
        seen["serving_while_waiting"] = dict(slots.serves)
        seen["approve"] = cli(run_dir, "--approve", "--who", "carol", "--why", "dashboards look fine")

    thread = threading.Thread(target=operator)
    thread.start()
    result = controller.run(2)
    thread.join(timeout=120)

    status, approve = seen["status"], seen["approve"]
    assert status.returncode == 0 and "AWAITING APPROVAL for" in status.stdout, status.stdout + status.stderr
    assert "step 2/2 50%: 50% of live requests to the canary" in status.stdout
    assert approve.returncode == 0, approve.stderr
    assert "approve of the release of version 2 requested by carol" in approve.stdout
    assert seen["serving_while_waiting"] == {"stable_1": 1, "stable_2": 1, "canary": 2}  # nothing promoted yet

    assert result.outcome == "promoted" and result.decided_by == "carol"
    assert result.reason.startswith("every step passed; approved by carol after ")
    assert result.reason.endswith(" s of waiting: dashboards look fine")
    assert states(controller) == [DEPLOY_CANARY, OBSERVE, OBSERVE, AWAIT_APPROVAL, PROMOTE, RECORD, NOTIFY, DONE]
    # the last step's weights held while waiting; then the resting split
    assert router.splits == [(0.0, False), (0.05, False), (0.5, False), (0.2, False)]
    assert slots.serves == {"stable_1": 2, "stable_2": 2, "canary": 2}
    early, approval = controller.state.controls
    assert (early["action"], early["who"], early["applied"], early["step"]) == (APPROVE, "eve", False, "5%")
    assert (approval["action"], approval["who"], approval["why"], approval["applied"]) == (
        APPROVE, "carol", "dashboards look fine", True)
    last_step = controller.state.step_log[-1]
    assert last_step["name"] == "50%" and last_step["by"] == "carol" and "awaiting_approval_at" in last_step

    # the releases row, through app.store, says who approved and why
    [row] = store.release_history(mysql_settings, candidate=2)
    assert row["outcome"] == "promoted" and row["decided_by"] == "carol"
    assert [(c["action"], c["who"], c["why"], c["applied"]) for c in row["controls"]] == [
        (APPROVE, "eve", "too early", False), (APPROVE, "carol", "dashboards look fine", True)]


@pytest.mark.parametrize(("bad", "expected"), [
    (good(latency_ms=900.0), "awaiting approval after step 50%: failed 2 of 2 allowed interval(s): "),
    (NoData("Prometheus at http://127.0.0.1:1 unreachable"),
     "awaiting approval after step 50%: inconclusive for 3 interval(s) past the step's time (limit 3)"),
], ids=["failure", "no-data"])
def test_a_release_awaiting_approval_still_aborts_on_its_checks(tmp_path, models_root, bad, expected):
    waited: list[int] = []

    def canary(n: int, step: int) -> Measurement:
        if controller.state.state != AWAIT_APPROVAL:
            return good()
        waited.append(n)
        return good() if len(waited) <= 2 else bad  # two good intervals while waiting, then the canary degrades

    controller, slots, router, rows = make(tmp_path, models_root, Script(canary), steps="50")
    requiring_approval(controller)
    result = controller.run(2)
    assert result.outcome == "aborted" and result.reason.startswith(expected), result.reason
    assert states(controller)[-5:] == [AWAIT_APPROVAL, ABORT, RECORD, NOTIFY, DONE]
    assert slots.serves == {"stable_1": 1, "stable_2": 1, "canary": 1} and router.splits[-1] == (0.2, False)
    assert rows.rows[0]["outcome"] == "aborted" and rows.rows[0]["decided_by"] is None


def test_without_the_setting_the_last_step_promotes_at_once(tmp_path, models_root):
    controller, *_ = make(tmp_path, models_root, Script(lambda n, step: good()), steps="50")
    result = controller.run(2)
    assert result.outcome == "promoted" and AWAIT_APPROVAL not in states(controller)
    assert controller.analysis.to_dict()["require_approval"] is False


def test_approve_is_refused_unless_a_release_awaits_it(tmp_path):
    run_dir = tmp_path / "run"
    StateStore(run_dir).save(ReleaseState(candidate=4, previous=3, state=OBSERVE))
    done = cli(run_dir, "--approve", "--who", "frank", "--why", "ship it")
    assert done.returncode == 2
    assert "the release of version 4 does not await approval (it is in OBSERVE)" in done.stderr
    assert ControlChannel(run_dir).take() == []


def test_a_release_that_died_awaiting_approval_is_rolled_back(tmp_path, models_root):
    controller, slots, router, rows = make(tmp_path, models_root, Script(lambda n, s: good()), steps="5,50")
    slots.serves["canary"] = 2
    StateStore(tmp_path / "run").save(ReleaseState(
        candidate=2, previous=1, state=AWAIT_APPROVAL, step=1, step_started=time.time() - 5,
        awaiting_since=time.time() - 1, history=[[DEPLOY_CANARY, "t"], [AWAIT_APPROVAL, "t"]], pid=999_999))
    recovered = controller.recover()
    assert recovered["outcome"] == "failed" and "interrupted during AWAIT_APPROVAL" in recovered["reason"]
    assert slots.serves["canary"] == 1 and router.splits == [(0.0, False), (0.2, False)]
    assert rows.rows[0]["outcome"] == "failed"


def test_status_says_the_release_awaits_approval_and_how_to_give_it():
    state = ReleaseState(candidate=3, previous=2, state=AWAIT_APPROVAL, step=1, step_started=1000.0,
                         awaiting_since=1100.0,
                         gate={"steps": [Step("5%", 0.05).to_dict(), Step("50%", 0.5).to_dict()], "step_s": 60.0,
                               "failure_limit": 2, "inconclusive_limit": 10, "require_approval": True})
    text = status_text(state, now=1100.0 + 65.0)
    assert "release of version 3 (stable 2): AWAIT_APPROVAL" in text
    assert "step 2/2 50%: 50% of live requests to the canary" in text
    assert "AWAITING APPROVAL for 1m05s" in text and "release --approve --who NAME --why TEXT" in text
    assert "time left" not in text
    observing = dataclasses.replace(state, state=OBSERVE, awaiting_since=None)
    assert "approval required" in status_text(observing, now=1100.0)
