"""Offline evaluation: the gate's number and the ranking quality, each beside a baseline.

* RMSE and MAE on Surprise's 80/20 split (``train_test_split(test_size=0.2, random_state=42)``):
  the number the retraining gate compares with its threshold.
* precision@20, recall@20, NDCG@20, hit rate@20 and catalogue coverage on a temporal split (per
  user, the last 20% of their ratings by time is the test set; relevant = test rating ≥ 4), for
  our top-20 and for plain popularity, because a good RMSE says little about a good list. Over at
  most `RANKING_USERS` users with a relevant test movie (a seeded sample above that: the 1M-user
  service), as are the exposure figures; the report's ``ranking.users`` says how many.
* RMSE per gender, age band and occupation, so a model that fails one group is seen.
* from `auto_deployment.model.quality`: 95 % intervals of RMSE, MAE and NDCG; novelty, intra-list
  diversity and popularity bias of the lists (ours beside popularity); fairness: RMSE and NDCG per
  group with intervals, the gap to the overall figure and whether it is significant.

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

from app.contracts.tables import MODEL_TABLES, Tables, load_tables
from app.logs import kv
from app.model import Recommender
from app.settings import Paths
from auto_deployment.model import quality

log = logging.getLogger(__name__)

TOP_N = 20
RELEVANT = 4.0
RANKING_USERS = 100_000  # users with a relevant temporal-test movie whose lists are scored (`sample_users`)
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


def predictions(model: Recommender, test: pd.DataFrame, progress: bool = False) -> np.ndarray:
    """The model's estimate of every test rating (a bar on a terminal: this is the slow loop)."""
    from tqdm import tqdm

    pairs = zip(test["user_id"], test["movie_id"], strict=True)
    return np.array([model.predict(u, m) for u, m in tqdm(pairs, total=len(test), desc="predict", unit="rating",
                                                             disable=None if progress else True, leave=False)],
                    dtype=float)


def rmse_report(model: Recommender, test: pd.DataFrame, est: np.ndarray | None = None) -> dict[str, float]:
    est = predictions(model, test) if est is None else est
    err = est - test["rating"].to_numpy(float)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "n_test": len(test)}


