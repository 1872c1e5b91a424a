"""Release detection matrix (issue 11): can the canary analysis tell a bad release from a good one?

`python -m bench release` brings a native stack up with the project's own `ops.stack` (private directory, free
loopback ports), keeps a steady load on NGINX plus the simulator's users (`simulator.population`: they ask for a
list, then watch and rate, and their event log is what ``RELEASE_EVENT_LOG`` points at, one file per trial), and
releases a candidate again and again with ``python -m auto_deployment release`` on shortened windows, the model
quality check on (the canary's hit rate vs stable's, lists attributed by provenance). Bundles, all trained on the
same seeded world the simulated users live in (`tests.fixtures.models.build_bundle`, world seed 11):

=======  ================================  ===========================================================
version  model                             used as
=======  ================================  ===========================================================
1, 2     user_knn, default parameters      stable, and the healthy candidate (the same model twice)
3        ``bench_random``                  random lists (`app.recommender.baselines`)
4        ``bench_popularity``              popularity-only lists
5        user_knn, like_weight 2,          a better model: offline NDCG@20 against the world's true
         rank_neighbours 30                tastes 0.717 vs stable's 0.690 (`offline_ndcg`)
=======  ================================  ===========================================================

==================  =====================================  ==============================================
scenario            how                                    must
==================  =====================================  ==============================================
healthy             candidate = stable's twin              promoted
better              candidate = version 5                  promoted (then stable is put back with
                                                           ``release --promote-now``, by hand)
random              candidate = version 3                  aborted by the quality check
popularity          candidate = version 4                  aborted by the quality check
+200 ms latency     ``{"latency_ms": 200}`` on the canary  aborted, before the 50 % step
3 % 5xx             ``{"error_ratio": 0.03}``              aborted, before the 50 % step
400 flood           clients asking ``/recommend/bad1``     promoted (the clients' mistake)
Prometheus down     Prometheus stopped 5 s into it         never promoted
==================  =====================================  ==============================================

Per scenario: trials, how many were promoted / aborted / failed, how many reached the 50 % step, which check
decided (the failed checks of the deciding interval, or ``inconclusive``), the median seconds to the decision,
and whether every trial did what it must. Settings: ``BENCH_RELEASE_TRIALS`` (default 10 per scenario),
``BENCH_RELEASE_OBSERVE`` (50s: the window shared by the steps), ``BENCH_RELEASE_STEPS`` (20,50: no shadow step,
since in shadow the canary's lists reach no user, so the quality check can only be inconclusive there),
``BENCH_RELEASE_RATE`` (client pause, default 0.02 s per request and client, 3 clients),
``BENCH_RELEASE_SESSIONS`` (simulated users' sessions per second, 20), ``BENCH_RELEASE_MIN_LISTS`` (lists per side
before the quality test may judge, 100: at 20 sessions/s the 20 % step reaches it in ~35 s),
``BENCH_RELEASES=healthy,random`` for a subset (only the bundles they use are built), ``BENCH_RELEASE_JSON=PATH``
to append each trial to PATH as a JSON line as it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from app.contracts import pointer
from app.settings import ROOT
from auto_deployment.release.state import OBSERVE, StateStore
from bench.faults import down, stack_environ
from bench.table import render
from ops.services import Stack, prometheus_slots_up, supervisorctl

WORLD_SEED = 11  # the world of the bundles and of the simulated users (tests.fixtures.models.build_bundle)
RANDOM_V, POPULARITY_V, BETTER_V = 3, 4, 5
BETTER_PARAMS = {"like_weight": 2.0, "rank_neighbours": 30}


def build_bundles(models: Path, versions: Sequence[int] = (1, 2, RANDOM_V, POPULARITY_V, BETTER_V)) -> None:
    """`versions` of the table above, in `models`."""
    from tests.fixtures.models import build_bundle  # the same small seeded world the release tests use

    params: dict[int, dict[str, object]] = {RANDOM_V: {"algorithm": "bench_random"},
                                            POPULARITY_V: {"algorithm": "bench_popularity"}, BETTER_V: BETTER_PARAMS}
    for version in versions:  # 1 and 2: the same model twice, so a healthy candidate changes nothing
        build_bundle(models, version, seed=WORLD_SEED, **params.get(version, {}))


def offline_ndcg(models: Path, versions: Sequence[int]) -> dict[int, float]:
    """NDCG@20 of each version's lists against the world's true tastes (`simulator.loop.true_ndcg`), movies the
    training history holds for a user (and adult ones for minors) being ineligible: what "better" means here."""
    import numpy as np

    from app.model import Recommender
    from simulator.loop import true_ndcg
    from simulator.world import World

    world = World.generate(seed=WORLD_SEED, n_users=300, n_movies=400)
    ratings, _ = world.history(n_ratings=20_000, seed=WORLD_SEED)
    movies = world.movies["movie_id"].astype(str).to_numpy()
    users = world.users["user_id"].astype(int).to_numpy()
    col = {m: j for j, m in enumerate(movies)}
    row = {u: i for i, u in enumerate(users)}
    true = np.stack([world.true_ratings(np.full(len(movies), u), movies.astype(object)) for u in users])
    eligible = ~(world.users["age"].to_numpy()[:, None] < 18) | ~world.movies["adult"].to_numpy(bool)[None, :]
    eligible[[row[int(u)] for u in ratings.user_id], [col[str(m)] for m in ratings.movie_id]] = False
    out = {}
    for version in versions:
        model = Recommender.load(models / str(version))
        lists = np.full((len(users), 20), -1)
        for i, u in enumerate(users):
            chosen = [col[m] for m in model.recommend(int(u))]
            lists[i, : len(chosen)] = chosen
        out[version] = true_ndcg(lists, true, eligible)
    return out


@dataclass
class Ctx:
    stack: Stack
    env: dict[str, str]
    events_dir: Path
    sessions_per_s: float = 20.0
    stop: threading.Event = field(default_factory=threading.Event)
    trial: int = 0

    @property
    def faults(self) -> Path:
        return self.stack.run_dir / "faults" / "canary.json"

    @property
    def event_log(self) -> Path:
        return self.events_dir / f"trial-{self.trial}.log"


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


def _stable(ctx: Ctx) -> int:
    return pointer.read_number(ctx.stack.version_file) or 1


def _twin(stable: int) -> int:
    """The other copy of the stable model (versions 1 and 2 are the same model)."""
    return 2 if stable == 1 else 1


def _release_env(ctx: Ctx, steps: str, min_lists: int) -> dict[str, str]:
    return {**ctx.env, "RELEASE_STEPS": steps, "RELEASE_INTERVAL_S": "1", "RELEASE_INCONCLUSIVE_LIMIT": "30",
            "RELEASE_MIN_REQUESTS": "20", "MOVIEREC_REPO_DIR": str(ctx.stack.run_dir.parent),
            "RELEASE_EVENT_LOG": str(ctx.event_log), "RELEASE_QUALITY_MIN_LISTS": str(min_lists)}


def restore_stable(ctx: Ctx, version: int, steps: str) -> str:
    """Put `version` back in service after a promoted better model: a release of it, promoted by hand (the
    operator's way, recorded with who and why), so the next trial compares the better model with it again."""
    env = {**_release_env(ctx, steps, 10**9), "RELEASE_EVENT_LOG": ""}
    release = subprocess.Popen([sys.executable, "-m", "auto_deployment", "release", "--candidate", str(version),
                                "--observe", "1h"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    store = StateStore(ctx.stack.run_dir)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and release.poll() is None:
        state = store.load()
        if state and state.candidate == version and state.state == OBSERVE:
            subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--promote-now", "--who", "bench",
                            "--why", "detection matrix: stable model put back"], cwd=ROOT, env=env,
                           capture_output=True, timeout=60)
            break
        time.sleep(0.5)
    out, _ = release.communicate(timeout=600)
    with contextlib.suppress(json.JSONDecodeError):
        return str(json.loads(out).get("outcome"))
    return "error"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    must: str  # promoted | aborted-before-50 | not-promoted | aborted-by-quality
    version: int | None = None  # the candidate's bundle; None: the twin of the stable model
    start: Callable[[Ctx], None] = lambda ctx: None
    end: Callable[[Ctx], None] = lambda ctx: None


QUALITY = "quality_vs_stable"
SCENARIOS = (
    Scenario("healthy", "healthy (same model)", "promoted"),
    Scenario("better", "a better model", "promoted", BETTER_V),
    Scenario("random", "random lists", "aborted-by-quality", RANDOM_V),
    Scenario("popularity", "popularity-only lists", "aborted-by-quality", POPULARITY_V),
    Scenario("latency", "+200 ms latency", "aborted-before-50", start=lambda c: _drill(c, latency_ms=200), end=_clear),
    Scenario("errors", "3% 5xx", "aborted-before-50", start=lambda c: _drill(c, error_ratio=0.03), end=_clear),
    Scenario("flood400", "a flood of 400s from clients", "promoted", start=_flood),
    Scenario("prometheus", "Prometheus down mid-release", "not-promoted", start=_prometheus_down,
             end=_prometheus_up),
)


@dataclass
class Trial:
    outcome: str
    seconds: float
    reached_50: bool
    decided_by: str  # the failed checks of the deciding interval, "inconclusive", "all passed", or who by hand
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


class Users:
    """The simulator's users for one trial: sessions (ask, watch, rate) whose event log the quality check reads.

    A fresh population per trial (its own seed), so users do not run out of unwatched movies over a long matrix.
    """

    def __init__(self, url: str, log: Path, sessions_per_s: float, seed: int) -> None:
        from simulator.population import Population
        from simulator.world import World

        self.url, self.log, self.rate = url, log, sessions_per_s
        self.population = Population(World.generate(seed=WORLD_SEED, n_users=300, n_movies=400), seed=seed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from simulator.population import run_traffic

        lock = threading.Lock()
        with open(self.log, "a", encoding="utf-8") as fh:
            def emit(line: str) -> None:
                with lock:
                    fh.write(line + "\n")
                    fh.flush()

            run_traffic(self.url, self.population, emit, self.rate, duration_s=24 * 3600.0, concurrency=16,
                        stop=self.stop)

    def __enter__(self) -> Users:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _decided_by(outcome: str, state: object) -> str:
    if state is None:
        return "?"
    if getattr(state, "decided_by", None):
        return f"by hand ({state.decided_by})"
    if outcome == "promoted":
        return "all passed"
    failed = [c["name"] for c in getattr(state, "checks", []) if c.get("status") == "failed"]
    return "+".join(failed) if failed else "inconclusive"


def one_release(ctx: Ctx, scenario: Scenario, observe: str, steps: str, min_lists: int) -> Trial:
    stable = _stable(ctx)
    candidate = scenario.version or _twin(stable)
    ctx.trial += 1
    ctx.stop = threading.Event()
    env = _release_env(ctx, steps, min_lists)
    with Users(ctx.stack.nginx_url, ctx.event_log, ctx.sessions_per_s, seed=ctx.trial):
        scenario.start(ctx)
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--candidate",
                                   str(candidate), "--observe", observe], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=900)
        finally:
            seconds = time.monotonic() - started
            ctx.stop.set()
            scenario.end(ctx)
    ctx.event_log.unlink(missing_ok=True)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = {"outcome": "error", "reason": done.stderr[-300:]}
    state = StateStore(ctx.stack.run_dir).load()
    reached = any(float(s.get("share", 0)) >= 0.5 for s in (state.step_log if state else []))
    outcome = report.get("outcome", "error")
    trial = Trial(outcome, seconds, reached, _decided_by(outcome, state), str(report.get("reason", "")))
    if outcome == "promoted" and candidate != stable and candidate not in (1, 2):
        print(f"[bench release] putting version {stable} back: {restore_stable(ctx, stable, steps)}",
              file=sys.stderr, flush=True)
    return trial


