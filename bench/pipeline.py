"""Retraining pipeline benchmark: seconds of one full run (no release), split by step.

Three sizes, each in a throwaway git + DVC repository with its own private MariaDB (the `tracking`
row is written for real) and a local DVC remote:

* `ml100k`, MovieLens-100k: `data/` holds the oldest 80% of the ratings; the newest 20% arrive as an
  event log (two watched minutes and the rating per rating, as the simulator writes them);
* `world1m`, a 1-million-rating world (6,000 users × 3,700 movies, the shape of MovieLens-1M): 90% in
  `data/`, the newest 10% as events;
* `scale1m`, the real size (not in the default): `python -m simulator world` writes 1,000,000 users ×
  27,000 movies × 20M ratings; 90% go to `data/`, the newest 10% (2M ratings, 6M log lines, a
  two-day window of the real stream) arrive as events. The world and the repository are made by
  child processes, so that nothing of theirs is in this process's memory. Needs ~25 GB of disk and an
  idle machine: `BENCH_PIPELINE_SIZES=scale1m python -m bench pipeline`.

The run is `run_pipeline` in this process with `--source file:...` and `--no-release`; the
version step is also split into its DVC, git and MySQL parts. `BENCH_PIPELINE_SIZES` picks the
sizes (`ml100k,world1m`, the default, or any of the three); the peak RSS row is the pipeline run's own (the
kernel's high-water mark is reset just before it); `BENCH_PIPELINE_SCALE_USERS` shrinks
`scale1m` (20 ratings per user) for a quick run; `BENCH_PIPELINE_KEEP=DIR` leaves each run's repository,
event log and models in `DIR/<size>` (to serve the bundle afterwards).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.contracts.tables import Tables, save_tables
from app.settings import ROOT, MySQL, Notify
from auto_deployment.data.checks import CheckLimits
from auto_deployment.model.registry import Layout
from auto_deployment.pipeline import Options, run_pipeline
from bench.table import render
from tests.fixtures.pipeline import DVC, event_lines, git_init, sh, write_log

log = logging.getLogger(__name__)

STEP_ROWS = ("collect", "prepare", "checks", "evaluate", "gate", "train", "version")
VERSION_PARTS = ("setup", "install", "dvc_add", "dvc_push", "git_commit", "tracking")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _MariaDB:
    """A private MariaDB with the provenance schema, under `base` (ops/mariadb.sh + schema apply)."""

    def __init__(self, base: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "MOVIEREC_RUN_DIR": str(base / "db-run"), "MYSQL_PORT": str(self.port),
                    "PYTHONPATH": str(ROOT)}

    def __enter__(self) -> MySQL:
        subprocess.run(["bash", str(ROOT / "ops" / "mariadb.sh"), "start"], env=self.env, check=True,
                       capture_output=True, timeout=180)
        subprocess.run([sys.executable, "-m", "auto_deployment.schema", "apply"], env=self.env, cwd=ROOT,
                       check=True, capture_output=True, timeout=180)
        defaults = MySQL.from_env()
        return MySQL(**{**defaults.__dict__, "port": self.port})

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["bash", str(ROOT / "ops" / "mariadb.sh"), "stop"], env=self.env, check=False,
                       capture_output=True, timeout=180)


def _repo(base: Path, tables: Tables, new_share: float) -> tuple[Layout, Path, int, int]:
    """A git + DVC repo under `base` holding all but the newest ratings; the event log of the rest."""
    ratings = tables.ratings.sort_values(["timestamp", "user_id", "movie_id"], kind="mergesort")
    cut = int(len(ratings) * (1 - new_share))
    repo = base / "repo"
    repo.mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    git_init(repo, "bench")
    sh([DVC, "init", "-q"], repo, env=env)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-q", "-m", "initial"], repo)
    save_tables(Tables(ratings=ratings.iloc[:cut], watches=tables.watches, users=tables.users,
                       movies=tables.movies), repo / "data")
    lines = event_lines(ratings.iloc[cut:])
    log_path = write_log(base / "events.log", lines)
    return _layout(base), log_path, len(ratings), len(lines)


def _layout(base: Path) -> Layout:
    repo = base / "repo"
    return Layout(root=repo.resolve(), data_dir=(repo / "data").resolve(), models_dir=(repo / "models").resolve(),
                  version_file=(repo / "version.txt").resolve(), run_dir=(base / "run").resolve(),
                  dvc_remote=str(base / "dvc-remote"))


def _scale_users() -> int:
    """`BENCH_PIPELINE_SCALE_USERS` (default 1,000,000): the scale1m world's users, smaller for a quick run."""
    return int(os.environ.get("BENCH_PIPELINE_SCALE_USERS", "1000000"))


