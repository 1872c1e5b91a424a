"""The release state machine with real slots: three Gunicorn inference servers sharing one run dir.

Prometheus is deliberately absent here (a closed port): these tests protect what happens when the
figures are missing, crash recovery, the lock and the refusals. The promote and latency-abort paths,
which need real figures, run against the whole native stack in test_release_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from app import store
from app.contracts import pointer
from app.contracts.topology import Topology
from app.settings import MySQL, Release
from app.store import RELEASE_COLUMNS
from auto_deployment.monitor import release_report
from auto_deployment.notices import Notifier
from auto_deployment.release.checks import Check, default_checks, judge
from auto_deployment.release.controller import Analysis, Controller, ReleaseRefused
from auto_deployment.release.deploy import NativeDeployer, StableVersion
from auto_deployment.release.metrics import Figures, NoData, Prometheus
from auto_deployment.release.recorder import MySQLRecorder
from auto_deployment.release.state import (
    ABORT,
    DEPLOY_CANARY,
    DONE,
    NOTIFY,
    OBSERVE,
    PROMOTE,
    RECORD,
    ReleaseLocked,
    ReleaseState,
    StateStore,
    release_lock,
)
from auto_deployment.release.steps import Progression, parse_steps
from tests.fixtures.pipeline import git_init, sh
from tests.fixtures.receivers import free_port

ROOT = Path(__file__).resolve().parents[2]
SLOTS = ("stable_1", "stable_2", "canary")


@dataclass
class Platform:
    """Three live slots, the files the controller reads and writes, and closed ports for absent services."""

    run_dir: Path
    models_dir: Path
    version_file: Path
    urls: dict[str, str]
    servers: dict
    dead_url: str
    dead_port: int

    def serving(self) -> dict[str, int | None]:
        deployer = NativeDeployer(self.run_dir, self.urls)
        return {slot: deployer.serving(slot) for slot in SLOTS}

    def env(self, notify_settings) -> dict[str, str]:
        """Environment of `python -m auto_deployment release` against these slots."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "RELEASE_", "MYSQL_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            MOVIEREC_RUN_DIR=str(self.run_dir),
            MOVIEREC_MODELS_DIR=str(self.models_dir),
            MOVIEREC_VERSION_FILE=str(self.version_file),
            RELEASE_SLOT_URLS=",".join(f"{slot}={url}" for slot, url in self.urls.items()),
            PROMETHEUS_URL=self.dead_url,
            MYSQL_PORT=str(self.dead_port),
            MOVIEREC_MYSQL_TIMEOUT_S="1",
            SMTP_HOST=notify_settings.smtp_host,
            SMTP_PORT=str(notify_settings.smtp_port),
            MAIL_TO=notify_settings.mail_to,
            SLACK_WEBHOOK_URL=notify_settings.slack_webhook,
            # one 20 % step analysed every 0.25 s; no data aborts after 2 held intervals past the step's time
            RELEASE_STEPS="20",
            RELEASE_INTERVAL_S="0.25",
            RELEASE_INCONCLUSIVE_LIMIT="2",
        )
        return env


