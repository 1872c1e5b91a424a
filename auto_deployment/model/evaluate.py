"""Offline evaluation: the gate's number and the ranking quality, each beside a baseline.

* RMSE and MAE on Surprise's 80/20 split (``train_test_split(test_size=0.2, random_state=42)``):
  the number the retraining gate compares with its threshold.
* precision@20, recall@20, NDCG@20, hit rate@20 and catalogue coverage on a temporal split (per
  user, the last 20% of their ratings by time is the test set; relevant = test rating ≥ 4), for
  our top-20 and for plain popularity, because a good RMSE says little about a good list.
* RMSE per gender, age band and occupation, so a model that fails one group is seen.

`python -m auto_deployment evaluate` prints a table for people, `--json` for machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.contracts.tables import Tables, load_tables
from app.logs import kv
from app.model import Recommender
from app.settings import Paths

log = logging.getLogger(__name__)

TOP_N = 20
RELEVANT = 4.0
AGE_BANDS = [(0, 18, "<18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"), (45, 56, "45-55"),
             (56, 200, "56+")]


def rating_split(ratings: pd.DataFrame, test_size: float = 0.2, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Surprise's own random split, so our RMSE is comparable with Surprise's published figures."""
    from surprise import Dataset, Reader
    from surprise.model_selection import train_test_split

    frame = ratings[["user_id", "movie_id", "rating"]].copy()
    frame["movie_id"] = frame["movie_id"].astype(str)
    data = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5)))
    trainset, testset = train_test_split(data, test_size=test_size, random_state=seed)
    train = pd.DataFrame(
        [(trainset.to_raw_uid(u), trainset.to_raw_iid(i), r) for u, i, r in trainset.all_ratings()],
        columns=["user_id", "movie_id", "rating"],
    )
    test = pd.DataFrame(testset, columns=["user_id", "movie_id", "rating"])
    return train, test


