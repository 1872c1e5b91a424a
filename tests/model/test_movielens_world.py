"""The simulator can play MovieLens-100k's users: tastes fitted to its ratings stand in for the truth."""

from __future__ import annotations

import numpy as np
import pytest

from app.contracts.tables import Tables
from simulator.population import Population
from simulator.world import World


@pytest.fixture(scope="module")
def ml_world(ml100k: Tables) -> World:
    return World.fit(ml100k.users, ml100k.movies, ml100k.ratings, seed=0)


def test_fitted_tastes_reproduce_the_real_ratings_better_than_the_mean(ml_world: World, ml100k: Tables) -> None:
    r = ml100k.ratings
    true = ml_world.true_ratings(r.user_id.to_numpy(), r.movie_id.to_numpy())
    rmse = float(np.sqrt(np.mean((true - r.rating.to_numpy()) ** 2)))
    baseline = float(r.rating.std())
    assert rmse < 0.85 * baseline, (rmse, baseline)
    assert ml_world.rating_noise == pytest.approx(rmse, rel=1e-6)  # simulated ratings are as noisy as real ones


def test_the_world_keeps_movielens_ids_attributes_and_a_runtime_for_every_movie(ml_world: World,
                                                                                ml100k: Tables) -> None:
    assert ml_world.users.user_id.tolist() == ml100k.users.user_id.tolist()
    assert ml_world.movies.movie_id.tolist() == ml100k.movies.movie_id.tolist()
    assert ml_world.movies.runtime.notna().all() and ml_world.movies.runtime.between(60, 200).all()
    # popular movies are watched most, as in the data
    counts = ml100k.ratings.movie_id.value_counts()
    top, rare = counts.index[0], counts.index[-1]
    weights = ml_world.watch_weights(int(ml100k.users.user_id.iloc[0]))
    position = {m: j for j, m in enumerate(ml_world.movies.movie_id)}
    assert weights[position[top]] > weights[position[rare]]


def test_fitting_is_deterministic(ml100k: Tables) -> None:
    sample = ml100k.ratings.iloc[::10]
    a = World.fit(ml100k.users, ml100k.movies, sample, seed=3, epochs=4)
    b = World.fit(ml100k.users, ml100k.movies, sample, seed=3, epochs=4)
    assert np.array_equal(a.user_factors, b.user_factors) and np.array_equal(a.movie_quality, b.movie_quality)


def test_a_population_of_movielens_users_reacts_to_lists_by_their_fitted_taste(ml_world: World) -> None:
    population = Population(ml_world, seed=1, new_user_share=0.0)
    truth = ml_world.true_rating_matrix()
    movie_ids = ml_world.movies.movie_id.to_numpy()
    liked = disliked = 0
    for n in range(200):
        user = population.user_for(n)
        u = int(ml_world.user_index(user)[0])
        order = np.argsort(-truth[u])
        for which, movies in (("liked", movie_ids[order[:20]]), ("disliked", movie_ids[order[-20:]])):
            picked = population.react(n, user, tuple(movies))
            if picked is not None and picked[3]:  # took a movie of the list
                liked += which == "liked"
                disliked += which == "disliked"
    assert liked > 2 * disliked, (liked, disliked)
