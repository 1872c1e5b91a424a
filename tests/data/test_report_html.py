"""The HTML reports: the numbers a person reads are the hand-computed ones, and runs write them where promised."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from app.contracts.bundle import problem
from app.contracts.events import MalformedLine, RateEvent, WatchEvent, format_line, parse_line
from app.contracts.tables import Tables, save_tables
from app.settings import ROOT, MySQL
from auto_deployment.model import evaluate as ev
from auto_deployment.model import quality
from auto_deployment.monitor import drift, html
from auto_deployment.monitor import report as pages
from auto_deployment.pipeline import EXIT_GATE
from tests.fixtures.mariadb import settings_env
from tests.fixtures.pipeline import PipelineRepo


class Cells(HTMLParser):
    """Text of every element carrying a `data-key` attribute (the figures of a page)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self._key: str | None = None
        self.svgs = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.svgs += tag == "svg"
        key = dict(attrs).get("data-key")
        if key:
            self._key = key
            self.cells[key] = ""

    def handle_data(self, data: str) -> None:
        if self._key:
            self.cells[self._key] += data

    def handle_endtag(self, tag: str) -> None:
        if self._key:
            self.cells[self._key] = self.cells[self._key].strip()
        self._key = None


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auto_deployment", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False, env=env)


# --- data quality ------------------------------------------------------------------------------------

REFERENCE = [(1, "a", 1), (1, "b", 2), (2, "a", 3), (2, "b", 3), (3, "a", 4), (3, "b", 4), (3, "c", 4),
             (4, "a", 4), (4, "b", 5), (4, "c", 5)]  # ratings 1..5 in shares .1 .1 .2 .4 .2