def temporal_split(ratings: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the latest `test_share` of their ratings (at least one) is the test set."""
    r = ratings.sort_values(["user_id", "timestamp", "movie_id"], kind="mergesort")
    size = r.groupby("user_id")["rating"].transform("size")
    pos = r.groupby("user_id").cumcount()
    n_test = np.ceil(size * test_share).astype(int)
    is_test = (pos >= size - n_test) & (size > 1)
    return r[~is_test], r[is_test]


def rmse_report(model: Recommender, test: pd.DataFrame) -> dict[str, float]:
    est = np.array([model.predict(u, m) for u, m in zip(test["user_id"], test["movie_id"], strict=True)])
    err = est - test["rating"].to_numpy(float)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "n_test": len(test)}


def group_rmse(model: Recommender, test: pd.DataFrame, users: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """RMSE per gender, age band and occupation (fairness): `{dimension: {group: {rmse, n}}}`."""
    if users is None or users.empty:
        return {}
    est = np.array([model.predict(u, m) for u, m in zip(test["user_id"], test["movie_id"], strict=True)])
    frame = test.assign(sq=(est - test["rating"].to_numpy(float)) ** 2)
    frame = frame.merge(users[["user_id", "age", "gender", "occupation"]], on="user_id", how="left")
    frame["age_band"] = frame["age"].map(_age_band)
    out: dict[str, dict[str, Any]] = {}
    for dim in ("gender", "age_band", "occupation"):
        groups = frame.fillna({dim: "unknown"}).groupby(dim)["sq"]
        out[dim] = {str(k): {"rmse": float(math.sqrt(v.mean())), "n": len(v)} for k, v in groups}
    return out


def _age_band(age: float) -> str:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    return "unknown"


def ranking_report(
    recommend: Callable[[int], list[str]], train: pd.DataFrame, test: pd.DataFrame, n_movies: int, n: int = TOP_N
) -> dict[str, float]:
    """Precision, recall, NDCG, hit rate at n over users with a relevant test movie; coverage."""
    relevant = test[test["rating"] >= RELEVANT].groupby("user_id")["movie_id"].apply(set)
    precision, recall, ndcg, hits = [], [], [], []
    shown: set[str] = set()
    discounts = 1.0 / np.log2(np.arange(2, n + 2))
    for user, items in relevant.items():
        lst = recommend(int(user))[:n]
        shown.update(lst)
        gains = np.array([1.0 if m in items else 0.0 for m in lst])
        found = gains.sum()
        precision.append(found / n)
        recall.append(found / len(items))
        hits.append(1.0 if found else 0.0)
        idcg = discounts[: min(len(items), n)].sum()
        ndcg.append(float((gains * discounts[: len(gains)]).sum() / idcg))
    return {
        f"precision@{n}": float(np.mean(precision)) if precision else 0.0,
        f"recall@{n}": float(np.mean(recall)) if recall else 0.0,
        f"ndcg@{n}": float(np.mean(ndcg)) if ndcg else 0.0,
        f"hit_rate@{n}": float(np.mean(hits)) if hits else 0.0,
        "coverage": len(shown) / max(1, n_movies),
        "users": len(relevant),
    }


def popularity_recommender(train: pd.DataFrame, n: int = TOP_N) -> Callable[[int], list[str]]:
    """Most-rated movies the user has not rated: the baseline every list must beat."""
    counts = train.groupby("movie_id")["rating"].size()
    ranked = counts.reset_index().sort_values(["rating", "movie_id"], ascending=[False, True])["movie_id"].tolist()
    seen = train.groupby("user_id")["movie_id"].apply(set).to_dict()

    def recommend(user: int) -> list[str]:
        mine = seen.get(user, set())
        out = []
        for m in ranked:
            if m not in mine:
                out.append(m)
                if len(out) == n:
                    break
        return out

    return recommend


def evaluate(tables: Tables, params: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Every offline metric of a model trained with `params` on `tables` (models are trained here)."""
    params = params or {}
    started = time.perf_counter()
    say = log.info if progress else log.debug
    ratings, users, movies = tables.ratings, tables.users, tables.movies

    say("rating split: training on 80%", extra=kv(ratings=len(ratings)))
    train, test = rating_split(ratings)
    t0 = time.perf_counter()
    model = Recommender.train(train, users, movies, materialise=False, **params)  # only predicts: the RMSE
    fit_s = time.perf_counter() - t0
    accuracy = rmse_report(model, test)
    say("rating split: scored", extra=kv(rmse=accuracy["rmse"], mae=accuracy["mae"], fit_s=fit_s))
    groups = group_rmse(model, test, users)

    say("temporal split: training on each user's earliest 80%")
    t_train, t_test = temporal_split(ratings)
    t_model = Recommender.train(t_train, users, movies, **params)
    n_movies = int(ratings["movie_id"].nunique())
    ours = ranking_report(t_model.recommend, t_train, t_test, n_movies)
    popular = ranking_report(popularity_recommender(t_train), t_train, t_test, n_movies)
    say("temporal split: scored", extra=kv(ndcg=ours[f"ndcg@{TOP_N}"], popularity_ndcg=popular[f"ndcg@{TOP_N}"]))
    return {
        **accuracy,
        "ranking": ours,
        "popularity": popular,
        "ndcg_lift": ours[f"ndcg@{TOP_N}"] / popular[f"ndcg@{TOP_N}"] if popular[f"ndcg@{TOP_N}"] else None,
        "groups": groups,
        "fit_seconds": fit_s,
        "seconds": time.perf_counter() - started,
        "params": {**model.params},
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as plain text for people."""
    lines = [
        f"RMSE {report['rmse']:.4f}   MAE {report['mae']:.4f}"
        f"   (80/20 split, seed 42, {report['n_test']} test ratings)",
        "",
        f"{'ranking (temporal split)':<26}{'ours':>10}{'popularity':>12}",
    ]
    for key in report["ranking"]:
        if key == "users":
            continue
        lines.append(f"{key:<26}{report['ranking'][key]:>10.4f}{report['popularity'][key]:>12.4f}")
    if report.get("ndcg_lift"):
        lines.append(f"{'NDCG lift over popularity':<26}{report['ndcg_lift']:>10.2f}x")
    for dim, groups in report.get("groups", {}).items():
        lines.append("")
        lines.append(f"RMSE by {dim}: " + ", ".join(f"{g} {v['rmse']:.3f} (n={v['n']})" for g, v in groups.items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="tables to evaluate on (default: data/); for MovieLens-100k write them first with "
                             "`python -m simulator.datasets movielens --out DIR`")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"parameter {pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(args: argparse.Namespace) -> int:
    try:
        tables = load_tables(args.data_dir or Paths.from_env().data_dir)
        params = parse_params(args.param)
    except (OSError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    if tables.ratings.empty:
        print("evaluate: no ratings to evaluate on", file=sys.stderr)
        return 2
    report = evaluate(tables, params)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else format_table(report))
    return 0
