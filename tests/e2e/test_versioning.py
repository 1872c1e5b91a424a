"""Versions as DVC + git + MySQL keep them: old data comes back byte for byte, numbers never repeat,
a failure late in versioning leaves nothing behind, and only the version's files are committed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app import store
from app.contracts.bundle import bundle_dir, problem
from app.contracts.pointer import write_stable
from app.settings import MySQL
from auto_deployment.model.registry import Layout, commit_promotion, next_version
from auto_deployment.pipeline import EXIT_FAILED
from tests.fixtures.mariadb import settings_env
from tests.fixtures.pipeline import DVC, PipelineRepo, event_lines, sh, tracking_rows, write_log


def _tree(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path → bytes)."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _layout(repo: PipelineRepo) -> Layout:
    return Layout(root=repo.repo.resolve(), data_dir=repo.data_dir.resolve(), models_dir=repo.models_dir.resolve(),
                  version_file=(repo.repo / "version.txt").resolve(), run_dir=repo.run_dir.resolve(),
                  dvc_remote=str(repo.dvc_remote), git_remote="origin")


def _two_versions(repo: PipelineRepo, db: MySQL) -> tuple[dict[str, bytes], str]:
    """Version 1 from the first half of the held-out ratings, version 2 from the rest; returns v1's data/."""
    half = len(repo.held_out) // 2
    first = write_log(repo.root / "first.log", event_lines(repo.held_out.iloc[:half]))
    second = write_log(repo.root / "second.log", event_lines(repo.held_out.iloc[half:]))
    env = settings_env(db)
    done = repo.run("--source", f"file:{first}", "--no-release", env=env)
    assert done.returncode == 0, done.stderr
    v1_data, v1_commit = _tree(repo.data_dir), repo.git("rev-parse", "HEAD").strip()
    done = repo.run("--source", f"file:{second}", "--no-release", env=env)
    assert done.returncode == 0, done.stderr
    assert [r["version_number"] for r in tracking_rows(db)] == [1, 2]
    assert _tree(repo.data_dir) != v1_data
    return v1_data, v1_commit


def test_dvc_checkout_of_an_old_version_restores_its_data_byte_for_byte(
    pipeline_repo: PipelineRepo, mysql_settings: MySQL,
) -> None:
    repo = pipeline_repo
    v1_data, v1_commit = _two_versions(repo, mysql_settings)

    # in the working repository: the old data.dvc from git, then dvc checkout
    repo.git("checkout", v1_commit, "--", "data.dvc")
    repo.dvc("checkout", "-q", "data.dvc")
    assert _tree(repo.data_dir) == v1_data

    # in a fresh clone, from the remotes only (origin + the DVC remote named in the committed .dvc/config)
    clone = repo.root / "clone"
    sh(["git", "clone", "-q", str(repo.origin), str(clone)], repo.root)
    sh(["git", "checkout", "-q", v1_commit], clone)
    sh([DVC, "pull", "-q", "data.dvc", "models/1.dvc"], clone)
    assert _tree(clone / "data") == v1_data
    assert problem(bundle_dir(clone / "models", 1)) is None
    assert json.loads((clone / "models" / "1" / "metadata.json").read_text())["version"] == 1


def test_version_numbers_are_never_reused(pipeline_repo: PipelineRepo, mysql_settings: MySQL) -> None:
    layout = _layout(pipeline_repo)
    assert next_version(layout, mysql_settings) == 1
    (pipeline_repo.repo / "version.txt").write_text("5\n")
    assert next_version(layout, mysql_settings) == 6
    pipeline_repo.models_dir.mkdir()
    (pipeline_repo.models_dir / "7.dvc").write_text("outs: []\n")  # a version whose bundle is not checked out
    assert next_version(layout, mysql_settings) == 8
    store.record_tracking(mysql_settings, {"version_number": 9, "trained_on": datetime.now(UTC), "model_rmse": 0.9})
    assert next_version(layout, mysql_settings) == 10
    # a run then takes 10, and the row of 9 is left as it was
    done = pipeline_repo.run("--source", f"file:{pipeline_repo.events_log}", "--no-release",
                             env=settings_env(mysql_settings))
    assert done.returncode == 0, done.stderr
    rows = {r["version_number"]: r for r in tracking_rows(mysql_settings)}
    assert sorted(rows) == [9, 10]
    assert rows[9]["data_checksum"] is None and rows[9]["model_rmse"] == pytest.approx(0.9)
    assert problem(bundle_dir(pipeline_repo.models_dir, 10)) is None


def test_failed_git_push_rolls_back_the_whole_version(pipeline_repo: PipelineRepo, mysql_settings: MySQL) -> None:
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release",
                    env={**settings_env(mysql_settings), "GIT_REMOTE": "no-such-remote"})
    assert done.returncode == EXIT_FAILED
    assert "no-such-remote" in json.loads(repo.reports()[-1].read_text())["reason"]
    assert "rolled back" in done.stderr and 'step="tracking row"' in done.stderr
    assert tracking_rows(mysql_settings) == []  # the row written before the push is gone again
    assert repo.commits() == ["initial"]
    assert not (repo.repo / "data.dvc").exists() and not (repo.models_dir / "1").exists()


def test_version_commit_holds_only_the_versions_files(pipeline_repo: PipelineRepo, mysql_settings: MySQL) -> None:
    repo = pipeline_repo
    (repo.repo / "README").write_text("someone's unfinished edit\n")
    repo.git("add", "README")  # staged work of a person in the same repository
    (repo.repo / "notes.txt").write_text("untracked\n")
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=settings_env(mysql_settings))
    assert done.returncode == 0, done.stderr
    committed = set(repo.git("show", "--name-only", "--format=", "HEAD").split())
    assert committed <= {"data.dvc", "models/1.dvc", ".gitignore", "models/.gitignore", ".dvc/config"}
    assert {"data.dvc", "models/1.dvc"} <= committed
    status = repo.git("status", "--porcelain").splitlines()
    assert "M  README" in status and "?? notes.txt" in status


def test_promotion_commits_version_txt(pipeline_repo: PipelineRepo, mysql_settings: MySQL) -> None:
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=settings_env(mysql_settings))
    assert done.returncode == 0, done.stderr
    layout = _layout(repo)
    assert commit_promotion(layout, 1) is None  # nothing promoted yet: version.txt untouched, no commit
    write_stable(layout.version_file, layout.run_dir, 1)  # what the release controller does on promotion
    commit = commit_promotion(layout, 1)
    assert commit == repo.git("rev-parse", "HEAD").strip() == repo.git("rev-parse", "origin/main").strip()
    assert repo.commits()[0] == "version 1 promoted to stable"
    assert repo.git("show", "HEAD:version.txt").strip() == "1"
    assert repo.git("status", "--porcelain", "--", "version.txt").strip() == ""


def test_credentials_in_a_remote_url_never_reach_an_error_message(tmp_path):
    from auto_deployment.model.registry import VersionError, run

    with pytest.raises(VersionError) as info:
        run(["git", "push", "-q", "https://bot:s3cr3t-token@127.0.0.1:9/none.git", "main"], cwd=tmp_path, timeout=30)
    assert "s3cr3t-token" not in str(info.value) and "***@" in str(info.value)
