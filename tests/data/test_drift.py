"""Drift of a collected window against the training data: statistics checked against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from auto_deployment.monitor import drift
from auto_deployment.monitor.drift import DriftLimits
from auto_deployment.pipeline import EXIT_CHECKS
from tests.fixtures.pipeline import PipelineRepo

LOOSE = DriftLimits(min_ratings=1)


def frame(rows: list[tuple[int, str, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])


def reference_table() -> pd.DataFrame:
    """10 users × 10 movies, each movie rated 10 times, ratings 1..5 in shares 10/20/40/20/10 %."""
    pattern = [1, 2, 2, 3, 3, 3, 3, 4, 4, 5]
    rows = [(u, f"movie+{m}", float(pattern[(u + m) % 10]), 1000 + 10 * m + u) for u in range(10) for m in range(10)]
    return frame(rows)


def test_psi_and_js_of_rating_shares_match_the_hand_computed_values():
    r, w = [0.1, 0.2, 0.4, 0.2, 0.1], [0.2] * 5
    # PSI: (.1)ln2 + 0 + (-.2)ln(.5) + 0 + (.1)ln2 = 0.4 ln 2
    assert drift.psi(r, w) == pytest.approx(0.4 * math.log(2), abs=1e-12)
    # m = (.15, .2, .3, .2, .15): KL(r||m) = KL(w||m) = 0.4 log2(4/3) - 0.2 log2(3/2) = JS divergence
    assert drift.js_distance(r, w) == pytest.approx(math.sqrt(0.4 * math.log2(4 / 3) - 0.2 * math.log2(1.5)),
                                                    abs=1e-12)
    assert drift.psi(r, r) == 0 and drift.js_distance(r, r) == 0


def test_a_zero_share_counts_as_one_in_ten_thousand():
    # window all in bin 0 of ten equal bins: 0.9 ln(1/0.1) + 9 (1e-4 - 0.1) ln(1e-4 / 0.1)
    r, w = [0.1] * 10, [1.0] + [0.0] * 9
    assert drift.psi(r, w) == pytest.approx(0.9 * math.log(10) + 9 * (1e-4 - 0.1) * math.log(1e-3), rel=1e-12)
    # m = (.55, .05 × 9): KL(r||m) = .1 log2(.1/.55) + .9 log2(2); KL(w||m) = log2(1/.55)
    jsd = 0.5 * (0.1 * math.log2(0.1 / 0.55) + 0.9) + 0.5 * math.log2(1 / 0.55)
    assert drift.js_distance(r, w) == pytest.approx(math.sqrt(jsd), rel=1e-12)


def test_popularity_bins_cut_the_reference_into_tenths_of_its_ratings():
    ref = reference_table()
    bins = drift.popularity_bins(ref)
    assert sorted(bins.values()) == list(range(10))  # ten movies with 10 ratings each: one per bin
    skewed = frame([(0, "a", 5, 1)] * 5 + [(1, "b", 5, 1)] * 3 + [(2, "c", 5, 1), (3, "d", 5, 1)])
    # cumulative share where each movie starts: a 0, b .5, c .8, d .9 → bins 0, 5, 8, 9
    assert drift.popularity_bins(skewed) == {"a": 0, "b": 5, "c": 8, "d": 9}


def test_an_unshifted_window_is_not_flagged():
    ref = reference_table()
    window = ref.assign(timestamp=ref["timestamp"] + 10_000)  # the same behaviour, later
    report = drift.compute(ref, drift.window_of(ref, window), LOOSE)
    values = {c.name: c.value for c in report.checks}
    assert values["rating_psi"] == 0 and values["rating_js"] == 0
    assert values["popularity_psi"] == 0 and values["popularity_js"] == 0
    assert values["unknown_users_share"] == 0 and values["unknown_movies_share"] == 0
    assert values["activity_ratio"] == pytest.approx(1.0)
    assert not report.drifted and report.summary() == "no drift"


def test_a_shifted_window_is_flagged_with_each_statistic_computed_by_hand():
    ref = reference_table()
    # 20 ratings, all 5 stars, all on the most rated movie (movie+0: bin 0), 4 by an unknown user,
    # 2 of a movie the reference lacks; 18 known-movie ratings, all in bin 0
    rows = [(u % 2, "movie+0", 5.0, 5000 + u) for u in range(14)] + [(99, "movie+0", 5.0, 5000 + k) for k in range(4)]
    rows += [(1, "new+movie", 5.0, 5001), (2, "new+movie", 5.0, 5002)]
    report = drift.compute(ref, frame(rows), LOOSE)
    values = {c.name: c.value for c in report.checks}
    r = [0.1, 0.2, 0.4, 0.2, 0.1]
    assert values["rating_psi"] == pytest.approx(drift.psi(r, [0, 0, 0, 0, 1]))
    assert values["rating_psi"] == pytest.approx(
        sum((1e-4 - x) * math.log(1e-4 / x) for x in r[:4]) + 0.9 * math.log(10))
    assert values["popularity_psi"] == pytest.approx(0.9 * math.log(10) + 9 * (1e-4 - 0.1) * math.log(1e-3))
    assert values["unknown_users_share"] == pytest.approx(4 / 20)
    assert values["unknown_movies_share"] == pytest.approx(2 / 20)
    # window: 20 ratings by users 0, 1, 2, 99 over 13 s; the reference's last 13 s (t ≥ 1099 − 13):
    # movie 8 by users 6..9 and movie 9 by users 0..9, 14 ratings by 10 users
    assert report.activity["window"] == pytest.approx(20 / 4)
    assert report.activity["reference"] == pytest.approx(14 / 10)
    assert values["activity_ratio"] == pytest.approx((20 / 4) / (14 / 10))
    assert report.drifted
    flagged = {c.name for c in report.checks if c.drifted}
    assert flagged == {"rating_psi", "rating_js", "popularity_psi", "popularity_js", "unknown_movies_share",
                       "activity_ratio"}


def test_too_small_a_window_is_reported_but_never_flagged():
    ref = reference_table()
    report = drift.compute(ref, frame([(99, "new", 1.0, 5000)]), DriftLimits(min_ratings=100))
    assert any(c.drifted for c in report.checks)
    assert not report.drifted and "too few ratings" in report.summary()


def test_the_window_is_what_the_reference_lacks_or_holds_otherwise():
    ref = frame([(1, "a", 4.0, 10), (1, "b", 3.0, 10), (2, "a", 5.0, 10)])
    current = frame([(1, "a", 4.0, 10), (1, "b", 2.0, 20), (2, "a", 5.0, 10), (3, "c", 1.0, 30)])
    window = drift.window_of(ref, current)
    assert list(zip(window.user_id, window.movie_id, strict=True)) == [(1, "b"), (3, "c")]


def test_limits_come_from_the_environment_with_documented_defaults(monkeypatch):
    assert DriftLimits.from_env() == DriftLimits()
    monkeypatch.setenv("DRIFT_PSI_MAX", "0.5")
    monkeypatch.setenv("PIPELINE_REFUSE_ON_DRIFT", "yes")
    limits = DriftLimits.from_env()
    assert (limits.psi_max, limits.refuse, limits.js_max) == (0.5, True, 0.1)


def test_gauges_file_holds_each_statistic_and_threshold(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    ref = reference_table()
    report = drift.compute(ref, frame([(0, "movie+0", 5.0, 5000)] * 3), LOOSE)
    path = tmp_path / "metrics" / drift.TEXTFILE
    drift.write_gauges(report, path)
    samples = {(s.name, s.labels.get("check", "")): s.value
               for family in text_string_to_metric_families(path.read_text()) for s in family.samples}
    assert samples[("movierec_drift_value", "rating_psi")] == pytest.approx(report.value("rating_psi"))
    assert samples[("movierec_drift_threshold", "rating_psi")] == 0.2
    assert samples[("movierec_drift_detected", "")] == 1
    assert samples[("movierec_drift_window_ratings", "")] == 3


@pytest.mark.slow
def test_a_run_set_to_refuse_on_drift_stops_at_checks_and_reports_the_drift(pipeline_repo: PipelineRepo):
    repo = pipeline_repo
    # the held-out newest ratings bring movies data/ lacks; allowing none makes this window "drifted"
    done = repo.run("--source", f"file:{repo.events_log}", "--no-release",
                    env={"PIPELINE_REFUSE_ON_DRIFT": "1", "DRIFT_UNKNOWN_USERS_MAX": "-1", "DRIFT_MIN_RATINGS": "1"})
    assert done.returncode == EXIT_CHECKS, done.stderr
    report = json.loads(repo.reports()[-1].read_text())
    assert (report["outcome"], report["failed_step"]) == ("checks_failed", "checks")
    assert "data drift" in report["reason"] and "unknown_users_share" in report["reason"]
    data = json.loads(Path(report["reports"]["data_json"]).read_text())
    ref = repo.base.ratings
    expected = drift.compute(ref, drift.window_of(ref, pd.concat([ref, repo.held_out])), LOOSE)
    got = {c["name"]: c["value"] for c in data["drift"]["checks"]}
    assert got["unknown_users_share"] == pytest.approx(expected.value("unknown_users_share"))
    assert got["rating_psi"] == pytest.approx(expected.value("rating_psi"))
    assert data["drift"]["window_ratings"] == len(repo.held_out)
    gauges = (repo.run_dir / "metrics" / drift.TEXTFILE).read_text()
    assert "movierec_drift_detected 1.0" in gauges


def test_report_drift_serves_the_gauges_file_to_prometheus(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from app.settings import ROOT
    from tests.fixtures.ports import free_port

    path = tmp_path / drift.TEXTFILE
    ref = reference_table()
    drift.write_gauges(drift.compute(ref, drift.window_of(ref, ref.assign(timestamp=ref.timestamp + 1)), LOOSE), path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "auto_deployment", "report", "drift", "--file", str(path),
                             "--serve", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "exporter did not start"
                time.sleep(0.2)
        assert answer.status_code == 200
        samples = {(s.name, s.labels.get("check", "")): s.value
                   for family in text_string_to_metric_families(answer.text) for s in family.samples}
        assert samples[("movierec_drift_detected", "")] == 0
        assert samples[("movierec_drift_value", "rating_psi")] == 0
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=2).status_code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