def group_rmse(model: Recommender, test: pd.DataFrame, users: pd.DataFrame,
               est: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """RMSE per gender, age band and occupation (fairness): `{dimension: {group: {rmse, n}}}`."""
    if users is None or users.empty:
        return {}
    est = predictions(model, test) if est is None else est
    frame = test.assign(sq=(est - test["rating"].to_numpy(float)) ** 2)
    frame = frame.merge(users[["user_id", "age", "gender", "occupation"]], on="user_id", how="left")
    frame["age_band"] = frame["age"].map(_age_band)
    out: dict[str, dict[str, Any]] = {}
    for dim in ("gender", "age_band", "occupation"):
        groups = frame.fillna({dim: "unknown"}).groupby(dim)["sq"]
        out[dim] = {str(k): {"rmse": float(math.sqrt(v.mean())), "n": len(v)} for k, v in groups}
    return out


DIMENSIONS = ("gender", "age_band", "occupation")


def user_groups(users: pd.DataFrame) -> pd.DataFrame:
    """user_id → gender, age band, occupation (missing → "unknown")."""
    frame = users[["user_id", "age", "gender", "occupation"]].copy()
    frame["age_band"] = frame["age"].map(_age_band)
    return frame[["user_id", *DIMENSIONS]].fillna({d: "unknown" for d in DIMENSIONS})


def fairness(test: pd.DataFrame, est: np.ndarray, ndcg_per_user: dict[int, float],
             users: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """`{dimension: {group: {"rmse": ..., "ndcg": ...}}}`: each figure with interval, gap, p, flag."""
    if users is None or users.empty:
        return {}
    groups = user_groups(users)
    errors = test[["user_id"]].assign(err=est - test["rating"].to_numpy(float)).merge(groups, on="user_id", how="left")
    ndcg = pd.DataFrame({"user_id": list(ndcg_per_user), "ndcg": list(ndcg_per_user.values())})
    ndcg = ndcg.astype({"user_id": "int64"}).merge(groups, on="user_id", how="left")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dim in DIMENSIONS:
        rmse = quality.group_gaps(errors["err"], errors[dim].fillna("unknown"), "rmse")
        by_ndcg = quality.group_gaps(ndcg["ndcg"], ndcg[dim].fillna("unknown"), "mean") if len(ndcg) else {}
        out[dim] = {g: {"rmse": rmse.get(g), "ndcg": by_ndcg.get(g)} for g in sorted(set(rmse) | set(by_ndcg))}
    return out


def _age_band(age: float) -> str:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    return "unknown"


def ranking_report(
    recommend: Callable[[int], list[str]], train: pd.DataFrame, test: pd.DataFrame, n_movies: int, n: int = TOP_N,
    details: dict[str, Any] | None = None, progress: bool = False,
) -> dict[str, float]:
    """Precision, recall, NDCG, hit rate at n over users with a relevant test movie; coverage.

    `details`, when given, receives each user's list (``lists``) and NDCG (``ndcg``) for the
    figures of `quality` (exposure, per-group NDCG).
    """
    from tqdm import tqdm

    relevant = test[test["rating"] >= RELEVANT].groupby("user_id")["movie_id"].apply(set)
    precision, recall, ndcg, hits = [], [], [], []
    shown: set[str] = set()
    discounts = 1.0 / np.log2(np.arange(2, n + 2))
    lists: dict[int, list[str]] = {}
    for user, items in tqdm(relevant.items(), total=len(relevant), desc="rank", unit="user",
                            disable=None if progress else True, leave=False):
        lst = recommend(int(user))[:n]
        lists[int(user)] = lst
        shown.update(lst)
        gains = np.array([1.0 if m in items else 0.0 for m in lst])
        found = gains.sum()
        precision.append(found / n)
        recall.append(found / len(items))
        hits.append(1.0 if found else 0.0)
        idcg = discounts[: min(len(items), n)].sum()
        ndcg.append(float((gains * discounts[: len(gains)]).sum() / idcg))
    if details is not None:
        details["lists"] = lists
        details["ndcg"] = dict(zip(lists, ndcg, strict=True))
    return {
        f"precision@{n}": float(np.mean(precision)) if precision else 0.0,
        f"recall@{n}": float(np.mean(recall)) if recall else 0.0,
        f"ndcg@{n}": float(np.mean(ndcg)) if ndcg else 0.0,
        f"hit_rate@{n}": float(np.mean(hits)) if hits else 0.0,
        "coverage": len(shown) / max(1, n_movies),
        "users": len(relevant),
    }


def popularity_recommender(train: pd.DataFrame, n: int = TOP_N,
                           for_users: np.ndarray | None = None) -> Callable[[int], list[str]]:
    """Most-rated movies the user has not rated: the baseline every list must beat.

    `for_users`: the only users it will be asked about (their rated sets are all it keeps).
    """
    counts = train.groupby("movie_id")["rating"].size()
    ranked = counts.reset_index().sort_values(["rating", "movie_id"], ascending=[False, True])["movie_id"].tolist()
    asked = train if for_users is None else train[train["user_id"].isin(for_users)]
    seen = asked.groupby("user_id")["movie_id"].apply(set).to_dict()

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


def sample_users(test: pd.DataFrame, limit: int, seed: int = 42) -> pd.DataFrame:
    """The test rows of at most `limit` of the users `ranking_report` scores (a relevant test movie), drawn
    without replacement from their sorted ids; every row when there are no more than `limit`. A mean over
    100,000 users has an interval a few thousandths wide; lists for a million cost minutes."""
    users = np.sort(test.loc[test["rating"] >= RELEVANT, "user_id"].unique())
    if len(users) <= limit:
        return test
    chosen = np.random.default_rng(seed).choice(users, size=limit, replace=False)
    return test[test["user_id"].isin(chosen)]


def evaluate(tables: Tables, params: dict[str, Any] | None = None, progress: bool = True,
             ranking_users: int = RANKING_USERS) -> dict[str, Any]:
    """Every offline metric of a model trained with `params` on `tables` (models are trained here).

    RMSE is over every held-out rating; the ranking figures over the temporal test set of at most
    `ranking_users` users (`sample_users`), whose lists are computed on demand (none materialised).
    """
    params = params or {}
    started = time.perf_counter()
    say = log.info if progress else log.debug
    ratings, users, movies = tables.ratings, tables.users, tables.movies

    say("rating split: training on 80%", extra=kv(ratings=len(ratings)))
    train, test = rating_split(ratings)
    t0 = time.perf_counter()
    model = Recommender.train(train, users, movies, materialise=False, **params)  # only predicts: the RMSE
    fit_s = time.perf_counter() - t0
    est = predictions(model, test, progress)
    accuracy = rmse_report(model, test, est)
    say("rating split: scored", extra=kv(rmse=accuracy["rmse"], mae=accuracy["mae"], fit_s=fit_s))
    groups = group_rmse(model, test, users, est)
    used_params = {**model.params}
    del model, train  # before the second fit: at 1M users the first model alone is ~3 GB of the step's peak

    say("temporal split: training on each user's earliest 80%")
    t_train, t_test = temporal_split(ratings)
    t_test = sample_users(t_test, ranking_users)
    t_model = Recommender.train(t_train, users, movies, materialise=False, **params)
    n_movies = int(ratings["movie_id"].nunique())
    ours_details: dict[str, Any] = {}
    popular_details: dict[str, Any] = {}
    ours = ranking_report(t_model.recommend, t_train, t_test, n_movies, details=ours_details, progress=progress)
    popular = ranking_report(popularity_recommender(t_train, for_users=t_test["user_id"].unique()), t_train, t_test,
                             n_movies, details=popular_details, progress=progress)
    say("temporal split: scored", extra=kv(ndcg=ours[f"ndcg@{TOP_N}"], popularity_ndcg=popular[f"ndcg@{TOP_N}"]))
    raters = t_train.groupby("movie_id")["user_id"].nunique().to_dict()
    genres = quality.genre_sets(movies)
    catalogue = ratings["movie_id"].astype(str).unique()
    n_users = int(t_train["user_id"].nunique())
    return {
        **accuracy,
        "intervals": {
            **quality.accuracy_intervals(est - test["rating"].to_numpy(float)),
            f"ndcg@{TOP_N}": quality.mean_interval(list(ours_details["ndcg"].values())),
            f"popularity_ndcg@{TOP_N}": quality.mean_interval(list(popular_details["ndcg"].values())),
        },
        "exposure": {
            "ours": quality.exposure(ours_details["lists"].values(), catalogue, raters, genres, n_users),
            "popularity": quality.exposure(popular_details["lists"].values(), catalogue, raters, genres, n_users),
        },
        "fairness": fairness(test, est, ours_details["ndcg"], users),
        "ranking": ours,
        "popularity": popular,
        "ndcg_lift": ours[f"ndcg@{TOP_N}"] / popular[f"ndcg@{TOP_N}"] if popular[f"ndcg@{TOP_N}"] else None,
        "groups": groups,
        "fit_seconds": fit_s,
        "seconds": time.perf_counter() - started,
        "params": used_params,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as plain text for people."""
    lines = [
        f"RMSE {report['rmse']:.4f}   MAE {report['mae']:.4f}"
        f"   (80/20 split, seed 42, {report['n_test']} test ratings)",
        "",
        f"{'ranking (temporal split)':<26}{'ours':>10}{'popularity':>12}"
        f"   ({report['ranking'].get('users', 0)} users)",
    ]
    for key in report["ranking"]:
        if key == "users":
            continue
        lines.append(f"{key:<26}{report['ranking'][key]:>10.4f}{report['popularity'][key]:>12.4f}")
    if report.get("ndcg_lift"):
        lines.append(f"{'NDCG lift over popularity':<26}{report['ndcg_lift']:>10.2f}x")
    exposure = report.get("exposure") or {}
    for key in (exposure.get("ours") or {}):
        ours, popular = exposure["ours"][key], exposure["popularity"][key]
        lines.append(f"{key:<26}{_num(ours):>10}{_num(popular):>12}")
    intervals = report.get("intervals") or {}
    if intervals:
        lines.append("")
        lines.append("95% intervals: " + ", ".join(
            f"{k} [{_num(v['low'])}, {_num(v['high'])}]" for k, v in intervals.items()))
    for dim, groups in report.get("groups", {}).items():
        lines.append("")
        lines.append(f"RMSE by {dim}: " + ", ".join(f"{g} {v['rmse']:.3f} (n={v['n']})" for g, v in groups.items()))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


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
        tables = load_tables(args.data_dir or Paths.from_env().data_dir, MODEL_TABLES)
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