def _scale_repo(base: Path, new_share: float) -> tuple[Layout, Path, int, int, dict[str, float]]:
    """The 1M-user world and its repository, made by child processes (their memory is not the pipeline's)."""
    world = base / "world"
    started = time.perf_counter()
    users = _scale_users()
    subprocess.run([sys.executable, "-m", "simulator", "world", "--users", str(users), "--movies", "27000",
                    "--ratings", str(20 * users), "--seed", "0", "--workers", "2", "--out", str(world)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    world_s = time.perf_counter() - started
    done = subprocess.run([sys.executable, "-m", "bench.pipeline", "--repo-from-world", str(base), str(world),
                           str(new_share)], cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
    made = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(world, ignore_errors=True)
    return _layout(base), Path(made["log"]), made["ratings"], made["lines"], {"world_s": world_s}


def _reset_peak_rss() -> None:
    """Start the kernel's high-water mark of this process's RSS afresh (Linux: `clear_refs` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:  # not Linux, or a kernel without it: the peak then includes what came before
        log.warning("peak RSS not reset: %s", exc)


def _peak_rss_mb() -> float:
    """This process's peak RSS since `_reset_peak_rss` (`VmHWM`), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _repo_from_world(base: Path, world: Path, new_share: float) -> dict:
    """`--repo-from-world`: load a written world's tables and build the bench repository from them."""
    from app.contracts.tables import load_tables

    _, log_path, n_ratings, n_lines = _repo(base, load_tables(world), new_share)
    return {"log": str(log_path), "ratings": n_ratings, "lines": n_lines}


def _measure(name: str, tables: Tables | None, new_share: float) -> dict:
    keep = os.environ.get("BENCH_PIPELINE_KEEP", "")  # a directory to leave the run in (e.g. to serve its bundle)
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{name}-") as tmp:
        base = Path(keep) / name if keep else Path(tmp)
        if tables is None:
            layout, log_path, n_ratings, n_lines, made = _scale_repo(base, new_share)
        else:
            layout, log_path, n_ratings, n_lines = _repo(base, tables, new_share)
            made = {}
        with _MariaDB(base) as mysql:
            options = Options(source=f"file:{log_path}", release=False, layout=layout, mysql=mysql,
                              notify=Notify(**{**Notify.from_env().__dict__, "smtp_host": "", "slack_webhook": ""}),
                              limits=CheckLimits(min_new_ratings=1, max_unknown_share=0.01), rmse_gate=1.5)
            _reset_peak_rss()
            started = time.perf_counter()
            report = run_pipeline(options)
            total = time.perf_counter() - started
            peak_mb = _peak_rss_mb()
        if report.outcome != "versioned":
            raise RuntimeError(f"bench run {name} ended {report.outcome}: {report.reason}")
        steps = {s.name: s.seconds for s in report.steps}
        parts = report.step("version").details.get("timings", {})
        return {"steps": steps, "parts": parts, "total": total, "ratings": n_ratings, "lines": n_lines,
                "peak_mb": peak_mb, **made,
                "rmse": report.rmse, "data_mb": sum(f.stat().st_size for f in layout.data_dir.rglob("*")
                                                    if f.is_file()) / 1e6}


def _world_1m() -> Tables:
    from simulator.world import World

    world = World.generate(seed=3, n_users=6000, n_movies=3700)
    ratings, watches = world.history(n_ratings=1_000_000, seed=3)
    return Tables(ratings=ratings, watches=watches, users=world.users.copy(), movies=world.movies.copy())


def _ml100k() -> Tables:
    from simulator.datasets import movielens_100k

    return movielens_100k()


SIZES = {
    "ml100k": ("MovieLens-100k (20% as events)", _ml100k, 0.2),
    "world1m": ("1M-rating world (10% as events)", _world_1m, 0.1),
    "scale1m": ("1M users × 27k movies × 20M ratings (10% as events)", lambda: None, 0.1),
}


def run() -> str:
    logging.getLogger().setLevel(logging.WARNING)  # step lines would drown the tables
    wanted = [s for s in os.environ.get("BENCH_PIPELINE_SIZES", "ml100k,world1m").split(",") if s in SIZES]
    results = {}
    for key in wanted:
        title, make, share = SIZES[key]
        if key == "scale1m" and _scale_users() != 1_000_000:  # the quick run says what it measured
            title = f"{_scale_users():,} users × 27k movies × {20 * _scale_users():,} ratings (10% as events)"
        results[title] = _measure(key, make(), share)
    titles = list(results)
    rows = [[step, *(results[t]["steps"].get(step, float("nan")) for t in titles)] for step in STEP_ROWS]
    rows += [[f"  version: {part}", *(results[t]["parts"].get(part, float("nan")) for t in titles)]
             for part in VERSION_PARTS]
    rows.append(["total (incl. lock, report, cleanup)", *(results[t]["total"] for t in titles)])
    sizes = [["ratings after the run", *(results[t]["ratings"] for t in titles)],
             ["event lines collected", *(results[t]["lines"] for t in titles)],
             ["data/ size (MB, with event store)", *(results[t]["data_mb"] for t in titles)],
             ["RMSE (80/20, seed 42)", *(results[t]["rmse"] for t in titles)],
             ["peak RSS of the pipeline run (MiB)", *(results[t]["peak_mb"] for t in titles)],
             ["world written (s, not in the run)", *(results[t].get("world_s", float("nan")) for t in titles)]]
    return (render("Retraining pipeline: seconds per step of one run (file source, no release)",
                   ["step", *titles], rows,
                   note="evaluate fits two models (80/20 split, temporal split); train fits the bundle on all data")
            + "\n" + render("Pipeline benchmark data", ["", *titles], sizes))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--repo-from-world"]:
        print(json.dumps(_repo_from_world(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))))
    else:
        print(run())
