"""Offline evaluation formulas against values computed by hand: ranking metrics and per-group RMSE."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from auto_deployment.model.evaluate import _age_band, group_rmse, ranking_report


def test_ranking_metrics_match_a_hand_computed_example():
    # user 1 likes A (5) and B (4), not C (2); user 2 likes D; user 3 likes nothing (>= 4 is relevant): not counted
    test = pd.DataFrame({"user_id": [1, 1, 1, 2, 3], "movie_id": ["A", "B", "C", "D", "E"],
                         "rating": [5.0, 4.0, 2.0, 4.0, 3.0]})
    lists = {1: ["A", "X", "B"], 2: ["Y", "Z", "W"], 3: ["A", "B", "C"]}
    report = ranking_report(lambda u: lists[u], train=test.iloc[:0], test=test, n_movies=10, n=3)
    # user 1: hits at ranks 1 and 3 → DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (2 relevant) = 1 + 1/log2(3)
    ndcg_user1 = 1.5 / (1 + 1 / math.log2(3))  # 0.91972...
    assert report["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert report["recall@3"] == pytest.approx((1.0 + 0) / 2)
    assert report["ndcg@3"] == pytest.approx((ndcg_user1 + 0) / 2)
    assert report["ndcg@3"] == pytest.approx(0.459860, abs=1e-6)
    assert report["hit_rate@3"] == pytest.approx(0.5)
    assert report["coverage"] == pytest.approx(6 / 10)  # A X B Y Z W shown; user 3's list is never asked for
    assert report["users"] == 2


def test_a_perfect_list_scores_one_and_a_short_one_is_judged_on_n():
    test = pd.DataFrame({"user_id": [7, 7], "movie_id": ["A", "B"], "rating": [5.0, 5.0]})
    perfect = ranking_report(lambda u: ["A", "B"], test.iloc[:0], test, n_movies=2, n=2)
    assert perfect["ndcg@2"] == pytest.approx(1.0) and perfect["precision@2"] == 1.0
    short = ranking_report(lambda u: ["B"], test.iloc[:0], test, n_movies=2, n=2)
    assert short["precision@2"] == pytest.approx(0.5) and short["recall@2"] == pytest.approx(0.5)
    assert short["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))  # hit at rank 1, two relevant


class ConstantRating:
    """The simplest estimator (every rating 3): makes each group's error a number one can write down."""

    def predict(self, user_id: int, movie_id: str) -> float:
        return 3.0


def test_rmse_per_gender_age_band_and_occupation_matches_hand_computed_values():
    test = pd.DataFrame({"user_id": [1, 1, 2, 3], "movie_id": ["m", "n", "m", "m"], "rating": [5.0, 3.0, 4.0, 1.0]})
    users = pd.DataFrame({"user_id": [1, 2], "age": [17, 30], "gender": ["F", "M"],
                          "occupation": ["student", "engineer"]})  # user 3 has no profile
    # errors against 3.0: user 1 → 2, 0; user 2 → 1; user 3 → -2
    out = group_rmse(ConstantRating(), test, users)
    assert out["gender"] == {"F": {"rmse": pytest.approx(math.sqrt((4 + 0) / 2)), "n": 2},
                             "M": {"rmse": pytest.approx(1.0), "n": 1},
                             "unknown": {"rmse": pytest.approx(2.0), "n": 1}}
    assert out["age_band"] == {"<18": {"rmse": pytest.approx(math.sqrt(2)), "n": 2},
                               "25-34": {"rmse": pytest.approx(1.0), "n": 1},
                               "unknown": {"rmse": pytest.approx(2.0), "n": 1}}
    assert set(out["occupation"]) == {"student", "engineer", "unknown"}
    assert group_rmse(ConstantRating(), test, pd.DataFrame()) == {}


@pytest.mark.parametrize(("age", "band"), [(17.9, "<18"), (18, "18-24"), (24.9, "18-24"), (25, "25-34"),
                                           (55.9, "45-55"), (56, "56+"), (float("nan"), "unknown"),
                                           (None, "unknown"), (-1, "unknown")])
def test_age_bands_have_closed_lower_and_open_upper_bounds(age, band):
    assert _age_band(age) == band
