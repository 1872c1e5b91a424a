"""The scalable user KNN (`user_knn_sparse`) against the exact Surprise-parity path (`user_knn`).

Where every positively similar user is stored (k ≥ co-raters), the two give the same estimates and lists;
with a small k the RMSE moves by a bounded amount; the bundle holds nothing of size n × n.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.model import Recommender, UserKNN
from app.recommender import EXACT_MAX_USERS, SparseUserKNN
from auto_deployment.model.evaluate import rating_split, rmse_report
from tests.model.conftest import ADULT, COLD_MINOR, MINORS, N_MOVIES, PROFILE_ONLY_MINOR

EVERYONE = 100_000  # more neighbours than any test set has users: every neighbour is found
EXACT = {"neighbours": EVERYONE, "rater_cap": 0, "candidates": 0}  # every co-rater scored, every neighbour kept


@pytest.fixture(scope="module")
def sparse_model(catalogue) -> SparseUserKNN:
    model = Recommender.train(*catalogue, algorithm="user_knn_sparse", **EXACT)
    assert isinstance(model, SparseUserKNN)
    return model


def test_with_every_neighbour_estimates_and_lists_equal_the_exact_path(model, sparse_model, catalogue):
    assert type(model) is UserKNN  # the catalogue is far below EXACT_MAX_USERS: the exact path
    assert list(model.user_ids) == list(sparse_model.user_ids) and list(model.movie_ids) == list(sparse_model.movie_ids)
    np.testing.assert_allclose(sparse_model.bu, model.bu, atol=1e-12)
    np.testing.assert_allclose(sparse_model.bi, model.bi, atol=1e-12)
    worst = max(abs(model.predict(u, m) - sparse_model.predict(u, m))
                for u in [*model.user_ids.tolist(), PROFILE_ONLY_MINOR, 99_999] for m in model.movie_ids.tolist())
    assert worst <= 1e-9
    assert (sparse_model.top_lists == model.top_lists).all()
    for user in [*model.user_ids.tolist(), PROFILE_ONLY_MINOR, 99_999]:
        assert sparse_model.explain(user, n=N_MOVIES) == model.explain(user, n=N_MOVIES), user  # computed path too


def test_on_movielens_every_neighbour_gives_the_exact_estimates_and_a_small_k_a_bounded_rmse(ml100k):
    train, test = rating_split(ml100k.ratings)
    exact = Recommender.train(train, ml100k.users, ml100k.movies, materialise=False)
    full = Recommender.train(train, ml100k.users, ml100k.movies, algorithm="user_knn_sparse", **EXACT,
                             materialise=False)
    rows = test.head(2000)
    pairs = zip(rows.user_id, rows.movie_id, strict=True)
    assert max(abs(exact.predict(u, m) - full.predict(u, m)) for u, m in pairs) <= 1e-9
    # Measured 2026-11-29 (80/20, seed 42): exact 0.9182; neighbours=200 → 0.9219 (+0.004), 100 → 0.9287
    # (+0.011), 50 → 0.9433 (+0.025), 20 → 0.9747 (+0.057). A rater outside a user's stored top-k counts as 0.
    base = rmse_report(exact, test)["rmse"]
    for k, bound in ((200, 0.006), (50, 0.03)):
        small = Recommender.train(train, ml100k.users, ml100k.movies, algorithm="user_knn_sparse", neighbours=k,
                                  rater_cap=0, candidates=0, materialise=False)
        assert np.diff(small.nb.indptr).max() <= k
        assert 0 <= rmse_report(small, test)["rmse"] - base <= bound, k


def test_the_bundle_has_no_file_of_size_n_squared(catalogue, tmp_path):
    ratings, users, movies = catalogue
    k, width = 5, 7
    model = Recommender.train(ratings, users, movies, algorithm="user_knn_sparse", neighbours=k, rank_neighbours=width)
    path = model.save(tmp_path / "b")
    n, m, r = len(model.user_ids), len(model.movie_ids), len(ratings)
    assert sorted(json.loads((path / "checksums.json").read_text())) == ["arrays.npz", "ids.json", "metadata.json"]
    assert json.loads((path / "metadata.json").read_text())["algorithm"] == "user_knn_sparse"
    # O(n·k + ratings + movies) bytes: neighbours (12 B each + indptr), ranking k-wide arrays, lists, ratings ×3
    budget = 8 * (n * (2 * k + 2 * width + 20 + 8) + 6 * r + 8 * m) + 64_000  # + npz headers, ids, metadata
    for f in path.iterdir():
        assert f.stat().st_size <= budget, f.name
    with np.load(path / "arrays.npz") as z:
        for name in z.files:
            assert z[name].size < n * n or n * n <= 3 * r, name  # nothing user × user
        assert z["nb_data"].size <= n * k and z["rank_nb_idx"].shape == (n, width)
    loaded = Recommender.load(path)
    assert type(loaded) is SparseUserKNN
    for user in (2, 3, COLD_MINOR, PROFILE_ONLY_MINOR, 99_999):
        assert loaded.explain(user) == model.explain(user)
        assert loaded.predict(user, "plain+movie+10+2001") == model.predict(user, "plain+movie+10+2001")


def test_the_list_rules_hold_on_the_sparse_path(catalogue):
    ratings, users, movies = catalogue
    model = Recommender.train(ratings, users, movies, algorithm="user_knn_sparse", neighbours=5, rank_neighbours=5)
    for user in model.user_ids.tolist():
        rated = set(ratings.loc[ratings.user_id == user, "movie_id"])
        made = model.recommend(user)
        assert len(made) == 20 and len(set(made)) == 20, user
        assert not set(made) & rated, user
        if user in MINORS or user == COLD_MINOR:
            assert not set(made) & ADULT, user
    warm_minor = next(u for u in sorted(MINORS) if not model.is_cold(u))
    rated = set(ratings.loc[ratings.user_id == warm_minor, "movie_id"])
    made = model.explain(warm_minor, n=N_MOVIES)
    assert made.how == "warm" and len(made.movies) == N_MOVIES - len(rated) - len(ADULT)  # every eligible one
    assert not set(made.movies) & (ADULT | rated)


def test_train_picks_the_path_by_the_number_of_users(catalogue):
    ratings, users, movies = catalogue
    n = ratings.user_id.nunique()
    assert EXACT_MAX_USERS >= 10_000
    assert type(Recommender.train(ratings, users, movies, exact_max_users=n)) is UserKNN
    big = Recommender.train(ratings, users, movies, exact_max_users=n - 1, neighbours=30)
    assert type(big) is SparseUserKNN and big.metadata["algorithm"] == "user_knn_sparse"
    assert big.params["neighbours"] == 30
    # a scalable-only parameter is ignored by the exact path, an unknown one is still refused
    assert type(Recommender.train(ratings, users, movies, neighbours=30)) is UserKNN
    with pytest.raises(ValueError, match="unknown model parameters"):
        Recommender.train(ratings, users, movies, no_such_param=1)
    with pytest.raises(ValueError, match="unknown model parameters"):
        UserKNN.train(ratings, users, movies, neighbours=30)  # a named algorithm takes its own parameters only
