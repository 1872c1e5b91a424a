"""Our numpy estimate must equal Surprise KNNBaseline's `predict` on real data (MovieLens-100k)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from surprise import Dataset, KNNBaseline, Reader

from app.model import DEFAULT_PARAMS, Recommender
from auto_deployment.model.evaluate import rating_split


@pytest.fixture(scope="module")
def fitted(ml100k):
    train, test = rating_split(ml100k.ratings)
    ours = Recommender.train(train)
    p = DEFAULT_PARAMS
    algo = KNNBaseline(
        k=p["k"],
        min_k=p["min_k"],
        sim_options={"name": "pearson_baseline", "user_based": True, "shrinkage": p["shrinkage"]},
        bsl_options={"method": p["bsl_method"], "reg_i": p["bsl_reg_i"], "reg_u": p["bsl_reg_u"],
                     "n_epochs": p["bsl_epochs"]},
        verbose=False,
    )
    frame = train[["user_id", "movie_id", "rating"]].astype({"movie_id": str})
    algo.fit(Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset())
    return ours, algo, test


def test_estimates_equal_surprise_predict_on_the_test_split(fitted):
    ours, algo, test = fitted
    pairs = list(zip(test.user_id, test.movie_id, strict=True))
    theirs = np.array([algo.predict(u, m).est for u, m in pairs])
    mine = np.array([ours.predict(u, m) for u, m in pairs])
    assert np.max(np.abs(theirs - mine)) < 1e-9


def test_impossible_predictions_fall_back_like_surprise(fitted):
    ours, algo, test = fitted
    known_user, known_movie = int(test.user_id.iloc[0]), str(test.movie_id.iloc[0])
    cases = [(10**9, known_movie), (known_user, "no+such+movie+1900"), (10**9, "no+such+movie+1900")]
    for user, movie in cases:
        assert abs(algo.predict(user, movie).est - ours.predict(user, movie)) < 1e-9


def test_users_without_positive_neighbours_get_the_baseline_like_surprise(fitted):
    """Pairs where no rater of the movie is a positive-similarity neighbour: the baseline path."""
    ours, algo, _ = fitted
    checked = 0
    for u in range(0, len(ours.user_ids), 7):
        for i in range(0, len(ours.movie_ids), 11):
            start, end = ours.item_raters.indptr[i], ours.item_raters.indptr[i + 1]
            if end > start and not (np.asarray(ours.sim[u, ours.item_raters.indices[start:end]]) > 0).any():
                uid, mid = int(ours.user_ids[u]), str(ours.movie_ids[i])
                assert abs(algo.predict(uid, mid).est - ours.predict(uid, mid)) < 1e-9
                checked += 1
    assert checked > 0


def test_rating_frame_order_does_not_change_estimates(ml100k):
    """Training on shuffled rows gives the same estimates (up to float summation order)."""
    sample = ml100k.ratings.iloc[:20_000]
    a = Recommender.train(sample)
    b = Recommender.train(sample.sample(frac=1.0, random_state=1))
    pairs = pd.DataFrame({"u": sample.user_id.to_numpy()[:300], "m": sample.movie_id.to_numpy()[::-1][:300]})
    diff = [abs(a.predict(u, m) - b.predict(u, m)) for u, m in zip(pairs.u, pairs.m, strict=True)]
    assert max(diff) < 1e-6
