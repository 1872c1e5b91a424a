"""Behavioural quality bars of the issue, on MovieLens-100k (not timed)."""

from __future__ import annotations

import pytest

from auto_deployment.model.evaluate import evaluate


@pytest.fixture(scope="module")
def report(ml100k):
    return evaluate(ml100k, progress=False)


def test_rmse_on_the_80_20_split_passes_the_gate_with_margin(report):
    # KNNBasic/cosine scores 1.019 here and fails the RMSE < 1 gate; the bar is 0.93
    assert report["rmse"] <= 0.93
    assert report["mae"] < report["rmse"]


def test_top20_beats_popularity_on_ndcg_by_forty_percent(report):
    ours, popular = report["ranking"]["ndcg@20"], report["popularity"]["ndcg@20"]
    assert ours >= 1.4 * popular


def test_top20_beats_popularity_on_every_ranking_metric_but_coverage_too(report):
    for key in ("precision@20", "recall@20", "hit_rate@20", "coverage"):
        assert report["ranking"][key] > report["popularity"][key], key


def test_fairness_report_covers_gender_age_and_occupation(report, ml100k):
    groups = report["groups"]
    assert set(groups["gender"]) == {"M", "F"}
    assert "<18" in groups["age_band"]
    assert len(groups["occupation"]) == ml100k.users.occupation.nunique()
    total = sum(g["n"] for g in groups["gender"].values())
    assert total == report["n_test"]
