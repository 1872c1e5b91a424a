"""Simulated users react measurably better to our lists than to 20 random movies (seeded world and MovieLens users)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from app.model import Recommender
from auto_deployment.monitor.online_eval import ServerAttributor, report
from simulator.load import Outcome
from simulator.population import Population, session_lines
from simulator.world import World


@pytest.fixture(scope="module", params=["seeded world", "movielens-100k"])
def outcome_by_recommender(request) -> dict[str, dict]:
    """Both populations the simulator plays: the seeded world's, and MovieLens users with fitted tastes."""
    if request.param == "seeded world":
        world = World.generate(seed=21, n_users=300, n_movies=400)
        ratings, _ = world.history(n_ratings=20_000, seed=21)
    else:
        tables = request.getfixturevalue("ml100k")
        world = World.fit(tables.users, tables.movies, tables.ratings, seed=21)
        ratings = tables.ratings
    model = Recommender.train(ratings, world.users, world.movies)
    runtimes = dict(zip(world.movies.movie_id, world.movies.runtime.astype(float), strict=True))
    all_movies = world.movies.movie_id.to_numpy()
    rng = np.random.default_rng(0)
    lines: list[str] = []
    # identical users and identical decision seeds for both recommenders: only the list differs
    model_users = Population(world, seed=8, new_user_share=0.0)
    random_users = Population(world, seed=8, new_user_share=0.0)
    start = datetime(2026, 11, 24, tzinfo=UTC)
    for n in range(600):
        user = model_users.user_for(n)
        when = start + timedelta(hours=n)
        ours = tuple(model.recommend(user))
        lines += session_lines(when, "model:1", Outcome(user, 200, 5.0, movies=ours), model_users.react(n, user, ours))
        rand = tuple(rng.choice(all_movies, size=20, replace=False))
        lines += session_lines(when + timedelta(minutes=30), "random:1", Outcome(user, 200, 5.0, movies=rand),
                               random_users.react(n, user, rand))
    summary = report(lines, ServerAttributor(), runtimes, settle_s=0)  # a finished log: every list is settled
    out: dict = {server: m for (_, server), m in summary.items()}
    # MovieLens users rate most movies well (mean 3.5), so a random list is taken more often there
    out["margin"] = 1.5 if request.param == "seeded world" else 1.25
    return out


def test_model_lists_score_higher_than_random_lists(outcome_by_recommender):
    ours, rand = outcome_by_recommender["model:1"], outcome_by_recommender["random:1"]
    assert ours["lists"] == rand["lists"] == 600
    assert ours["score"] > outcome_by_recommender["margin"] * rand["score"]


def test_model_lists_are_watched_more_often(outcome_by_recommender):
    ours, rand = outcome_by_recommender["model:1"], outcome_by_recommender["random:1"]
    assert ours["hit_rate"] > outcome_by_recommender["margin"] * rand["hit_rate"]


def test_recommended_movies_that_get_watched_are_rated_higher(outcome_by_recommender):
    ours, rand = outcome_by_recommender["model:1"], outcome_by_recommender["random:1"]
    assert ours["rated"] > 20 and rand["rated"] > 0
    assert ours["avg_rating"] > rand["avg_rating"]
