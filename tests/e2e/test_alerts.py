"""Live alerting on the native stack: a stopped inference server is announced through Alertmanager,
and its return is announced as resolved (the rules and routes of monitoring/, really evaluated)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from app.settings import ROOT
from ops.services import Stack, supervisorctl
from tests.fixtures.stack import stack_environ

pytestmark = [pytest.mark.slow, pytest.mark.services]


def _alerts(inbox, status: str) -> list[dict]:
    return [a for post in inbox.posts for a in post.get("alerts", [])
            if a["labels"].get("alertname") == "InferenceServerDown" and a["status"] == status]


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_a_stopped_inference_server_fires_an_alert_that_resolves_when_it_returns(
    native_stack, slack_receiver, tmp_path
):
    # a second stack on the first one's data and models (no training), its alerts to a local webhook
    env = stack_environ(tmp_path, models_dir=native_stack.stack.models_dir, data_dir=native_stack.stack.data_dir)
    env["MOVIEREC_VERSION_FILE"] = str(native_stack.stack.version_file)
    env["ALERT_WEBHOOK_URL"] = slack_receiver.url
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
    stack = Stack.from_env(env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert supervisorctl(stack, "stop", "stable_2").returncode == 0
        # InferenceServerDown: `up == 0` for 1 minute, then group_wait 10 s
        assert _wait(lambda: _alerts(slack_receiver, "firing"), 180), slack_receiver.posts
        firing = _alerts(slack_receiver, "firing")[0]
        assert firing["labels"]["slot"] == "stable_2"
        assert "stable_1" not in {a["labels"].get("slot") for a in _alerts(slack_receiver, "firing")}
        assert supervisorctl(stack, "start", "stable_2").returncode == 0
        # resolved at the next group interval (1 minute) once the slot is scraped up again
        assert _wait(lambda: _alerts(slack_receiver, "resolved"), 180), slack_receiver.posts
        assert _alerts(slack_receiver, "resolved")[0]["labels"]["slot"] == "stable_2"
    finally:
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
