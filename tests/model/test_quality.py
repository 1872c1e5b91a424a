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


# --- the figures of auto_deployment.model.quality, against hand-computed values -------------------

import math  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from auto_deployment.model import quality  # noqa: E402

Z95 = 1.959963984540054


def test_mean_interval_is_mean_plus_minus_z_s_over_root_n():
    got = quality.mean_interval([1.0, 2.0, 3.0, 4.0])
    s = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # sample sd of 1..4
    assert got["value"] == 2.5 and got["n"] == 4
    assert got["low"] == pytest.approx(2.5 - Z95 * s / 2) and got["high"] == pytest.approx(2.5 + Z95 * s / 2)
    assert quality.mean_interval([3.0])["low"] is None


def test_rmse_interval_is_the_root_of_the_mse_interval():
    errors = [1.0, -1.0, 2.0, 0.0]  # squares 1, 1, 4, 0: mean 1.5, sample sd sqrt(3)
    got = quality.rmse_interval(errors)
    half = Z95 * math.sqrt(3) / 2
    assert got["value"] == pytest.approx(math.sqrt(1.5))
    assert half > 1.5 and got["low"] == 0.0  # the MSE interval reaches below 0: floored
    assert got["high"] == pytest.approx(math.sqrt(1.5 + half))
    wide = quality.rmse_interval([1.0] * 50 + [2.0] * 50)  # squares: mean 2.5, sample sd 1.5 * sqrt(100/99)
    half = Z95 * 1.5 * math.sqrt(100 / 99) / 10
    assert (wide["low"], wide["high"]) == pytest.approx((math.sqrt(2.5 - half), math.sqrt(2.5 + half)))
    assert quality.accuracy_intervals(errors)["mae"]["value"] == pytest.approx(1.0)


def test_novelty_is_the_mean_self_information_with_add_one():
    raters = {"a": 3, "b": 1}  # 3 users; c unrated
    got = quality.novelty([["a", "b"], ["c"]], raters, n_users=3)
    assert got == pytest.approx((-math.log2(4 / 4) - math.log2(2 / 4) - math.log2(1 / 4)) / 3)


def test_intra_list_diversity_is_one_minus_jaccard_over_pairs():
    genres = quality.genre_sets(pd.DataFrame({"movie_id": ["a", "b", "c", "d"],
                                              "genres": ["Drama|Comedy", "Drama", "Horror", None]}))
    assert "d" not in genres
    # list 1: (a,b) 1 - 1/2, (a,c) 1, (b,c) 1 → 5/6; list 2: (a,b) → 1/2; d has no genres
    lists = [["a", "b", "c"], ["a", "b", "d"]]
    assert quality.intra_list_diversity(lists, genres) == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_intra_list_diversity_spans_mask_words_and_ragged_lists():
    """More than 64 genres (two mask words), lists of any length, unknown movies skipped: the pairwise
    definition, computed the plain way, gives the same figure."""
    rng = random.Random(7)
    vocab = [f"g{i}" for i in range(70)]
    genres = {f"m{i}": frozenset(rng.sample(vocab, rng.randint(1, 5))) for i in range(40)}
    catalogue = [*genres, "x1", "x2"]  # x1, x2: no genres known
    lists = [rng.sample(catalogue, rng.randint(0, 20)) for _ in range(60)] + [["m1", "m2", "m1", "x1", "m3"]]
    per_list = []
    for lst in lists:
        known = [genres[m] for m in lst if m in genres]
        dists = [1 - len(a & b) / len(a | b) for i, a in enumerate(known) for b in known[i + 1:]]
        if dists:
            per_list.append(sum(dists) / len(dists))
    assert quality.intra_list_diversity(lists, genres) == pytest.approx(sum(per_list) / len(per_list))
    assert quality.intra_list_diversity([["m1"], ["x1", "m2"]], genres) is None  # no list has a pair


def test_short_head_gini_and_average_popularity():
    raters = {"a": 6, "b": 2, "c": 1, "d": 1}  # 10 ratings: a alone holds 60 % ≥ half
    assert quality.short_head(raters) == {"a"}
    assert quality.gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert quality.gini([0, 0, 0, 4]) == pytest.approx(0.75)  # (n - 1) / n when one item takes everything
    got = quality.exposure([["a", "b"], ["a", "c"]], ["a", "b", "c", "d"], raters, {}, n_users=6)
    assert got["avg_popularity"] == pytest.approx((6 + 2 + 6 + 1) / 4)
    assert got["short_head_share"] == pytest.approx(0.5)
    assert got["exposure_gini"] == pytest.approx(quality.gini([0, 1, 1, 2]))
    assert got["intra_list_diversity"] is None