WINDOW = [(1, "c", 5), (2, "c", 5), (5, "a", 4), (5, "d", 3), (1, "d", 5)]  # .0 .0 .2 .2 .6; user 5, movie d new
GARBAGE = ["not a log line", "2024-01-01T00:00:00,abc,GET /rate/a=3", "2024-01-01T00:00:00,7,GET /rate/a=9"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Tables of a version (REFERENCE) and an event store holding the WINDOW, a duplicate and garbage."""
    users = pd.DataFrame({"user_id": [1, 2, 3, 4, 5], "age": [30] * 5, "gender": ["M", "F", "M", "F", "M"],
                          "occupation": ["x"] * 5})
    movies = pd.DataFrame({"movie_id": list("abcd"), "title": list("abcd"), "year": [2000] * 4,
                           "genres": ["Drama"] * 4, "adult": [False] * 4, "vote_average": [5.0] * 4,
                           "vote_count": [1] * 4, "popularity": [1.0] * 4, "runtime": [90] * 4})
    ratings = pd.DataFrame([(u, m, float(r), 1_000_000 + i) for i, (u, m, r) in enumerate(REFERENCE)],
                           columns=["user_id", "movie_id", "rating", "timestamp"])
    watches = pd.DataFrame(columns=["user_id", "movie_id", "minutes", "first_seen", "last_seen"])
    save_tables(Tables(ratings=ratings, watches=watches, users=users, movies=movies), tmp_path / "data")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    lines = [format_line(RateEvent(start + timedelta(minutes=i), u, m, r)) for i, (u, m, r) in enumerate(WINDOW)]
    lines.append(lines[0])  # delivered twice
    lines += [format_line(WatchEvent(start, 1, "c", k)) for k in range(3)]
    log = tmp_path / "events.log"
    log.write_text("\n".join(lines + GARBAGE) + "\n")
    done = cli("ingest", "--source", f"file:{log}", "--events-dir", str(tmp_path / "data" / "events"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "data"


def _reasons() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in GARBAGE:
        with pytest.raises(MalformedLine) as caught:
            parse_line(line)
        out[caught.value.reason] = out.get(caught.value.reason, 0) + 1
    return out


def test_report_data_prints_json_and_writes_a_page_with_the_hand_computed_figures(data_dir: Path, tmp_path: Path):
    page_path = tmp_path / "out" / "data.html"
    done = cli("report", "data", "--data-dir", str(data_dir), "--json", "--html", str(page_path))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    r, w = [0.1, 0.1, 0.2, 0.4, 0.2], [0.0, 0.0, 0.2, 0.2, 0.6]
    psi = 2 * (1e-4 - 0.1) * math.log(1e-4 / 0.1) + (0.2 - 0.4) * math.log(0.5) + (0.6 - 0.2) * math.log(3)
    m = [(a + b) / 2 for a, b in zip(r, w, strict=True)]
    js = math.sqrt(0.5 * sum(a * math.log2(a / c) for a, c in zip(r, m, strict=True) if a)
                   + 0.5 * sum(b * math.log2(b / c) for b, c in zip(w, m, strict=True) if b))
    assert summary["events"] == {"rate": 6, "watch": 3}
    assert summary["rejected"] == _reasons()
    assert summary["duplicates"] == {"rate_events": 6, "ratings_from_events": 5, "duplicate_ratings": 1}
    assert summary["window"] == {"ratings": 5, "users": 3, "movies": 3, "new_users": 1, "new_movies": 1,
                                 "rating_counts": {"1": 0, "2": 0, "3": 1, "4": 1, "5": 3}}
    assert summary["reference_rating_counts"] == {"1": 1, "2": 1, "3": 2, "4": 4, "5": 2}
    checks = {c["name"]: c for c in summary["checks"]}
    assert (checks["new_ratings"]["value"], checks["new_ratings"]["threshold"]) == (5, 1)
    assert checks["unknown_users_share"]["value"] == 0 and checks["unknown_users_share"]["passed"]
    got = {c["name"]: c["value"] for c in summary["drift"]["checks"]}
    assert got["rating_psi"] == pytest.approx(psi) and got["rating_js"] == pytest.approx(js)
    assert got["unknown_users_share"] == pytest.approx(2 / 5)  # user 5's two ratings
    assert got["unknown_movies_share"] == pytest.approx(2 / 5)  # movie d's two ratings

    page = page_path.read_text()
    cells = Cells(page).cells
    assert cells["events.rate"] == "6" and cells["duplicates.duplicate_ratings"] == "1"
    assert cells["window.new_users"] == "1" and cells["window.new_movies"] == "1"
    assert [cells[f"rating.window.{k}"] for k in "12345"] == ["0", "0", "1", "1", "3"]
    assert cells["drift.rating_psi"] == f"{psi:.4f}" and cells["drift.rating_js"] == f"{js:.4f}"
    assert cells["check.new_ratings.value"] == "5" and cells["check.new_ratings.passed"] == "yes"
    for reason, n in _reasons().items():
        assert cells[f"rejected.{reason}"] == str(n)
    assert html.embedded_data(page)["window"] == summary["window"]  # the page is rendered from that JSON
    assert Cells(page).svgs >= 3 and "<script src" not in page and "http" not in page.split("<svg")[0]


def test_report_data_text_names_every_check_and_reads_drift_limits_from_the_environment(data_dir: Path):
    import os

    done = cli("report", "data", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    for name in ("schema", "ranges", "unknown_users_share", "new_ratings", "drift"):
        assert f"check {name}" in done.stdout
    assert "too few ratings to judge drift (5 < 100)" in done.stdout  # DRIFT_MIN_RATINGS defaults to 100
    done = cli("report", "data", "--data-dir", str(data_dir), env={**os.environ, "DRIFT_MIN_RATINGS": "5"})
    assert "drift: " in done.stdout and "unknown_movies_share 0.400 > 0.05" in done.stdout


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluation_page_shows_the_hand_computed_accuracy_ranking_and_fairness(tmp_path: Path):
    test = pd.DataFrame({"user_id": [1, 1, 2, 2], "movie_id": ["a", "b", "a", "c"], "rating": [4.0, 2.0, 5.0, 3.0]})
    est = [3.5, 3.5, 3.5, 3.5]  # errors .5 -1.5 1.5 -.5: RMSE sqrt(1.25), MAE 1
    users = pd.DataFrame({"user_id": [1, 2], "age": [20, 40], "gender": ["F", "M"], "occupation": ["x", "y"]})
    lists = {1: ["a", "z"], 2: ["z", "c"]}  # user 1 finds a at rank 1; user 2's relevant a is missed
    details: dict = {}
    ranking = ev.ranking_report(lambda u: lists[u], test.iloc[:0], test, n_movies=4, details=details)
    import numpy as np

    est_arr = np.array(est)
    report = {
        **ev.rmse_report(None, test, est_arr),  # type: ignore[arg-type]
        "intervals": quality.accuracy_intervals(est_arr - test["rating"].to_numpy()),
        "ranking": ranking, "popularity": ranking, "exposure": {},
        "fairness": ev.fairness(test, est_arr, details["ndcg"], users),
    }
    page = pages.evaluation_page(pages.evaluation_summary(report, version=7))
    cells = Cells(page).cells
    assert cells["rmse"] == f"{math.sqrt(1.25):.4f}" and cells["mae"] == "1.0000"
    half = 1.959963984540054 * math.sqrt(4 / 3) / 2  # squared errors .25 2.25 2.25 .25: mean 1.25, var 4/3
    assert cells["rmse.low"] == f"{math.sqrt(1.25 - half):.4f}"
    assert cells["rmse.high"] == f"{math.sqrt(1.25 + half):.4f}"
    # NDCG@20: user 1 relevant {a} (rating 4) found at rank 1 → 1; user 2 relevant {a} (5) missed → 0
    assert cells["ours.ndcg@20"] == "0.5000" and cells["ours.hit_rate@20"] == "0.5000"
    assert cells["ours.coverage"] == f"{3 / 4:.4f}"  # a, z, c of 4 movies
    # fairness: F is user 1 (errors .5, -1.5: RMSE sqrt(1.25)); gap to overall sqrt(1.25) is 0
    assert cells["fairness.gender.F.rmse"] == f"{math.sqrt(1.25):.3f}"
    assert cells["fairness.gender.F.rmse.gap"] == "0.000"
    assert cells["fairness.gender.F.ndcg"] == "1.000" and cells["fairness.gender.M.ndcg"] == "0.000"
    assert cells["fairness.age_band.18-24.rmse"] == f"{math.sqrt(1.25):.3f}"
    assert "version 7" in page


def test_report_evaluation_renders_a_saved_json(tmp_path: Path):
    test = pd.DataFrame({"user_id": [1, 2], "movie_id": ["a", "b"], "rating": [4.0, 2.0]})
    est = [3.0, 3.0]
    report = {"rmse": 1.0, "mae": 1.0, "n_test": 2,
              "intervals": quality.accuracy_intervals([e - r for e, r in zip(est, test.rating, strict=True)]),
              "ranking": {"ndcg@20": 0.25}, "popularity": {"ndcg@20": 0.125}, "exposure": {}, "fairness": {}}
    source = tmp_path / "evaluation.json"
    source.write_text(json.dumps(report))
    out = tmp_path / "evaluation.html"
    done = cli("report", "evaluation", "--from", str(source), "--html", str(out))
    assert done.returncode == 0, done.stderr
    cells = Cells(out.read_text()).cells
    assert (cells["rmse"], cells["ours.ndcg@20"], cells["popularity.ndcg@20"]) == ("1.0000", "0.2500", "0.1250")


# --- pipeline runs ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_run_writes_both_pages_beside_its_json_report(pipeline_repo: PipelineRepo):
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", "--rmse-gate", "0")
    assert done.returncode == EXIT_GATE, done.stderr
    report = json.loads(repo.reports()[-1].read_text())
    folder = repo.run_dir / "pipeline" / report["run_id"]
    assert report["reports"] == {f"{stem}_{ext}": str(folder / f"{stem}.{ext}")
                                 for stem in ("data", "evaluation") for ext in ("json", "html")}
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["rmse"] == pytest.approx(report["rmse"])
    cells = Cells((folder / "evaluation.html").read_text()).cells
    assert cells["rmse"] == f"{report['rmse']:.4f}"
    data = json.loads((folder / "data.json").read_text())
    assert data["window"]["ratings"] == len(repo.held_out)
    assert data["tables"]["ratings"] == len(repo.base.ratings) + len(repo.held_out)
    counts = repo.held_out["rating"].round().astype(int).value_counts()
    assert data["window"]["rating_counts"] == {str(k): int(counts.get(k, 0)) for k in range(1, 6)}
    ref = repo.base.ratings
    expected = drift.compute(ref, repo.held_out)
    assert data["drift"]["checks"][0]["value"] == pytest.approx(expected.value("rating_psi"))


@pytest.mark.slow
def test_a_version_carries_its_reports_and_its_bundle_still_verifies(pipeline_repo: PipelineRepo,
                                                                     mysql_settings: MySQL):
    repo = pipeline_repo
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release", env=settings_env(mysql_settings))
    assert done.returncode == 0, done.stderr
    report = json.loads(repo.reports()[-1].read_text())
    bundle = repo.models_dir / str(report["version"])
    assert problem(bundle) is None
    for name in ("data.html", "data.json", "evaluation.html", "evaluation.json"):
        assert (bundle / "reports" / name).read_bytes() == (
            repo.run_dir / "pipeline" / report["run_id"] / name).read_bytes()


def test_report_data_without_an_event_store_brings_nothing(data_dir: Path, tmp_path: Path):
    done = cli("report", "data", "--data-dir", str(data_dir), "--events-dir", str(tmp_path / "none"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["window"]["ratings"] == 0 and summary["window"]["new_users"] == 0
    assert summary["drift"] is None and summary["tables"]["ratings"] == len(REFERENCE)
    checks = {c["name"]: c for c in summary["checks"]}
    assert checks["new_ratings"]["value"] == 0 and not checks["new_ratings"]["passed"]
