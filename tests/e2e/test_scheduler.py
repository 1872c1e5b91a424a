"""The scheduler and the pipeline lock: periodic runs, one run at a time across processes, SIGTERM.

Runs here are refused by the RMSE gate (`--rmse-gate 0.1`) unless a test needs otherwise: a
refused run exercises collect → prepare → checks → evaluate → gate for real, needs no MySQL, and
shows that a failing run never stops the schedule.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.files import exclusive_lock
from app.settings import ROOT
from auto_deployment.pipeline import EXIT_GATE, EXIT_INTERRUPTED, EXIT_LOCKED, LOCK_NAME
from auto_deployment.scheduler import build_schedule, parse_every
from tests.fixtures.pipeline import PipelineRepo

REFUSE = ["--rmse-gate", "0.1", "--no-release"]


def _start(repo: PipelineRepo, command: str, *args: str, stdin: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "auto_deployment", command, *args], cwd=ROOT, env=repo.env,
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class LogWatch:
    """Collects a process's stderr lines in a thread so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines):
                return
            time.sleep(0.1)
        raise AssertionError("timed out; log so far:\n" + "\n".join(self.lines[-40:]))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


def _finished_reports(repo: PipelineRepo) -> list[dict]:
    out = []
    for path in repo.reports():
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        if report.get("state") == "finished":
            out.append(report)
    return out


@pytest.mark.parametrize(("text", "expected"), [("2d", (2, "days")), ("6h", (6, "hours")),
                                                 ("30m", (30, "minutes")), ("1s", (1, "seconds")),
                                                 ("45", (45, "seconds")), ("1.5h", (90, "minutes")),
                                                 ("2w", (14, "days")), ("24h", (1, "days"))])
def test_every_is_the_one_duration_grammar_in_schedule_units(text: str, expected: tuple[int, str]) -> None:
    assert parse_every(text) == expected


@pytest.mark.parametrize("text", ["", "0s", "-1d", "d", "0.5s", "1.5s", "500ms", "2 days"])
def test_every_refuses_what_it_cannot_schedule(text: str) -> None:
    with pytest.raises(ValueError):
        parse_every(text)


def test_days_are_scheduled_at_the_time_of_day() -> None:
    scheduler = build_schedule("2d", "03:00", lambda: None)
    assert (scheduler.next_run.hour, scheduler.next_run.minute) == (3, 0)
    assert 24 * 3600 < scheduler.idle_seconds <= 3 * 24 * 3600
    with pytest.raises(ValueError):
        build_schedule("1d", "25:00", lambda: None)


def test_scheduler_runs_again_after_a_refused_run_and_stops_on_sigterm(pipeline_repo: PipelineRepo) -> None:
    proc = _start(pipeline_repo, "schedule", "--every", "1s", "--source", f"file:{pipeline_repo.events_log}",
                  *REFUSE)
    watch = LogWatch(proc)
    try:
        watch.wait_for(lambda lines: sum("scheduled run finished" in line for line in lines) >= 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    log = watch.text()
    assert code == 0, log
    reports = _finished_reports(pipeline_repo)
    assert len(reports) >= 2
    assert {r["outcome"] for r in reports} == {"refused"}
    assert watch.count(f"exit_code={EXIT_GATE}") >= 2
    assert watch.count("scheduler: next run") >= 2  # logged after every run
    assert "scheduler stopped" in log
    assert not (pipeline_repo.repo / "data.dvc").exists()


def test_now_runs_once_and_exits_with_the_runs_exit_code(pipeline_repo: PipelineRepo) -> None:
    proc = _start(pipeline_repo, "schedule", "--now", "--source", f"file:{pipeline_repo.events_log}", *REFUSE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_GATE, err
    assert len(_finished_reports(pipeline_repo)) == 1
    assert "next run" not in err


def test_a_second_run_is_skipped_while_another_process_holds_the_lock(pipeline_repo: PipelineRepo) -> None:
    # first run: blocked collecting from a stdin that stays open, holding the lock meanwhile
    first = _start(pipeline_repo, "run", "--source", "stdin", *REFUSE, stdin=subprocess.PIPE)
    first_log = LogWatch(first)
    try:
        first_log.wait_for(lambda lines: any("ingest started" in line for line in lines))
        second = pipeline_repo.run("--source", f"file:{pipeline_repo.events_log}", *REFUSE)
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert "run skipped: the pipeline is already running" in second.stderr
        scheduled = _start(pipeline_repo, "schedule", "--now", "--source", f"file:{pipeline_repo.events_log}",
                           *REFUSE)
        _, err = scheduled.communicate(timeout=300)
        assert scheduled.returncode == EXIT_LOCKED
        assert "skipped: another run holds the lock" in err
        assert _finished_reports(pipeline_repo) == []
        first.stdin.write(pipeline_repo.events_log.read_text())
    finally:
        first.stdin.close()
        first.wait(timeout=300)
    assert first.returncode == EXIT_GATE, first_log.text()
    # the lock is free again: the next run goes through
    assert pipeline_repo.run("--source", "none", *REFUSE).returncode == EXIT_GATE


def test_the_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    code = ("import sys; from app.files import exclusive_lock, LockHeld\n"
            "try:\n    with exclusive_lock(sys.argv[1], 'pid=probe'): print('got it')\n"
            "except LockHeld as exc: print('busy', exc)\n")
    probe = [sys.executable, "-c", code, str(tmp_path / LOCK_NAME)]
    with exclusive_lock(tmp_path / LOCK_NAME, "pid=holder"):
        busy = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert busy.stdout.startswith("busy") and "pid=holder" in busy.stdout, busy.stderr
    free = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert free.stdout.strip() == "got it", free.stderr


def test_sigterm_during_a_run_abandons_it_cleanly(pipeline_repo: PipelineRepo) -> None:
    proc = _start(pipeline_repo, "schedule", "--now", "--keep-going", "--source", "stdin", "--no-release",
                  stdin=subprocess.PIPE)
    watch = LogWatch(proc)
    try:
        watch.wait_for(lambda lines: any("ingest started" in line for line in lines))
        proc.stdin.write(pipeline_repo.events_log.read_text())
        proc.stdin.flush()
        proc.send_signal(signal.SIGTERM)
        watch.wait_for(lambda lines: any("stop requested" in line for line in lines))
    finally:
        proc.stdin.close()  # the run's collect step ends here, then the run must stop
        code = proc.wait(timeout=300)
    log = watch.text()
    assert code == 0, log
    assert f"exit_code={EXIT_INTERRUPTED}" in log
    [report] = _finished_reports(pipeline_repo)
    assert report["outcome"] == "interrupted"
    assert [s["name"] for s in report["steps"]] == ["collect"]
    assert report["version"] is None
    assert not (pipeline_repo.repo / "data.dvc").exists()
    assert not pipeline_repo.models_dir.exists() or not any(pipeline_repo.models_dir.iterdir())
    assert pipeline_repo.commits() == ["initial"]
    assert "scheduled run starting" in log and log.count("scheduled run starting") == 1
