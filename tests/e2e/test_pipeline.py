"""`python -m auto_deployment run` end to end: real event log, MariaDB, DVC, git, SMTP and Slack receivers.

Each test gets a throwaway git + DVC repository whose `data/` lacks the small world's newest 20% of
ratings; the event log (`--source file:...`) brings them, with re-delivered and garbage lines.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from app.contracts.bundle import bundle_dir, problem
from app.contracts.tables import FILES, data_checksum
from app.settings import ROOT, MySQL
from auto_deployment.pipeline import EXIT_CHECKS, EXIT_FAILED, EXIT_GATE, EXIT_INTERRUPTED
from ops.services import environment as _environment
from tests.fixtures.mariadb import settings_env
from tests.fixtures.pipeline import PipelineRepo, git_init, tracking_rows
from tests.fixtures.receivers import MailBox, SlackInbox


def _notify_env(smtp: MailBox, slack: SlackInbox) -> dict[str, str]:
    return {"SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "MAIL_TO": "team@example.org",
            "SLACK_WEBHOOK_URL": slack.url, "NOTIFY_TIMEOUT_S": "5"}


def _report(repo: PipelineRepo, index: int = -1) -> dict:
    return json.loads(repo.reports()[index].read_text())


def _mail_text(smtp: MailBox) -> str:
    [message] = smtp.messages
    return message["Subject"] + "\n" + message.get_content()


def _assert_nothing_versioned(repo: PipelineRepo, data_before: str, db: MySQL | None = None) -> None:
    """No bundle, no .dvc file, no commit (here or on origin), data/ untouched, no tracking row."""
    assert not repo.models_dir.exists() or not any(repo.models_dir.iterdir())
    assert not (repo.repo / "data.dvc").exists()
    assert repo.commits() == ["initial"]
    assert repo.git("log", "--format=%s", "origin/main").splitlines() == ["initial"]
    assert data_checksum(repo.data_dir) == data_before
    assert not (repo.repo / "version.txt").exists()
    assert repo.git("status", "--porcelain", "--", "data.dvc", "models").strip() == ""
    if db is not None:
        assert tracking_rows(db) == []


def test_accepted_run_versions_data_and_model_and_tells_the_team(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release",
                    env={**settings_env(mysql_settings), **_notify_env(smtp_receiver, slack_receiver)})
    assert done.returncode == 0, done.stderr
    report = _report(repo)
    assert (report["outcome"], report["version"]) == ("versioned", 1)
    assert [s["name"] for s in report["steps"]] == [
        "collect", "prepare", "checks", "evaluate", "gate", "train", "version", "notify"]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in report["steps"])
    for step in ("collect", "prepare", "evaluate", "version"):  # progress is logged step by step
        assert f"step finished run={report['run_id']} step={step} status=ok" in done.stderr

    # data/ now holds the held-out ratings too (duplicates folded, garbage set aside)
    ratings = pd.read_csv(repo.data_dir / FILES["ratings"], dtype={"movie_id": str})
    assert len(ratings) == len(repo.base.ratings) + len(repo.held_out)
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    collect = report["steps"][0]["details"]
    assert sum(collect["rejected"].values()) >= 4 and collect["events"]["rate"] > len(repo.held_out)
    checksum = data_checksum(repo.data_dir)
    assert report["data_checksum"] == checksum

    # the bundle: verified, self-describing
    assert problem(bundle_dir(repo.models_dir, 1)) is None
    meta = json.loads((repo.models_dir / "1" / "metadata.json").read_text())
    assert meta["version"] == 1 and meta["data_checksum"] == checksum
    assert meta["metrics"]["rmse"] == pytest.approx(report["rmse"])

    # git: one commit naming version, data checksum and RMSE, pushed to origin; tree clean
    message = repo.git("log", "-1", "--format=%B")
    assert "version 1" in message and checksum in message and f"{report['rmse']:.4f}" in message
    committed = repo.git("show", "--name-only", "--format=", "HEAD").split()
    assert "data.dvc" in committed and "models/1.dvc" in committed
    assert repo.git("rev-parse", "HEAD") == repo.git("rev-parse", "origin/main")
    assert repo.git("status", "--porcelain", "--", "data.dvc", "models", ".gitignore").strip() == ""

    # DVC: the remote holds both outputs (status against the remote: nothing to push)
    assert any(repo.dvc_remote.rglob("*"))
    assert "in sync" in repo.dvc("status", "-c", "data.dvc", "models/1.dvc")

    # MySQL: the tracking row
    [row] = tracking_rows(mysql_settings)
    assert row["version_number"] == 1
    assert row["model_rmse"] == pytest.approx(report["rmse"])
    assert row["data_checksum"] == checksum
    assert row["train_size"] == len(ratings)
    assert json.loads(row["params"]) == meta["params"]
    assert row["data_creation"] is not None and row["trained_on"] is not None

    # the team is told: email and Slack, with version, RMSE, NDCG and data checksum
    text = _mail_text(smtp_receiver)
    assert "model version 1" in text and checksum in text and "RMSE" in text and "NDCG@20" in text
    [post] = slack_receiver.posts
    assert "model version 1" in post["text"] and checksum in post["text"]

    # version.txt names the *stable* version: without a release it does not move
    assert not (repo.repo / "version.txt").exists()


def test_gate_refusal_versions_nothing_and_says_why(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    before = data_checksum(repo.data_dir)
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", "--rmse-gate", "0.1",
                    env={**settings_env(mysql_settings), **_notify_env(smtp_receiver, slack_receiver)})
    assert done.returncode == EXIT_GATE, done.stderr
    report = _report(repo)
    assert (report["outcome"], report["failed_step"]) == ("refused", "gate")
    assert [s["name"] for s in report["steps"]][-2:] == ["gate", "notify"]
    _assert_nothing_versioned(repo, before, mysql_settings)
    text = _mail_text(smtp_receiver)
    assert "refused" in text and "gate" in text and f"{report['rmse']:.4f}" in text and "0.1" in text
    [post] = slack_receiver.posts
    assert "refused" in post["text"] and "gate" in post["text"]


def test_failed_data_check_stops_the_run_and_names_the_check(
    pipeline_repo: PipelineRepo, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    before = data_checksum(repo.data_dir)
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", "--min-new-ratings", "1000000",
                    env=_notify_env(smtp_receiver, slack_receiver))
    assert done.returncode == EXIT_CHECKS, done.stderr
    report = _report(repo)
    assert (report["outcome"], report["failed_step"]) == ("checks_failed", "checks")
    assert "evaluate" not in [s["name"] for s in report["steps"]]
    _assert_nothing_versioned(repo, before)
    text = _mail_text(smtp_receiver)
    assert "data checks" in text and "new_ratings" in text and "1000000 required" in text
    assert "new_ratings" in slack_receiver.posts[0]["text"]


def test_mysql_down_at_tracking_fails_cleanly_and_a_later_run_succeeds(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    before = data_checksum(repo.data_dir)
    notify = _notify_env(smtp_receiver, slack_receiver)
    # the fixture's environment points MySQL at a closed port
    down = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=notify)
    assert down.returncode == EXIT_FAILED, down.stderr
    report = _report(repo)
    assert (report["outcome"], report["failed_step"], report["version"]) == ("failed", "version", None)
    assert "tracking row not written" in report["reason"]
    assert "rolled back" in down.stderr
    _assert_nothing_versioned(repo, before, mysql_settings)
    text = _mail_text(smtp_receiver)
    assert "failed at step version" in text and "tracking row not written" in text

    # MySQL back: the next run versions the same data, under the number the failed run never used
    up = repo.run("--source", "none", "--no-release", env={**settings_env(mysql_settings), **notify})
    assert up.returncode == 0, up.stderr
    assert _report(repo)["version"] == 1
    assert [r["version_number"] for r in tracking_rows(mysql_settings)] == [1]
    assert repo.commits()[0].startswith("model version 1:")


def test_rerun_without_new_events_makes_no_new_version(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    env = {**settings_env(mysql_settings), **_notify_env(smtp_receiver, slack_receiver)}
    first = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=env)
    assert first.returncode == 0, first.stderr
    commits = repo.commits()
    # the same log delivered again: every line is a duplicate of what data/ already holds
    again = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=env)
    assert again.returncode == 0, again.stderr
    assert "no new data" in again.stderr
    report = _report(repo)
    assert (report["outcome"], report["version"]) == ("no_new_data", None)
    assert repo.commits() == commits
    assert sorted(p.name for p in repo.models_dir.iterdir() if p.is_dir()) == ["1"]
    assert len(tracking_rows(mysql_settings)) == 1
    assert len(smtp_receiver.messages) == 1 and len(slack_receiver.posts) == 1  # the first run's only


def test_unknown_model_parameter_fails_the_evaluate_step(pipeline_repo: PipelineRepo) -> None:
    before = data_checksum(pipeline_repo.data_dir)
    done = pipeline_repo.run("--source", f"file:{pipeline_repo.events_log}", "--no-release",
                             "--param", "no_such_knob=3")
    assert done.returncode == EXIT_FAILED
    report = _report(pipeline_repo)
    assert report["failed_step"] == "evaluate" and "no_such_knob" in report["reason"]
    _assert_nothing_versioned(pipeline_repo, before)


# --- with the release: the native stack ------------------------------------------------------------


class _Load:
    """Clients asking NGINX for recommendations until stopped (the canary needs traffic to be judged)."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.versions: list[tuple[float, int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, seed: int) -> None:
        rnd = random.Random(seed)
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    r = session.get(f"{self.url}/recommend/{rnd.randint(1, 500)}", timeout=5)
                    self.versions.append((time.time(), r.status_code, r.headers.get("X-Model-Version")))
                except requests.RequestException:
                    self.versions.append((time.time(), 0, None))
                self._stop.wait(0.02)

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.services
def test_accepted_run_is_released_by_the_canary_and_promoted(
    tmp_path: Path, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    from simulator.world import World
    from tests.fixtures.pipeline import DVC, event_lines, sh, write_log
    from tests.fixtures.stack import start_native_stack

    # the stack's own directory is the versioning repository (its run dir ignored), origin a bare repo
    base, origin = tmp_path / "stack", tmp_path / "origin.git"
    base.mkdir()
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    git_init(base, "pipeline test")
    (base / ".gitignore").write_text("/run/\n")
    sh([DVC, "init", "-q"], base, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    sh(["git", "add", "-A"], base)
    sh(["git", "commit", "-q", "-m", "initial"], base)
    sh(["git", "remote", "add", "origin", str(origin)], base)
    native = start_native_stack(base)  # default world data, model 1 (with its tracking row), version.txt = 1
    try:
        assert (base / "version.txt").read_text().strip() == "1"
        world = World.generate(seed=0)
        fresh, _ = world.history(n_ratings=3000, seed=4242)  # new ratings of the stack's own users and movies
        log = write_log(tmp_path / "events.log", event_lines(fresh))
        env = {**native.env, **_notify_env(smtp_receiver, slack_receiver), "MOVIEREC_REPO_DIR": str(base),
               "DVC_REMOTE": str(tmp_path / "dvc-remote"), "GIT_REMOTE": "origin", "RELEASE_MIN_REQUESTS": "20",
               # a 20 s window: judge the 5xx ratio against 5% (59 clean canary requests), not 1% (299)
               "RELEASE_MAX_ERROR_RATIO": "0.05",
               # and through shadow then the card's 20 % only, p99s compared on tens of answers (not 300)
               "RELEASE_STEPS": "shadow,20", "RELEASE_P99_MIN_REQUESTS": "20",
               "PIPELINE_MIN_NEW_RATINGS": "100"}
        with _Load(native.stack.nginx_url) as load:
            time.sleep(1.5)
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "auto_deployment", "run", "--source", f"file:{log}",
                                   "--observe", "20s"], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=900)
            finished = time.time()
            time.sleep(2.0)
        assert done.returncode == 0, done.stderr[-5000:]
        report = json.loads(sorted((base / "run" / "pipeline").glob("*.json"))[-1].read_text())
        assert (report["outcome"], report["version"]) == ("released", 2)
        release = next(s for s in report["steps"] if s["name"] == "release")["details"]
        assert release["outcome"] == "promoted" and release["figures"]["canary"]["requests"] >= 20

        # what clients saw: version 1, then both during the canary, then only version 2; never a failure
        failed = [(round(t - started, 2), status, v) for t, status, v in load.versions if status != 200]
        assert not failed, f"{len(failed)} of {len(load.versions)} failed (s after start, status): {failed[:20]}"
        assert {v for t, _, v in load.versions if t < started} == {"1"}
        assert {v for t, _, v in load.versions if started <= t <= finished} == {"1", "2"}
        assert {v for t, _, v in load.versions if t > finished + 1} == {"2"}

        # versioned, promoted, recorded and committed (version.txt only after the promotion) and pushed
        assert (base / "version.txt").read_text().strip() == "2"
        subjects = sh(["git", "log", "--format=%s", "origin/main"], base).splitlines()
        assert subjects[0] == "version 2 promoted to stable" and subjects[1].startswith("model version 2:")
        assert release["commit"] == sh(["git", "rev-parse", "HEAD"], base).strip()  # the promotion's own commit
        assert sh(["git", "status", "--porcelain", "--", "version.txt"], base).strip() == ""
        in_version_commit = subprocess.run(["git", "cat-file", "-e", "HEAD~1:version.txt"], cwd=base, check=False)
        assert in_version_commit.returncode != 0  # version.txt moves with the promotion, not with the version
        with _environment(native.env):
            db = MySQL.from_env()
        assert [r["version_number"] for r in tracking_rows(db)] == [1, 2]
        # one notice for one event: the run's, carrying the canary's figures (the release was asked for none)
        [mail] = smtp_receiver.messages
        assert "model version 2 promoted to stable" in mail["Subject"]
        assert "release: promoted" in mail.get_content() and "canary latency_ms:" in mail.get_content()
        [post] = slack_receiver.posts
        assert "model version 2 promoted to stable" in post["text"] and "canary requests:" in post["text"]
    finally:
        native.ops("down")