@pytest.fixture(scope="module")
def slots(start_server_module, models_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("release-run")
    return {
        slot: start_server_module(slot=slot, models_root=models_root, version=1, run_dir=run_dir,
                                  workers=2 if slot == "canary" else 1)
        for slot in SLOTS
    }


@pytest.fixture
def platform(slots, models_root, tmp_path) -> Platform:
    """Every slot on version 1, version.txt = 1, no release state: the same start for each test."""
    any_server = next(iter(slots.values()))
    run_dir = any_server.run_dir
    urls = {slot: server.url for slot, server in slots.items()}
    deployer = NativeDeployer(run_dir, urls, timeout_s=60, poll_s=0.1, consecutive=3)
    for slot in SLOTS:
        if deployer.serving(slot) != 1 or deployer.current(slot) != 1:
            deployer.deploy(slot, 1)
    for leftover in (run_dir / "release").glob("*"):
        leftover.unlink()
    pointer.slot_pointer(run_dir, "stable").unlink(missing_ok=True)
    version_file = tmp_path / "version.txt"
    pointer.write_number(version_file, 1)
    port = free_port()
    return Platform(run_dir, models_root, version_file, urls, slots, f"http://127.0.0.1:{port}", port)


GATE = Release(observe_s=1.0, max_latency_ms=500, max_error_ratio=0.01, min_requests=1, runtime="native",
               slot_urls="", deploy_timeout_s=30)
PROGRESSION = Progression(parse_steps("20"), interval_s=0.25, inconclusive_limit=2)


def controller(platform: Platform, notify_settings, observe_s: float = 1.0, mysql: MySQL | None = None,
               notify: bool = True, **kwargs) -> Controller:
    """Real collaborators; Prometheus and (unless `mysql` is given) MySQL on closed ports."""
    topology = Topology()
    deployer = NativeDeployer(platform.run_dir, platform.urls, timeout_s=30, poll_s=0.1, consecutive=3)
    if mysql is None:
        mysql = dataclasses.replace(MySQL.from_env(), port=platform.dead_port, connect_timeout_s=1.0)
    return Controller(
        topology=topology, deployer=deployer, metrics=Prometheus(platform.dead_url, topology, timeout_s=1),
        recorder=MySQLRecorder(mysql), stable=StableVersion(platform.version_file, platform.run_dir),
        models_dir=platform.models_dir, run_dir=platform.run_dir,
        analysis=Analysis(observe_s, default_checks(GATE), PROGRESSION),
        notifier=Notifier(notify_settings) if notify else None, poll_s=0.1, **kwargs,
    )


def _states(history: list[list[str]]) -> list[str]:
    return [state for state, _at in history]


def test_prometheus_unreachable_aborts_rolls_back_keeps_the_row_and_tells_the_team(
    platform, notify_settings, smtp_receiver, slack_receiver
):
    result = controller(platform, notify_settings).run(2)

    assert result.outcome == "aborted" and result.exit_code == 1
    assert "no data from Prometheus" in result.reason and "unreachable" in result.reason
    assert result.recorded is False
    assert platform.serving() == {"stable_1": 1, "stable_2": 1, "canary": 1}
    assert pointer.read_number(platform.version_file) == 1
    state = StateStore(platform.run_dir).load()
    assert _states(state.history) == [DEPLOY_CANARY, OBSERVE, ABORT, RECORD, NOTIFY, DONE]
    assert "inconclusive for 2 interval(s) past the step's time" in result.reason  # held, then aborted
    # every interval is kept for the release report, which is written when the release ends
    assert state.series and {p["verdict"] for p in state.series} == {"inconclusive"}
    assert all(p["step"] == "20%" and "no_data" in p["canary"] for p in state.series)
    stem = release_report.file_stem(state.to_dict())
    report = platform.run_dir / "pipeline" / "releases" / f"{stem}.html"
    assert '<p data-key="outcome" class="bad">aborted</p>' in report.read_text()
    # MySQL is down: the row waits in the state file for the next release
    [row] = state.pending_records
    assert row["candidate_version"] == 2 and row["previous_version"] == 1 and row["outcome"] == "aborted"
    assert "no data" in row["reason"]
    assert set(row) <= set(RELEASE_COLUMNS)  # the provenance schema takes it as it is
    [mail] = smtp_receiver.messages
    assert "version 2" in mail["Subject"] and "aborted" in mail["Subject"]
    assert "no data from Prometheus" in mail.get_content()
    [post] = slack_receiver.posts
    assert "aborted" in post["text"]
    assert sorted(result.notified) == ["email", "slack"]


def _release_rows(settings: MySQL) -> list[dict]:
    conn = store.connect(settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM releases ORDER BY id")
            columns = [d[0] for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def test_rows_kept_while_mysql_is_down_are_written_by_the_next_release(
    platform, notify_settings, mariadb, mysql_settings
):
    mariadb.stop()
    try:
        first = controller(platform, notify_settings, observe_s=0.5, mysql=mysql_settings).run(2)
    finally:
        mariadb.start()
    assert first.outcome == "aborted" and first.recorded is False
    assert len(StateStore(platform.run_dir).load().pending_records) == 1

    second = controller(platform, notify_settings, observe_s=0.5, mysql=mysql_settings).run(2)

    assert second.recorded is True
    assert StateStore(platform.run_dir).load().pending_records == []
    rows = _release_rows(mysql_settings)
    assert [(r["candidate_version"], r["previous_version"], r["outcome"]) for r in rows] == [(2, 1, "aborted")] * 2
    assert [r["reason"] for r in rows] == [first.reason, second.reason]
    assert rows[0]["started_at"] <= rows[0]["ended_at"] <= rows[1]["started_at"]
    assert rows[0]["canary_latency_ms"] is None  # no figures: Prometheus was absent


def _figures(**values: float) -> Figures:
    return Figures({"latency_ms": 12.0, "p99_ms": 20.0, "error_ratio": 0.0, "requests": 300.0, "errors": 0.0,
                    **values}, "30s")


def test_default_checks_name_every_failed_criterion():
    checks = default_checks(dataclasses.replace(GATE, min_requests=20))
    stable = _figures(latency_ms=10.0)
    ok = judge(checks, _figures(), stable)
    assert ok.passed and ok.reason == (
        "average latency 12.0 ms < 500 ms, average latency vs stable 12.00 ms <= 1.5 × stable 10.00 ms + 5 ms, "
        "p99 latency vs stable 20.00 ms <= 2 × stable 20.00 ms + 10 ms, "
        "5xx ratio 0.0000 <= 0.01 (95% upper bound 0.0099 over 300 requests)")
    slow = judge(checks, _figures(latency_ms=700.0), stable)
    assert not slow.passed and slow.reason.startswith("average latency 700.0 ms >= 500 ms; ")
    assert [(r.name, r.status) for r in slow.results] == [
        ("latency", "failed"), ("latency_vs_stable", "failed"), ("p99_vs_stable", "passed"), ("error_ratio", "passed")]
    bad = judge(checks, _figures(latency_ms=500.0, error_ratio=0.2, requests=5.0, errors=1.0), stable)
    assert not bad.passed and "average latency 500.0 ms >= 500 ms" in bad.reason  # few, but failing: a failure
    assert "5xx ratio 0.2000 > 0.01" in bad.reason
    few = judge(checks, _figures(requests=5.0), stable)  # few and within every limit: never a pass
    assert not few.passed and "too few canary requests for average latency: 5 < 20" in few.reason
    none = judge(checks, NoData("Prometheus at x unreachable"))
    assert (none.passed, none.reason) == (False, "no data from Prometheus: Prometheus at x unreachable")


def test_a_check_is_one_data_entry_with_a_threshold_or_a_comparison_with_stable():
    p99 = Check("p99", metric="p99_ms", op="<=", vs_stable=1.5, min_requests=300, label="p99 latency", unit=" ms")
    canary = _figures(p99_ms=40.0)
    passed = p99.evaluate(canary, _figures(p99_ms=30.0))
    assert (passed.status, passed.limit, passed.text) == ("passed", 45.0, "p99 latency 40.0 ms <= 1.5 × stable 30.0 ms")
    failed = p99.evaluate(canary, _figures(p99_ms=20.0))
    assert (failed.status, failed.text) == ("failed", "p99 latency 40.0 ms > 1.5 × stable 20.0 ms")
    # too small a sample, or nothing to compare with, is inconclusive: never a pass
    assert p99.evaluate(_figures(p99_ms=1.0, requests=299.0), _figures(p99_ms=30.0)).status == "inconclusive"
    assert p99.evaluate(canary, NoData("stable down")).status == "inconclusive"
    verdict = judge([p99], canary, NoData("stable down"))
    assert not verdict.passed and "no stable figure to compare (stable down)" in verdict.reason
    with pytest.raises(ValueError, match="exactly one of threshold or vs_stable"):
        Check("x", metric="requests", op=">=")
    with pytest.raises(ValueError, match="operator"):
        Check("x", metric="requests", op="=", threshold=1)


def test_candidate_without_a_bundle_is_refused_before_anything_moves(platform, notify_settings):
    with pytest.raises(ReleaseRefused, match="candidate 7 cannot be served"):
        controller(platform, notify_settings).run(7)
    assert platform.serving() == {"stable_1": 1, "stable_2": 1, "canary": 1}
    assert StateStore(platform.run_dir).load() is None


def test_releasing_the_stable_version_is_a_noop(platform, notify_settings, smtp_receiver):
    result = controller(platform, notify_settings).run(1)
    assert result.outcome == "noop" and result.exit_code == 0
    assert smtp_receiver.messages == []


def test_interrupted_promotion_is_finished_by_the_next_run(platform, notify_settings, smtp_receiver):
    # a release that passed the gate and died after moving stable_1 only
    deployer = NativeDeployer(platform.run_dir, platform.urls, poll_s=0.1, consecutive=3)
    deployer.deploy("canary", 2)
    deployer.deploy("stable_1", 2)
    figures = {"canary": {"latency_ms": 9.0, "error_ratio": 0.0, "requests": 120.0, "errors": 0.0}}
    crashed = ReleaseState(candidate=2, previous=1, state=PROMOTE, promoted=["stable_1"], outcome="promoted",
                           reason="gate passed", figures=figures, history=[[PROMOTE, "earlier"]], pid=999999)
    StateStore(platform.run_dir).save(crashed)

    result = controller(platform, notify_settings).run(2)

    assert result.recovered["outcome"] == "promoted"
    assert result.outcome == "noop"  # version 2 is stable now: the new request has nothing left to do
    assert platform.serving() == {"stable_1": 2, "stable_2": 2, "canary": 2}
    assert pointer.read_number(platform.version_file) == 2
    assert pointer.read_slot(platform.run_dir, "stable") == 2
    assert _states(StateStore(platform.run_dir).load().history)[-4:] == [PROMOTE, RECORD, NOTIFY, DONE]
    assert "promoted" in smtp_receiver.messages[0]["Subject"]


def test_a_release_for_a_caller_that_tells_the_team_itself_sends_no_notice(
    platform, notify_settings, smtp_receiver, slack_receiver
):
    result = controller(platform, notify_settings, notify=False).run(2)

    assert result.outcome == "aborted" and result.notified == []
    assert smtp_receiver.messages == [] and slack_receiver.posts == []
    assert _states(StateStore(platform.run_dir).load().history)[-3:] == [RECORD, NOTIFY, DONE]


def _git_repo(path: Path) -> Path:
    path.mkdir()
    git_init(path, "release test")
    (path / "README").write_text("throwaway repository of a release test\n")
    sh(["git", "add", "-A"], path)
    sh(["git", "commit", "-q", "-m", "initial"], path)
    return path


def test_cli_promotion_commits_version_txt_in_the_repository(platform, notify_settings, smtp_receiver, tmp_path):
    # the promotion is finished by the command line (a promotion that died after moving stable_1): the
    # version file lives in a git repository (MOVIEREC_REPO_DIR), so the promotion commits it itself
    repo = _git_repo(tmp_path / "repo")
    version_file = repo / "version.txt"
    pointer.write_number(version_file, 1)
    sh(["git", "add", "version.txt"], repo)
    sh(["git", "commit", "-q", "-m", "version 1"], repo)
    deployer = NativeDeployer(platform.run_dir, platform.urls, poll_s=0.1, consecutive=3)
    deployer.deploy("canary", 2)
    deployer.deploy("stable_1", 2)
    crashed = ReleaseState(candidate=2, previous=1, state=PROMOTE, promoted=["stable_1"], outcome="promoted",
                           reason="gate passed", history=[[PROMOTE, "earlier"]], pid=999999)
    StateStore(platform.run_dir).save(crashed)
    env = {**platform.env(notify_settings), "MOVIEREC_VERSION_FILE": str(version_file),
           "MOVIEREC_REPO_DIR": str(repo), "GIT_REMOTE": ""}

    done = subprocess.run([sys.executable, "-m", "auto_deployment", "release", "--candidate", "2", "--observe", "1s"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["recovered"]["outcome"] == "promoted" and report["outcome"] == "noop"
    assert platform.serving() == {"stable_1": 2, "stable_2": 2, "canary": 2}
    assert version_file.read_text() == "2\n"
    assert sh(["git", "log", "--format=%s"], repo).splitlines()[0] == "version 2 promoted to stable"
    assert sh(["git", "status", "--porcelain"], repo).strip() == ""  # nothing left uncommitted
    assert report["recovered"]["commit"] == sh(["git", "rev-parse", "HEAD"], repo).strip()
    assert "commit: " in smtp_receiver.messages[0].get_content()


def test_second_release_is_refused_while_the_lock_is_held(platform, notify_settings):
    with release_lock(platform.run_dir, candidate=2):
        with pytest.raises(ReleaseLocked, match="another release is running"), release_lock(platform.run_dir, 2):
            pass
        done = subprocess.run(
            [sys.executable, "-m", "auto_deployment", "release", "--candidate", "2", "--observe", "1s"],
            cwd=ROOT, env=platform.env(notify_settings), capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 3
    assert "another release is running" in done.stderr and f"pid={os.getpid()}" in done.stderr
    assert platform.serving()["canary"] == 1
    with release_lock(platform.run_dir, candidate=2):  # released again when its holder is done
        pass


def _start_cli(platform: Platform, notify_settings, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "auto_deployment", "release", *args],
        cwd=ROOT, env=platform.env(notify_settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_state(platform: Platform, state: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        current = StateStore(platform.run_dir).load()
        if current is not None and current.state == state:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {state} after {timeout}s (state: {current and current.state})"
        time.sleep(0.1)


def test_killed_release_is_detected_and_repaired_by_the_next_run(platform, notify_settings, smtp_receiver):
    proc = _start_cli(platform, notify_settings, "--candidate", "2", "--observe", "60s")
    _wait_state(platform, OBSERVE, proc)
    assert platform.serving()["canary"] == 2
    proc.send_signal(signal.SIGKILL)  # a crash: no handler runs
    proc.communicate(timeout=10)

    again = _start_cli(platform, notify_settings, "--candidate", "2", "--observe", "1s")
    out, err = again.communicate(timeout=120)

    assert again.returncode == 1, err  # the new request ran too, and Prometheus is absent: aborted
    report = json.loads(out)
    assert report["recovered"]["outcome"] == "failed"
    assert "interrupted during OBSERVE" in report["recovered"]["reason"]
    assert report["outcome"] == "aborted"
    assert "repairing an interrupted release" in err
    assert platform.serving() == {"stable_1": 1, "stable_2": 1, "canary": 1}
    subjects = [m["Subject"] for m in smtp_receiver.messages]
    assert any("FAILED" in s for s in subjects) and any("aborted" in s for s in subjects)
    pending = StateStore(platform.run_dir).load().pending_records
    assert [r["outcome"] for r in pending] == ["failed", "aborted"]


def test_sigterm_during_observation_rolls_the_canary_back_at_once(platform, notify_settings):
    proc = _start_cli(platform, notify_settings, "--candidate", "2", "--observe", "10m")
    _wait_state(platform, OBSERVE, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    report = json.loads(out)
    assert report["outcome"] == "failed" and "interrupted during OBSERVE" in report["reason"]
    assert platform.serving()["canary"] == 1
    assert StateStore(platform.run_dir).load().state == DONE


def test_cli_refuses_an_unknown_candidate_with_exit_code_2(platform, notify_settings):
    done = subprocess.run(
        [sys.executable, "-m", "auto_deployment", "release", "--candidate", "42", "--observe", "1s"],
        cwd=ROOT, env=platform.env(notify_settings), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "candidate 42 cannot be served" in done.stderr
