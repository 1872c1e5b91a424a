"""The feedback-loop analysis (`simulator.loop`): each metric by hand on tiny inputs, then a tiny loop end to end."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from simulator import loop
from simulator.__main__ import main as simulator_main
from simulator.world import World

TINY = {"rounds": 3, "users": 80, "movies": 100, "seed": 3, "picks": 3, "ratings_per_user": 20}


# ---------------------------------------------------------------------- metrics, by hand


def test_gini_of_equal_exposure_is_zero_and_of_one_movie_out_of_four_is_three_quarters():
    assert loop.gini([1, 1, 1, 1]) == 0.0
    # Σ_i Σ_j |x_i − x_j| = 3 zeros × 4 × 2 orders = 24; 2 n² x̄ = 2 · 16 · 1 = 32 → 0.75
    assert loop.gini([0, 0, 0, 4]) == pytest.approx(0.75)
    # |1−2| + |1−3| + |2−3| = 4, twice = 8; 2 · 9 · 2 = 36
    assert loop.gini([3, 1, 2]) == pytest.approx(8 / 36)
    assert loop.gini([0, 0, 0]) == 0.0


def test_gini_is_the_stated_mean_absolute_difference_formula():
    x = np.random.default_rng(1).poisson(3.0, 57).astype(float)
    brute = sum(abs(a - b) for a, b in itertools.product(x, x)) / (2 * len(x) ** 2 * x.mean())
    assert loop.gini(x) == pytest.approx(brute)


def test_exposure_and_coverage_count_every_catalogue_movie_and_ignore_padding():
    lists = np.array([[0, 1], [1, 2], [4, -1]])
    assert loop.exposure(lists, 6).tolist() == [1, 2, 1, 0, 1, 0]
    assert loop.coverage(lists, 6) == pytest.approx(4 / 6)
    assert loop.coverage(np.array([[0, -1]]), 5) == pytest.approx(1 / 5)


def test_mean_list_popularity_averages_each_list_then_the_lists():
    popularity = np.array([0.1, 0.2, 0.3, 0.4])
    lists = np.array([[0, 1], [2, -1]])  # (0.1 + 0.2) / 2 = 0.15 and 0.3 → 0.225
    assert loop.mean_list_popularity(lists, popularity) == pytest.approx(0.225)


def test_intra_list_diversity_is_the_mean_pairwise_cosine_distance():
    features = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # movie 2 points where movie 0 does
    # list 1: pairs (0,1) → 1, (0,2) → 0, (1,2) → 1: 2/3; list 2: (0,2) → 0; a one-movie list has no pair
    lists = np.array([[0, 1, 2], [0, 2, -1], [1, -1, -1]])
    assert loop.intra_list_diversity(lists, features) == pytest.approx((2 / 3 + 0) / 2)


def test_mean_true_rating_reads_each_users_own_row():
    true = np.array([[5.0, 3.0, 1.0], [2.0, 4.0, 4.0]])
    lists = np.array([[0, 1], [2, -1]])  # (5 + 3) / 2 = 4 and 4
    assert loop.mean_true_rating(lists, true) == pytest.approx(4.0)


def test_watched_share_counts_listed_movies_the_user_already_watched():
    watched = np.array([[True, False, True, False], [False, False, False, False]])
    lists = np.array([[0, 1, 2, 3], [1, -1, -1, -1]])  # 2 of 4, 0 of 1
    assert loop.watched_share(lists, watched) == pytest.approx(0.25)


def test_true_ndcg_against_the_best_eligible_movies():
    true = np.array([[5.0, 3.0, 1.0]])  # gains 2^(r−1) − 1: 15, 3, 0
    everything = np.ones_like(true, dtype=bool)
    dcg, idcg = 3 + 15 / math.log2(3), 15 + 3 / math.log2(3)
    assert loop.true_ndcg(np.array([[1, 0]]), true, everything, n=2) == pytest.approx(dcg / idcg)
    assert loop.true_ndcg(np.array([[0, 1]]), true, everything, n=2) == pytest.approx(1.0)
    # movie 0 already rated: it earns nothing and the ideal list is (1, 2) → 3 / 1
    eligible = np.array([[False, True, True]])
    assert loop.true_ndcg(np.array([[0, 1]]), true, eligible, n=2) == pytest.approx((3 / math.log2(3)) / 3)


def test_popularity_lists_rank_by_ratings_and_skip_what_is_blocked():
    rated = np.array([
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 1, 0, 1],
    ], dtype=bool)  # counts 3, 1, 2, 0, 1 → order 0, 2, 1, 4, 3 (ties by catalogue position)
    blocked = rated.copy()
    blocked[1, 1] = True  # e.g. an adult movie for a minor
    lists = loop.popularity_lists(rated, blocked, n=3)
    assert lists.tolist() == [[2, 4, 3], [4, 3, -1], [1, 3, -1]]


# ---------------------------------------------------------------------- a tiny world, end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("loop")
    argv = ["loop", "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert simulator_main(argv) == 0
    report = json.loads((out / "feedback_loop.json").read_text())
    return report, (out / "feedback_loop.html").read_text()


def test_both_recommenders_run_every_round_and_the_history_grows_by_what_users_rated(tiny_run):
    report, _ = tiny_run
    assert set(report["arms"]) == {"ours", "popularity"}
    for rounds in report["arms"].values():
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert rounds[0]["history_ratings"] == report["initial_ratings"] == TINY["users"] * TINY["ratings_per_user"]
        for before, after in itertools.pairwise(rounds):
            assert after["history_ratings"] == before["history_ratings"] + before["new_ratings"]
        for r in rounds:
            assert 0 < r["new_ratings"] <= r["sessions"] <= report["panel"] * TINY["picks"]
            assert 0.0 <= r["take_rate"] <= 1.0 and 0.0 <= r["watched_share"] <= 1.0
            assert 1.0 <= r["mean_true_rating"] <= 5.0
            assert 0.0 < r["ndcg"] <= 1.0 and 0.0 < r["diversity"] <= 2.0
    assert {r["algorithm"] for r in report["arms"]["ours"]} == {"user_knn"}


def test_reported_exposure_metrics_follow_from_the_reported_exposure(tiny_run):
    report, _ = tiny_run
    for rounds in report["arms"].values():
        for r in rounds:
            counts = np.array(r["exposure"])
            assert len(counts) == report["catalogue"] == TINY["movies"]
            assert counts.sum() == report["panel"] * report["list_size"]  # every list is full
            assert r["exposure_gini"] == pytest.approx(loop.gini(counts))
            assert r["coverage"] == pytest.approx((counts > 0).mean())


def test_popularity_round_zero_matches_an_independent_count_of_the_history(tiny_run):
    report, _ = tiny_run
    world = World.generate(seed=TINY["seed"], n_users=TINY["users"], n_movies=TINY["movies"])
    ratings, watches = world.history(n_ratings=TINY["users"] * TINY["ratings_per_user"], seed=TINY["seed"])
    ids = world.movies["movie_id"].tolist()
    counts = ratings["movie_id"].value_counts()
    ranked = sorted(ids, key=lambda m: (-counts.get(m, 0), ids.index(m)))
    adult = set(world.movies.loc[world.movies["adult"], "movie_id"])
    seen = ratings.groupby("user_id")["movie_id"].apply(set)
    watched = watches.groupby("user_id")["movie_id"].apply(set)
    shown: pd.Series = pd.Series(0, index=ids)
    stale = []
    for user, age in zip(world.users["user_id"], world.users["age"], strict=True):
        mine = seen.get(user, set()) | (adult if age < 18 else set())
        listed = [m for m in ranked if m not in mine][:20]
        shown[listed] += 1
        stale.append(len(set(listed) & watched.get(user, set())) / 20)
    r0 = report["arms"]["popularity"][0]
    assert r0["exposure"] == shown.tolist()
    assert r0["watched_share"] == pytest.approx(np.mean(stale))
    assert r0["exposure_gini"] == pytest.approx(loop.gini(shown.to_numpy()))


def test_our_lists_beat_popularity_on_true_tastes_and_show_more_of_the_catalogue(tiny_run):
    report, _ = tiny_run
    ours, pop = report["arms"]["ours"][0], report["arms"]["popularity"][0]
    assert ours["ndcg"] > pop["ndcg"] and ours["mean_true_rating"] > pop["mean_true_rating"]
    assert ours["coverage"] > pop["coverage"] and ours["exposure_gini"] < pop["exposure_gini"]
    assert report["verdict"]["ours_wider_than_popularity"] is True


def test_html_report_is_self_contained_and_shows_the_json_numbers(tiny_run):
    report, html = tiny_run
    assert html.count("<svg") == len(loop.METRICS) + 1  # one plot per metric and the Lorenz curve
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html) and "<script" not in html
    assert report["verdict"]["summary"] in html.replace("&gt;", ">").replace("&#39;", "'")
    table = html[html.index('<table id="table">'): html.index("</table>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    expected = []
    for row in loop.table_rows(report):
        expected.append(str(row["round"]))
        expected += [f"{v:.3f}" for pair in row["values"] for v in pair]
    assert cells == expected
    assert report["command"] in html


def test_the_same_arguments_replay_the_same_rounds(tiny_run):
    report, _ = tiny_run
    again = loop.run(loop.LoopConfig(**{**TINY, "rounds": 2}), progress=False)  # a prefix of the 3 rounds
    timing = {"seconds", "train_seconds"}

    def strip(rep):
        return {name: [{k: v for k, v in r.items() if k not in timing} for r in rounds]
                for name, rounds in rep["arms"].items()}

    assert strip(json.loads(json.dumps(again))) == {name: rounds[:2] for name, rounds in strip(report).items()}


def test_a_sampled_panel_gets_the_same_true_ratings_by_chunks_as_from_the_whole_matrix():
    world_loop = loop.Loop(loop.LoopConfig(users=60, movies=80, ratings_per_user=20, sample=25, seed=4))
    assert len(world_loop.panel) == len(set(world_loop.panel.tolist())) == 25
    whole = world_loop.world.true_rating_matrix()[world_loop.panel]
    np.testing.assert_allclose(world_loop._true_rows(max_cells=100), whole, rtol=0, atol=1e-12)
    assert world_loop.true.shape == (25, 80)


def test_excluding_watched_movies_fills_lists_with_unwatched_ones_only():
    cfg = loop.LoopConfig(**{**TINY, "exclude_watched": True})
    world_loop = loop.Loop(cfg)
    assert "--exclude-watched" in loop.command(cfg)
    for name in loop.ARMS:
        arm = world_loop.new_arm(name)
        rated = world_loop._rated(arm.ratings)
        watched = world_loop.watched_mask(arm)
        lists, _ = world_loop.lists(arm, rated, watched)
        assert loop.watched_share(lists, watched) == 0.0
        left = ~(watched | rated[world_loop.panel] | world_loop.minor_adult)
        if name == "ours":  # a movie nobody rated is unknown to the model
            left &= rated.any(axis=0)
        assert ((lists >= 0).sum(axis=1) == np.minimum(20, left.sum(axis=1))).all(), name  # full unless none left
