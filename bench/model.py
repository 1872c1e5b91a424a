"""Model benchmark on MovieLens-100k: quality and cost beside Surprise's algorithms and popularity.

* RMSE on the 80/20 split (seed 42) and fit seconds, for every algorithm.
* NDCG@20 on the temporal split. Surprise algorithms rank every unseen movie by predicted rating
  (the naive way); ours ranks by neighbour support. The naive way costs tens of ms per user, so all
  rankings are scored on the same seeded sample of users (`BENCH_USERS`, default 300).
* Top-20 cost per user: the naive loop of `algo.predict` over every unseen movie + sort, against
  `Recommender.recommend` computed per request (neighbour support + rules) and as served (the list
  materialised at training), on the same users, in the same run.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from surprise import SVD, Dataset, KNNBaseline, KNNBasic, Reader

from app.model import Recommender
from auto_deployment.model.evaluate import (
    popularity_recommender,
    ranking_report,
    rating_split,
    sample_users,
    temporal_split,
)
from bench.table import render
from simulator.datasets import movielens_100k


def _surprise_fit(algo, frame):
    data = Dataset.load_from_df(frame[["user_id", "movie_id", "rating"]].astype({"movie_id": str}),
                                Reader(rating_scale=(1, 5)))
    trainset = data.build_full_trainset()
    started = time.perf_counter()
    algo.fit(trainset)
    return algo, time.perf_counter() - started


def _naive_top20(algo, user: int, movies: list[str], seen: set[str], n: int = 20) -> list[str]:
    """The way the issue warns about: predict every unseen movie in a Python loop, then sort."""
    scored = [(algo.predict(user, m).est, m) for m in movies if m not in seen]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [m for _, m in scored[:n]]


def run() -> str:
    tables = movielens_100k()
    ratings = tables.ratings
    sample_size = int(os.environ.get("BENCH_USERS", "300"))
    train, test = rating_split(ratings)
    t_train, t_test = temporal_split(ratings)
    t_test_s = sample_users(t_test, sample_size, seed=0)
    sample = set(t_test_s.loc[t_test_s.rating >= 4, "user_id"].tolist())  # the users the rankings score
    movies = sorted(t_train.movie_id.astype(str).unique())
    seen = t_train.groupby("user_id")["movie_id"].apply(set).to_dict()
    n_movies = ratings.movie_id.nunique()
    rows, costs = [], {}

    # ours
    started = time.perf_counter()
    ours = Recommender.train(train, tables.users, tables.movies)
    fit_s = time.perf_counter() - started
    err = np.array([ours.predict(u, m) - r for u, m, r in zip(test.user_id, test.movie_id, test.rating, strict=True)])
    t_ours = Recommender.train(t_train, tables.users, tables.movies)
    rank = ranking_report(t_ours.recommend, t_train, t_test_s, n_movies)
    rows.append(["ours (KNNBaseline estimate + neighbour-support top-20)", float(np.sqrt(np.mean(err**2))),
                 rank["ndcg@20"], fit_s])
    computed = dataclasses.replace(t_ours, top_lists=None)  # the same model, lists not materialised
    for key, model in (("ours", t_ours), ("computed", computed)):
        timings = []
        for u in sorted(sample):
            t0 = time.perf_counter()
            model.recommend(u)
            timings.append(time.perf_counter() - t0)
        costs[key] = np.array(timings) * 1e3

    algos = {
        "Surprise KNNBasic cosine (user)": lambda: KNNBasic(sim_options={"name": "cosine", "user_based": True},
                                                            verbose=False),
        "Surprise KNNBaseline pearson_baseline (user)": lambda: KNNBaseline(
            sim_options={"name": "pearson_baseline", "user_based": True}, verbose=False),
        "Surprise SVD": lambda: SVD(random_state=0),
    }
    for name, make in algos.items():
        algo, fit_s = _surprise_fit(make(), train)
        err = np.array([algo.predict(u, m).est - r
                        for u, m, r in zip(test.user_id, test.movie_id, test.rating, strict=True)])
        t_algo, _ = _surprise_fit(make(), t_train)
        naive_times = []

        def recommend(user, t_algo=t_algo, naive_times=naive_times):
            t0 = time.perf_counter()
            out = _naive_top20(t_algo, user, movies, seen.get(user, set()))
            naive_times.append(time.perf_counter() - t0)
            return out

        rank = ranking_report(recommend, t_train, t_test_s, n_movies)
        rows.append([name + " (top-20 by predicted rating)", float(np.sqrt(np.mean(err**2))), rank["ndcg@20"], fit_s])
        if name.startswith("Surprise KNNBaseline"):
            costs["naive"] = np.array(naive_times) * 1e3

    pop = ranking_report(popularity_recommender(t_train), t_train, t_test_s, n_movies)
    rows.append(["popularity", float("nan"), pop["ndcg@20"], 0.0])
    quality = render(
        f"Model quality on MovieLens-100k (RMSE: 80/20 split seed 42; NDCG@20: temporal split, {len(sample)} users)",
        ["algorithm", "RMSE", "NDCG@20", "fit s"],
        rows,
    )
    naive, ours_ms, computed_ms = costs["naive"], costs["ours"], costs["computed"]
    cost = render(
        "Top-20 cost per warm user (ms), same users, same run",
        ["method", "median", "p95", "ratio to ours (median)"],
        [
            ["naive: algo.predict loop over unseen movies + sort", float(np.median(naive)),
             float(np.percentile(naive, 95)), float(np.median(naive) / np.median(ours_ms))],
            ["ours, computed: neighbour support + rules per request", float(np.median(computed_ms)),
             float(np.percentile(computed_ms, 95)), float(np.median(computed_ms) / np.median(ours_ms))],
            ["ours, served: list materialised at training (row lookup)", float(np.median(ours_ms)),
             float(np.percentile(ours_ms, 95)), 1.0],
        ],
    )
    return quality + "\n" + cost
