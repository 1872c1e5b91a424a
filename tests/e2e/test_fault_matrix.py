"""The fault matrix (`python -m bench faults`) kept from rotting: two of its faults, run by the bench itself.

The bench starts a stack of its own (free ports, private directories) because the faults kill and poison
parts of it; it runs as a subprocess (tests do not import bench/: import-linter layers) and hands its
rows back as JSON (``BENCH_FAULT_JSON``). This checks that what it measures still means what the README
says: a worker SIGKILLed behind NGINX leaves the stack recovered, a poison spool line is dead-lettered
and counted while the good rows around it reach MySQL, and no answer is ever stored twice. Failed-request
counts are the bench's to report, not asserted here: on a shared 2-core machine a stall of every server
past NGINX's 300 ms read timeout fails requests with no fault at all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.contracts.bundle import bundle_dir, problem
from app.contracts.pointer import read_number
from app.settings import ROOT, MySQL
from tests.fixtures.mariadb import settings_env
from tests.fixtures.pipeline import PipelineRepo, tracking_rows

pytestmark = [pytest.mark.services, pytest.mark.slow]

RATE = 40


def test_two_faults_under_load_through_nginx(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "BENCH_", "MYSQL_"))}
    env.update(BENCH_FAULT_QUICK="1", BENCH_FAULTS="kill-worker,poison-line", BENCH_FAULT_RATE=str(RATE),
               BENCH_FAULT_JSON=str(out), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench", "faults"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.is_file(), done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["plan"]["hold_s"] == 8.0 and result["plan"]["only"] == ["kill-worker", "poison-line"]
    kill, poison = result["rows"]
    assert kill["title"] == "SIGKILL one stable worker" and poison["title"].startswith("a poison line")
    for row in result["rows"]:
        assert row["requests"] >= RATE * 3, row  # the load ran through the whole fault
        assert row["failed"] + row["failed_outside"] <= row["requests"]
        assert row["duplicated"] == 0, row
        assert row["recover_s"] == row["recover_s"] and row["recover_s"] < 30, row  # not NaN: it recovered
        assert "NOT healthy afterwards" not in row["seen"], row
    # the killed worker loses at most the rows still in its memory queue, never more than it answered
    assert kill["lost"] <= kill["requests"] // 2
    assert poison["lost"] == 0
    assert "rows dead_lettered +1" in poison["seen"]
    assert "its good rows in MySQL: 2 of 2" in poison["detail"]
    assert "SIGKILL one stable worker" in done.stdout and "rows dead_lettered +1" in done.stdout  # the table


def test_release_collection_and_pipeline_faults_under_load(tmp_path: Path) -> None:
    """The three faults of the release and the pipeline, reduced (quick mode), on one stack of the bench's own."""
    out = tmp_path / "rows.json"
    names = "prometheus-release,kafka-collect,kill-pipeline"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "BENCH_", "MYSQL_", "KAFKA_"))}
    env.update(BENCH_FAULT_QUICK="1", BENCH_FAULT_RATE=str(RATE), BENCH_FAULT_JSON=str(out), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench", "faults", "--only", names], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["plan"]["only"] == names.split(",")
    release, kafka, pipeline = result["rows"]
    for row in result["rows"]:
        assert row["requests"] >= RATE * 3, row  # the load ran through the whole fault
        assert row["duplicated"] == 0, row
        assert "NOT healthy afterwards" not in row["seen"], row
    # Prometheus stopped while the canary is observed: never a pass; the release ends aborted, nothing promoted
    assert "in OBSERVE" in release["detail"] and "Prometheus stopped (supervisorctl exit 0)" in release["detail"]
    assert release["outcome"].startswith("not promoted: release aborted (exit 1)"), release["outcome"]
    assert "Prometheus" in release["outcome"]  # the reason names it
    slots = re.findall(r"(\w+) v(\d+)", release["outcome"].split("slots serve ")[1].split(";")[0])
    stable = re.search(r"version.txt v(\d+)", release["outcome"]).group(1)
    assert slots and {v for _slot, v in slots} == {stable}, release["outcome"]  # the canary is back on stable
    assert release["recover_s"] == release["recover_s"], release  # Prometheus scraped the canary again
    # the broker stopped under a collection: the collection completes and every acknowledged line arrives once
    assert kafka["outcome"].startswith("collection completed (exit 0"), kafka["outcome"]
    assert "failed 0, undelivered 0" in kafka["outcome"], kafka["outcome"]
    # what the window did not reach stays in the topic: a second collection finds it (at least once, never lost)
    assert "not collected in the window 0," in kafka["outcome"] or "then found 0 missing" in kafka["outcome"], kafka
    assert "'kafka broker unreachable, waiting' x0" not in kafka["outcome"], kafka["outcome"]  # the operator is told
    published = int(re.search(r"acknowledged (\d+)", kafka["outcome"]).group(1))
    assert published >= 8 * 200 and f"= {published} distinct" in kafka["outcome"], kafka["outcome"]
    # SIGKILLed mid-version: the half version is undone by the next run, which makes the version whole
    assert "without" in pipeline["outcome"].split("; next run")[0], pipeline["outcome"]  # the kill left a half
    assert "next run exit 0" in pipeline["outcome"] and "half versions: none" in pipeline["outcome"], pipeline
    assert re.search(r"repair: interrupted version \d+ undone", pipeline["outcome"]), pipeline["outcome"]
    assert "Prometheus stopped during a release" in done.stdout and "outcome:" in done.stdout  # the table


# --- the pipeline SIGKILLed in the middle of its version step (issue 12) --------------------------------------


def _half_versions(repo: PipelineRepo, db: MySQL) -> list[str]:
    """Every trace of a version that is not whole: bundle, `.dvc` file, tracking row and commit go together."""
    rows = {int(r["version_number"]) for r in tracking_rows(db)}
    bundles = {int(p.name) for p in repo.models_dir.glob("*") if p.name.isdigit()} if repo.models_dir.is_dir() \
        else set()
    dvc_files = {int(p.name[:-4]) for p in repo.models_dir.glob("*.dvc")} if repo.models_dir.is_dir() else set()
    committed = {int(s.split()[2].rstrip(":")) for s in repo.commits() if s.startswith("model version ")}
    problems = []
    for n in sorted(rows | bundles | dvc_files | committed):
        have = {"bundle": n in bundles, ".dvc": n in dvc_files, "tracking row": n in rows, "commit": n in committed}
        if not all(have.values()):
            problems.append(f"version {n}: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in have.items()))
        elif problem(bundle_dir(repo.models_dir, n)) is not None:
            problems.append(f"version {n}: bundle does not verify: {problem(bundle_dir(repo.models_dir, n))}")
    return problems


def test_pipeline_killed_in_its_version_step_leaves_no_half_version_and_the_next_run_succeeds(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL
) -> None:
    repo = pipeline_repo
    env = {**repo.env, **settings_env(mysql_settings)}
    data_before = {p.name: p.read_bytes() for p in repo.data_dir.iterdir() if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "auto_deployment", "run", "--source", f"file:{repo.events_log}",
                             "--no-release"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (repo.models_dir / "1").is_dir():  # the bundle is moved in: DVC, tracking and git are still to come
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # killed mid-version, not finished

    done = repo.run("--source", "none", "--no-release", env=settings_env(mysql_settings))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _half_versions(repo, mysql_settings) == []
    assert "interrupted version 1 undone" in done.stderr  # the repair says what it found and did
    assert [int(r["version_number"]) for r in tracking_rows(mysql_settings)] == [1]
    assert repo.commits()[0].startswith("model version 1:")
    assert {p.name: p.read_bytes() for p in repo.data_dir.iterdir() if p.is_file()} != data_before  # v1's data
    assert read_number(repo.repo / "version.txt") is None  # never released: version.txt untouched