def _ok(scenario: Scenario, trial: Trial) -> bool:
    if scenario.must == "promoted":
        return trial.outcome == "promoted"
    if scenario.must == "aborted-before-50":
        return trial.outcome == "aborted" and not trial.reached_50
    if scenario.must == "aborted-by-quality":
        return trial.outcome == "aborted" and trial.decided_by == QUALITY
    return trial.outcome != "promoted"


def chosen_scenarios(only: set[str]) -> list[Scenario]:
    unknown = only - {s.key for s in SCENARIOS}
    if unknown:
        raise ValueError(f"BENCH_RELEASES: unknown scenario(s) {sorted(unknown)}; known: {[s.key for s in SCENARIOS]}")
    return [s for s in SCENARIOS if not only or s.key in only]


def measure(ctx: Ctx, trials: int, observe: str, steps: str, min_lists: int, chosen: Sequence[Scenario],
            record: Path | None = None) -> list[list[object]]:
    """Round-robin over the scenarios, trial by trial, so a long matrix cut short still covers them all; each
    trial is appended to `record` (JSON lines) as it ends."""
    results: dict[str, list[Trial]] = {s.key: [] for s in chosen}
    for n in range(trials):
        for scenario in chosen:
            print(f"[bench release] {scenario.key} {n + 1}/{trials} ...", file=sys.stderr, flush=True)
            trial = one_release(ctx, scenario, observe, steps, min_lists)
            print(f"[bench release]   {scenario.key} {trial.outcome} in {trial.seconds:.0f} s, reached 50%: "
                  f"{trial.reached_50}, decided by {trial.decided_by}: {trial.reason}", file=sys.stderr, flush=True)
            results[scenario.key].append(trial)
            if record is not None:
                with open(record, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"scenario": scenario.key, **dataclasses.asdict(trial)}) + "\n")
    rows = []
    for scenario in chosen:
        done = results[scenario.key]
        outcomes = [t.outcome for t in done]
        deciders = Counter(t.decided_by for t in done)
        misses = [t for t in done if not _ok(scenario, t)]
        rows.append([scenario.title, scenario.must, trials, outcomes.count("promoted"), outcomes.count("aborted"),
                     len(done) - outcomes.count("promoted") - outcomes.count("aborted"),
                     sum(t.reached_50 for t in done), ", ".join(f"{k} {v}" for k, v in deciders.most_common()),
                     statistics.median(t.seconds for t in done),
                     "yes" if not misses else f"NO ({len(misses)}): " + misses[-1].reason[:160]])
    return rows


