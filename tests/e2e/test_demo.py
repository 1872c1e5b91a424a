"""`make up`'s demo loop end to end: simulator → Kafka → scheduler → version → canary → promoted.

The windows are shortened further than the demo's own (collect 20 s, observe 15 s) so the whole loop
fits in a couple of minutes; everything else is what `make up` runs.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from app.settings import ROOT
from ops.services import Stack, program_pids
from tests.fixtures.stack import SLOTS, alive, descendants, free_ports, stack_environ

pytestmark = [pytest.mark.slow, pytest.mark.services]


def _head(repo) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    env = stack_environ(base)
    for name in ("MOVIEREC_DATA_DIR", "MOVIEREC_MODELS_DIR", "MOVIEREC_VERSION_FILE", "MOVIEREC_REPO_DIR"):
        env.pop(name, None)  # the demo keeps its versions in a clone under the run dir
    kafka_port, controller_port = free_ports(2)
    env.update(KAFKA_PORT=str(kafka_port), KAFKA_CONTROLLER_PORT=str(controller_port),
               KAFKA_BOOTSTRAP=f"127.0.0.1:{kafka_port}", DEMO_COLLECT="20s", DEMO_OBSERVE="15s",
               DEMO_RATE="10", DEMO_EVERY="1h", RELEASE_MIN_REQUESTS="10")
    checkout_head = _head(ROOT)
    done = subprocess.run([sys.executable, "-m", "ops.stack", "up", "--demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        yield env, done.stdout, checkout_head
    finally:
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)


def test_the_demo_announces_its_shortened_windows(demo):
    _, output, _ = demo
    assert "demo loop" in output and "every 1h" in output and "collect 20s" in output and "observed 15s" in output


def test_the_loop_retrains_from_the_simulated_stream_and_promotes_the_new_version(demo):
    env, _, checkout_head = demo
    stack = Stack.from_env(env, demo=True)
    deadline = time.monotonic() + 420
    seen = set()
    while time.monotonic() < deadline:
        resp = requests.get(f"{stack.nginx_url}/recommend/7", timeout=2)
        assert resp.status_code == 200
        seen.add(resp.headers["X-Model-Version"])
        if resp.headers["X-Model-Version"] == "2" and stack.version_file.read_text().strip() == "2":
            break
        time.sleep(1)
    log = (stack.log_dir / "scheduler.log").read_text()
    assert seen >= {"1", "2"}, f"served versions {seen}; scheduler log tail:\n{log[-3000:]}"
    repo = stack.env["MOVIEREC_REPO_DIR"]
    history = subprocess.run(["git", "-C", repo, "log", "--format=%s"], capture_output=True, text=True).stdout
    assert "model version 2" in history and "RMSE" in history
    assert (stack.models_dir / "2" / "metadata.json").is_file()
    assert "step=collect status=ok" in log and "source=kafka" in log
    # the loop never commits in the checkout the platform runs from
    assert _head(ROOT) == checkout_head


def test_online_evaluation_of_the_simulated_users_reaches_prometheus(demo):
    env, _, _ = demo
    stack = Stack.from_env(env, demo=True)

    def attributed(series: list) -> set[tuple[str, str]]:
        """(version, slot) of the series that the provenance join attributed to a serving slot."""
        return {(s["metric"]["version"], s["metric"]["slot"]) for s in series
                if s["metric"]["version"].isdigit() and s["metric"]["slot"] in SLOTS}

    series: list = []
    deadline = time.monotonic() + 150  # the gauges refresh every 30 s
    while time.monotonic() < deadline and not attributed(series):
        resp = requests.get(f"{stack.prometheus_url}/api/v1/query", params={"query": "online_eval_lists > 0"},
                            timeout=5)
        series = resp.json()["data"]["result"]
        time.sleep(2)
    tail = (stack.log_dir / "online_eval.log").read_text()[-2000:]
    assert series, tail
    # lists are attributed to the model version and slot that served them (provenance join)
    assert attributed(series), ({(s["metric"]["version"], s["metric"]["slot"]) for s in series}, tail)


def test_down_stops_the_demo_programs_and_the_broker(demo):
    env, _, _ = demo
    stack = Stack.from_env(env, demo=True)
    kafka_pid = int((stack.run_dir / "kafka" / "kafka.pid").read_text())
    pids = [p for p in program_pids(stack).values() if p]
    pids += [c for p in list(pids) for c in descendants(p)]
    assert alive(kafka_pid) and pids
    done = subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    time.sleep(1)
    assert not alive(kafka_pid)
    assert not [p for p in pids if alive(p)]