# --- from Kafka ------------------------------------------------------------------------------------


def _produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for line in lines:
        producer.produce(topic, line.encode())
        producer.poll(0)
    assert producer.flush(30) == 0


@pytest.mark.slow
@pytest.mark.services
def test_run_collects_the_stream_from_kafka_for_its_window(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL, kafka_broker: str,
) -> None:
    repo = pipeline_repo
    topic = f"movielog-{repo.root.name[-12:]}".replace("_", "-")
    lines = repo.events_log.read_text().splitlines()
    _produce(kafka_broker, topic, lines)
    env = {**settings_env(mysql_settings), "KAFKA_BOOTSTRAP": kafka_broker, "KAFKA_TOPIC": topic,
           "KAFKA_GROUP": f"pipeline-{topic}"}
    done = repo.run("--source", "kafka", "--collect", "8s", "--no-release", env=env)
    assert done.returncode == 0, done.stderr
    report = _report(repo)
    assert (report["outcome"], report["version"]) == ("versioned", 1)
    collect = report["steps"][0]
    assert collect["details"]["source"] == f"kafka:{topic}" and collect["details"]["lines"] == len(lines)
    assert 8 <= collect["seconds"] < 60  # the window, not until the topic ends
    ratings = pd.read_csv(repo.data_dir / FILES["ratings"], dtype={"movie_id": str})
    assert len(ratings) == len(repo.base.ratings) + len(repo.held_out)
    # offsets were committed: the next run's window brings nothing new, so no new version
    again = repo.run("--source", "kafka", "--collect", "3s", "--no-release", env=env)
    assert again.returncode == 0, again.stderr
    assert _report(repo)["outcome"] == "no_new_data"
    assert _report(repo)["steps"][0]["details"]["lines"] == 0


@pytest.mark.slow
@pytest.mark.services
def test_sigterm_ends_a_long_kafka_window_at_once_and_abandons_the_run(
    pipeline_repo: PipelineRepo, kafka_broker: str,
) -> None:
    repo = pipeline_repo
    env = {**repo.env, "KAFKA_BOOTSTRAP": kafka_broker, "KAFKA_TOPIC": "movielog-quiet", "KAFKA_GROUP": "quiet"}
    proc = subprocess.Popen([sys.executable, "-m", "auto_deployment", "run", "--source", "kafka", "--collect", "10m",
                             "--no-release"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not repo.reports() or not json.loads(repo.reports()[-1].read_text()).get("run_id"):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(3)  # well inside the 10 minute window
        signalled = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert time.monotonic() - signalled < 30
    report = _report(repo)
    assert report["outcome"] == "interrupted" and [s["name"] for s in report["steps"]] == ["collect"]
    assert not (repo.repo / "data.dvc").exists() and repo.commits() == ["initial"]