def _load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores at the end"


def run(argv: Sequence[str] | None = None) -> str:
    """The detection matrix as a table (`python -m bench release`)."""
    trials = int(os.environ.get("BENCH_RELEASE_TRIALS", "10"))
    observe = os.environ.get("BENCH_RELEASE_OBSERVE", "50s")
    steps = os.environ.get("BENCH_RELEASE_STEPS", "20,50")
    pause = float(os.environ.get("BENCH_RELEASE_RATE", "0.02"))
    sessions = float(os.environ.get("BENCH_RELEASE_SESSIONS", "20"))
    min_lists = int(os.environ.get("BENCH_RELEASE_MIN_LISTS", "100"))
    chosen = chosen_scenarios({k for k in os.environ.get("BENCH_RELEASES", "").split(",") if k})
    record = Path(os.environ["BENCH_RELEASE_JSON"]) if os.environ.get("BENCH_RELEASE_JSON") else None
    base = Path(tempfile.mkdtemp(prefix="movierec-release-"))
    env = stack_environ(base)
    versions = (1, 2, *sorted({s.version for s in chosen if s.version}))  # only the bundles the scenarios use
    build_bundles(base / "models", versions)
    ndcg = offline_ndcg(base / "models", [v for v in versions if v != 2])
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
    stack = Stack.from_env(env)
    try:
        if up.returncode != 0:
            return f"bench release: the stack did not come up:\n{up.stdout}{up.stderr}\n"
        ctx = Ctx(stack, env, base / "events", sessions)
        with Load(stack.nginx_url, clients=3, pause_s=pause):
            time.sleep(5.0)
            rows = measure(ctx, trials, observe, steps, min_lists, chosen, record)
        return render(
            f"Release detection matrix: {trials} trial(s) per scenario, steps {steps}, window {observe}, "
            f"checks every 1 s, {sessions:g} simulated sessions/s, quality test from {min_lists} lists per side",
            ["canary", "must", "trials", "promoted", "aborted", "failed", "reached 50%", "decided by", "median s",
             "all as must"],
            rows,
            note="must: promoted; aborted-before-50 (aborted, never at the 50% step); aborted-by-quality (aborted, "
                 "the deciding interval's failed check being quality_vs_stable); not-promoted. median s: from the "
                 "release command to its decision (deploy and rollback included). Offline NDCG@20 vs true tastes: "
                 + ", ".join(f"v{v} {x:.3f}" for v, x in ndcg.items()) + f" (stable v1, better v{BETTER_V}, random "
                 f"v{RANDOM_V}, popularity v{POPULARITY_V}); {_load_note()}.",
        )
    finally:
        down(stack, env)
        shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    print(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
