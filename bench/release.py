"""Release detection matrix (issue 11): can the canary analysis tell a bad release from a good one?

`python -m bench release` brings a native stack up with the project's own `ops.stack` (private directory, free
loopback ports) serving two bundles of the *same* model (versions 1 and 2: a healthy candidate is the model
already in service), keeps a steady load on NGINX, and releases the version that is not stable, again and
again, with ``python -m auto_deployment release`` on shortened windows. Each scenario injects its fault with
the existing drills (``<run>/faults/canary.json``) or by hand:

==================  =====================================  ==============================================
scenario            how                                    must
==================  =====================================  ==============================================
healthy             nothing                                promoted
+200 ms latency     ``{"latency_ms": 200}`` on the canary  aborted, before the 50 % step
3 % 5xx             ``{"error_ratio": 0.03}``              aborted, before the 50 % step
400 flood           clients asking ``/recommend/bad1``     promoted (the clients' mistake)
Prometheus down     Prometheus stopped 5 s into it         never promoted
==================  =====================================  ==============================================

Per scenario: trials, how many were promoted / aborted / failed, how many reached the 50 % step, the
median seconds to the decision, and whether every trial did what it must. Settings: ``BENCH_RELEASE_TRIALS``
(default 10 per scenario), ``BENCH_RELEASE_OBSERVE`` (30s: the window shared by the steps),
``BENCH_RELEASE_STEPS`` (shadow,20,50), ``BENCH_RELEASE_RATE`` (client pause, default 0.01 s per request and
client, 4 clients), ``BENCH_RELEASES=healthy,latency`` for a subset. The quality scenarios of the issue (random
and popularity-only lists, a better model) need ``RELEASE_EVENT_LOG`` and a simulator with users who react;
they are not in this reduced matrix.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from app.contracts import pointer
from app.settings import ROOT
from auto_deployment.release.state import StateStore
from bench.faults import down, stack_environ
from bench.table import render
from ops.services import Stack, prometheus_slots_up, supervisorctl


@dataclass
class Ctx:
    stack: Stack
    env: dict[str, str]
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def faults(self) -> Path:
        return self.stack.run_dir / "faults" / "canary.json"


def _drill(ctx: Ctx, **fault: float) -> None:
    ctx.faults.parent.mkdir(parents=True, exist_ok=True)
    ctx.faults.write_text(json.dumps(fault))


def _clear(ctx: Ctx) -> None:
    ctx.faults.unlink(missing_ok=True)


def _flood(ctx: Ctx) -> None:
    def client() -> None:
        with requests.Session() as session:
            while not ctx.stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    session.get(f"{ctx.stack.nginx_url}/recommend/bad1", timeout=2)
    for _ in range(2):
        threading.Thread(target=client, daemon=True).start()


def _prometheus_down(ctx: Ctx) -> None:
    def later() -> None:
        if not ctx.stop.wait(5.0):
            supervisorctl(ctx.stack, "stop", "prometheus")
    threading.Thread(target=later, daemon=True).start()


def _prometheus_up(ctx: Ctx) -> None:
    supervisorctl(ctx.stack, "start", "prometheus")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "canary" not in prometheus_slots_up(ctx.stack):
        time.sleep(0.5)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    must: str  # promoted | aborted-before-50 | not-promoted
    start: Callable[[Ctx], None] = lambda ctx: None
    end: Callable[[Ctx], None] = lambda ctx: None


SCENARIOS = (
    Scenario("healthy", "healthy (same model)", "promoted"),
    Scenario("latency", "+200 ms latency", "aborted-before-50", lambda c: _drill(c, latency_ms=200), _clear),
    Scenario("errors", "3% 5xx", "aborted-before-50", lambda c: _drill(c, error_ratio=0.03), _clear),
    Scenario("flood400", "a flood of 400s from clients", "promoted", _flood),
    Scenario("prometheus", "Prometheus down mid-release", "not-promoted", _prometheus_down, _prometheus_up),
)


@dataclass
class Trial:
    outcome: str
    seconds: float
    reached_50: bool
    reason: str


class Load:
    """A few clients asking NGINX for recommendations until stopped (the release needs traffic to judge)."""

    def __init__(self, url: str, clients: int, pause_s: float) -> None:
        self.url, self.pause_s = url, pause_s
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, seed: int) -> None:
        rnd = random.Random(seed)
        with requests.Session() as session:
            while not self.stop.is_set():
                with contextlib.suppress(requests.RequestException):
                    session.get(f"{self.url}/recommend/{rnd.randint(1, 300)}", timeout=2)
                self.stop.wait(self.pause_s)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


def one_release(ctx: Ctx, scenario: Scenario, observe: str, steps: str) -> Trial:
    stable = pointer.read_number(ctx.stack.version_file) or 1
    candidate = 2 if stable == 1 else 1
    env = {**ctx.env, "RELEASE_STEPS": steps, "RELEASE_INTERVAL_S": "1", "RELEASE_INCONCLUSIVE_LIMIT": "30",
           "RELEASE_MIN_REQUESTS": "20", "MOVIEREC_REPO_DIR": str(ctx.stack.run_dir.parent)}
    ctx.stop = threading.Event()
    scenario.start(ctx)
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--candidate", str(candidate),
                               "--observe", observe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        seconds = time.monotonic() - started
        ctx.stop.set()
        scenario.end(ctx)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"outcome": "error", "reason": done.stderr[-300:]}
    state = StateStore(ctx.stack.run_dir).load()
    reached = any(float(s.get("share", 0)) >= 0.5 for s in (state.step_log if state else []))
    return Trial(report.get("outcome", "error"), seconds, reached, str(report.get("reason", ""))[:200])


def _ok(scenario: Scenario, trial: Trial) -> bool:
    if scenario.must == "promoted":
        return trial.outcome == "promoted"
    if scenario.must == "aborted-before-50":
        return trial.outcome == "aborted" and not trial.reached_50
    return trial.outcome != "promoted"


def measure(ctx: Ctx, trials: int, observe: str, steps: str, only: set[str]) -> list[list[object]]:
    rows = []
    for scenario in SCENARIOS:
        if only and scenario.key not in only:
            continue
        results = []
        for n in range(trials):
            print(f"[bench release] {scenario.key} {n + 1}/{trials} ...", file=sys.stderr, flush=True)
            results.append(one_release(ctx, scenario, observe, steps))
        outcomes = [t.outcome for t in results]
        rows.append([scenario.title, scenario.must, trials, outcomes.count("promoted"), outcomes.count("aborted"),
                     len(results) - outcomes.count("promoted") - outcomes.count("aborted"),
                     sum(t.reached_50 for t in results), statistics.median(t.seconds for t in results),
                     "yes" if all(_ok(scenario, t) for t in results) else "NO: " + results[-1].reason])
    return rows


def run(argv: Sequence[str] | None = None) -> str:
    """The detection matrix as a table (`python -m bench release`)."""
    trials = int(os.environ.get("BENCH_RELEASE_TRIALS", "10"))
    observe = os.environ.get("BENCH_RELEASE_OBSERVE", "30s")
    steps = os.environ.get("BENCH_RELEASE_STEPS", "shadow,20,50")
    pause = float(os.environ.get("BENCH_RELEASE_RATE", "0.01"))
    only = {k for k in os.environ.get("BENCH_RELEASES", "").split(",") if k}
    base = Path(tempfile.mkdtemp(prefix="movierec-release-"))
    env = stack_environ(base)
    from tests.fixtures.models import build_bundle  # the same small seeded world the release tests use

    for version in (1, 2):  # the same model twice: a healthy candidate changes nothing
        build_bundle(base / "models", version, seed=11)
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
    stack = Stack.from_env(env)
    try:
        if up.returncode != 0:
            return f"bench release: the stack did not come up:\n{up.stdout}{up.stderr}\n"
        ctx = Ctx(stack, env)
        with Load(stack.nginx_url, clients=4, pause_s=pause):
            time.sleep(5.0)
            rows = measure(ctx, trials, observe, steps, only)
        return render(
            f"Release detection matrix: {trials} trial(s) per scenario, steps {steps}, window {observe}, "
            "checks every 1 s",
            ["canary", "must", "trials", "promoted", "aborted", "failed", "reached 50%", "median s", "all as must"],
            rows,
            note="must: promoted; aborted-before-50 (aborted, never at the 50% step); not-promoted. median s: "
                 "from the release command to its decision (deploy and rollback included).",
        )
    finally:
        down(stack, env)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    print(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
