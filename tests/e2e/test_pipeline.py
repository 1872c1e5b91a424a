"""`python -m auto_deployment run` end to end: real event log, MariaDB, DVC, git, SMTP and Slack receivers.

Each test gets a throwaway git + DVC repository whose `data/` lacks the small world's newest 20% of
ratings; the event log (`--source file:...`) brings them, with re-delivered and garbage lines.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from app.settings import MySQL
from auto_deployment.data import FILES, data_checksum
from auto_deployment.pipeline import EXIT_CHECKS, EXIT_FAILED, EXIT_GATE
from auto_deployment.versions import bundle_problem
from tests.fixtures.pipeline import PipelineRepo, mysql_env, tracking_rows
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
    pipeline_repo: PipelineRepo, pipeline_db: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release",
                    env={**mysql_env(pipeline_db), **_notify_env(smtp_receiver, slack_receiver)})
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
    assert bundle_problem(repo.models_dir, 1) is None
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
    [row] = tracking_rows(pipeline_db)
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
    pipeline_repo: PipelineRepo, pipeline_db: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    before = data_checksum(repo.data_dir)
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", "--rmse-gate", "0.1",
                    env={**mysql_env(pipeline_db), **_notify_env(smtp_receiver, slack_receiver)})
    assert done.returncode == EXIT_GATE, done.stderr
    report = _report(repo)
    assert (report["outcome"], report["failed_step"]) == ("refused", "gate")
    assert [s["name"] for s in report["steps"]][-2:] == ["gate", "notify"]
    _assert_nothing_versioned(repo, before, pipeline_db)
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
    pipeline_repo: PipelineRepo, pipeline_db: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
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
    _assert_nothing_versioned(repo, before, pipeline_db)
    text = _mail_text(smtp_receiver)
    assert "failed at step version" in text and "tracking row not written" in text

    # MySQL back: the next run versions the same data, under the number the failed run never used
    up = repo.run("--source", "none", "--no-release", env={**mysql_env(pipeline_db), **notify})
    assert up.returncode == 0, up.stderr
    assert _report(repo)["version"] == 1
    assert [r["version_number"] for r in tracking_rows(pipeline_db)] == [1]
    assert repo.commits()[0].startswith("model version 1:")


def test_rerun_without_new_events_makes_no_new_version(
    pipeline_repo: PipelineRepo, pipeline_db: MySQL, smtp_receiver: MailBox, slack_receiver: SlackInbox,
) -> None:
    repo = pipeline_repo
    env = {**mysql_env(pipeline_db), **_notify_env(smtp_receiver, slack_receiver)}
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
    assert len(tracking_rows(pipeline_db)) == 1
    assert len(smtp_receiver.messages) == 1 and len(slack_receiver.posts) == 1  # the first run's only


def test_unknown_model_parameter_fails_the_evaluate_step(pipeline_repo: PipelineRepo) -> None:
    before = data_checksum(pipeline_repo.data_dir)
    done = pipeline_repo.run("--source", f"file:{pipeline_repo.events_log}", "--no-release",
                             "--param", "no_such_knob=3")
    assert done.returncode == EXIT_FAILED
    report = _report(pipeline_repo)
    assert report["failed_step"] == "evaluate" and "no_such_knob" in report["reason"]
    _assert_nothing_versioned(pipeline_repo, before)