def test_a_group_gap_is_flagged_only_when_welch_says_so_after_bonferroni():
    rng = np.random.default_rng(0)
    errors = pd.Series(np.concatenate([rng.normal(0, 0.5, 400), rng.normal(0, 1.5, 400), rng.normal(0, 0.5, 400)]))
    groups = pd.Series(["A"] * 400 + ["B"] * 400 + ["C"] * 400)
    got = quality.group_gaps(errors, groups, "rmse")
    overall = math.sqrt(float((errors**2).mean()))
    b = errors[400:800].to_numpy()
    rest = np.concatenate([errors[:400].to_numpy(), errors[800:].to_numpy()])
    se = math.sqrt((b**2).var(ddof=1) / 400 + (rest**2).var(ddof=1) / 800)
    z = ((b**2).mean() - (rest**2).mean()) / se
    assert got["B"]["gap"] == pytest.approx(math.sqrt((b**2).mean()) - overall)
    assert got["B"]["p"] == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))), abs=1e-12)
    assert got["B"]["significant"] and got["B"]["gap"] > 0
    assert got["A"]["significant"] and got["A"]["gap"] < 0  # the rest of A holds B: A is better than it
    # NDCG 0.8 (16 of 20 users hit) against 0.5: z = 0.3 / sqrt((20·.16/19 + 20·.25/19) / 20) = 2.042,
    # p = 0.041: below 0.05, above 0.05 / 2 groups, so not flagged
    ndcg = quality.group_gaps(pd.Series([1.0] * 16 + [0.0] * 4 + [1.0, 0.0] * 10), pd.Series(["x"] * 20 + ["y"] * 20),
                              "mean")
    z = 0.3 / math.sqrt((20 * 0.16 / 19 + 20 * 0.25 / 19) / 20)
    assert ndcg["x"]["p"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert 0.025 < ndcg["x"]["p"] < 0.05 and not ndcg["x"]["significant"]
    assert ndcg["x"]["gap"] == pytest.approx(0.8 - 0.65)
    same = quality.group_gaps(pd.Series([1.0, -1.0, 1.0, -1.0]), pd.Series(["x", "x", "y", "y"]), "rmse")
    assert same["x"]["p"] == 1.0 and not same["x"]["significant"]


def test_sample_users_draws_whole_users_with_a_relevant_movie_the_same_each_time():
    from auto_deployment.model.evaluate import sample_users

    test = pd.DataFrame({"user_id": [1, 1, 2, 3, 3, 3, 4, 5, 6], "movie_id": list("abcdefghi"),
                         "rating": [5, 2, 1, 4, 1, 1, 5, 4, 2]})  # users 2 and 6: nothing relevant (< 4)
    got = sample_users(test, 2)
    assert got["user_id"].nunique() == 2
    assert set(got["user_id"]) <= {1, 3, 4, 5}
    for user in got["user_id"].unique():  # every row of a chosen user
        assert (got["user_id"] == user).sum() == (test["user_id"] == user).sum()
    assert got.equals(sample_users(test.sample(frac=1, random_state=3), 2).sort_index())  # row order: no matter
    assert sample_users(test, 4).equals(test)  # no more relevant users than the limit: every row


def test_popularity_lists_for_the_asked_users_are_the_full_ones():
    from auto_deployment.model.evaluate import popularity_recommender

    train = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3, 3], "movie_id": list("abacabd"), "rating": [5] * 7})
    full, asked = popularity_recommender(train, n=3), popularity_recommender(train, n=3, for_users=[3])
    assert asked(3) == full(3) == ["c"]  # a (3 raters), b (2), d (1) rated by user 3; c is left
    assert full(1) == ["c", "d"]


def test_ranking_figures_come_from_the_sample_and_rmse_from_every_rating(report, ml100k):
    small = evaluate(ml100k, progress=False, ranking_users=150)
    assert small["ranking"]["users"] == 150 < report["ranking"]["users"]
    assert small["rmse"] == pytest.approx(report["rmse"])  # the RMSE split is not sampled
    assert small["ndcg_lift"] > 1.0  # a sample of 150 users still ranks ours above popularity


def test_evaluation_carries_intervals_exposure_and_fairness(report):
    i = report["intervals"]
    assert i["rmse"]["value"] == pytest.approx(report["rmse"])
    assert i["rmse"]["low"] < report["rmse"] < i["rmse"]["high"]
    assert i["ndcg@20"]["value"] == pytest.approx(report["ranking"]["ndcg@20"])
    ours, popular = report["exposure"]["ours"], report["exposure"]["popularity"]
    assert popular["short_head_share"] > ours["short_head_share"]  # popularity only shows the head
    assert popular["exposure_gini"] > ours["exposure_gini"]
    gender = report["fairness"]["gender"]
    assert {g: v["rmse"]["n"] for g, v in gender.items()} == {g: v["n"] for g, v in report["groups"]["gender"].items()}
    assert sum(v["ndcg"]["n"] for v in gender.values()) == report["ranking"]["users"]
