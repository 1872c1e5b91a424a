"""`python -m bench scale [10k 100k 300k 1M]`: the scalable user KNN (`user_knn_sparse`) from 10k users up.

Ratings are generated with numpy directly (no dense users × movies matrix): 27,000 movies with Zipf-like
popularity, ~20 ratings per user, ratings from a 4-factor taste model; the same seed gives the same table.
Per size, fresh subprocesses (so each peak RSS, ``ru_maxrss``, is its own):

1. generate, `Recommender.train(..., algorithm="user_knn_sparse")` with its default parameters (top lists
   materialised, as the pipeline trains), `save`: train seconds, peak RSS, bundle size;
2. `Recommender.load` of that bundle (checksums verified, arrays memory-mapped): load seconds (median of 3,
   the first one warms the page cache and is not counted), and the top-20 for a known user (`explain`,
   median over 2,000 random users after a warm-up).

The last rows are the growth exponents of train time and peak RSS against ratings (slope of log-log
between consecutive sizes; 1 = linear). A separate table measures neighbour recall against the exact
neighbours (``rater_cap=0, candidates=0``: every co-rater scored, cost ~ users²) on `RECALL_USERS` users.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.table import render

log = logging.getLogger(__name__)

SIZES = (10_000, 100_000, 300_000)
RECALL_USERS = 20_000
N_MOVIES = 27_000
RATINGS_PER_USER = 20
ALGORITHM = "user_knn_sparse"


def ratings_frame(n_users: int, n_movies: int = N_MOVIES, per_user: int = RATINGS_PER_USER, seed: int = 0):
    """A sparse random ratings table: popular movies are rated often, tastes are low-rank, no dense matrix."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = np.clip(rng.poisson(per_user, n_users), 5, None)
    pop = 1.0 / np.arange(1, n_movies + 1) ** 0.9
    pop /= pop.sum()
    users = np.repeat(np.arange(n_users), counts)
    movies = rng.choice(n_movies, size=len(users), p=pop)
    keep = ~pd.DataFrame({"u": users, "m": movies}).duplicated().to_numpy()
    users, movies = users[keep], movies[keep]
    taste_u = rng.normal(0, 0.6, (n_users, 4))
    taste_m = rng.normal(0, 0.6, (n_movies, 4))
    raw = 3.5 + np.einsum("ij,ij->i", taste_u[users], taste_m[movies]) + rng.normal(0, 0.7, len(users))
    return pd.DataFrame({
        "user_id": users.astype(np.int64) + 1,
        "movie_id": np.char.add("m", movies.astype(str)),
        "rating": np.clip(np.rint(raw), 1, 5).astype(int),
        "timestamp": np.arange(len(users)),
    })


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_one(n_users: int, out: str) -> dict[str, float]:
    """Generate, train and save once in this process: seconds, peak RSS, bundle size, ratings."""
    from app.model import Recommender

    started = time.perf_counter()
    ratings = ratings_frame(n_users)
    gen_s = time.perf_counter() - started
    started = time.perf_counter()
    model = Recommender.train(ratings, algorithm=ALGORITHM)
    train_s = time.perf_counter() - started
    path = model.save(out)
    return {"ratings": len(ratings), "users": len(model.user_ids), "gen_s": gen_s, "train_s": train_s,
            "rss_mb": _peak_mb(), "bundle_mb": sum(f.stat().st_size for f in path.iterdir()) / 1e6}


def serve_one(bundle: str) -> dict[str, float]:
    """Load the bundle (verified, memory-mapped) and time the top-20 of random known users."""
    import numpy as np

    from app.model import Recommender

    loads = []
    for _ in range(4):
        started = time.perf_counter()
        model = Recommender.load(bundle)
        loads.append(time.perf_counter() - started)
    rss_after_load = _peak_mb()
    users = np.random.default_rng(1).choice(model.user_ids, 2_000).tolist()
    for u in users[:200]:
        model.explain(u)
    took = []
    for u in users:
        started = time.perf_counter_ns()
        model.explain(u)
        took.append(time.perf_counter_ns() - started)
    return {"load_s": statistics.median(loads[1:]), "load_cold_s": loads[0], "top20_ms": statistics.median(took) / 1e6,
            "serve_rss_mb": rss_after_load}


def recall_one(n_users: int) -> dict[str, float]:
    """Neighbour recall of the default (capped) fit against the exact one, estimate and ranking neighbours."""
    import numpy as np

    from app.recommender import fit_sparse_knn
    from app.recommender.sparse_knn import SparseUserKNN

    frame = ratings_frame(n_users)[["user_id", "movie_id", "rating"]]
    p = SparseUserKNN.default_params()
    out = {}
    for name, extra in (("exact", {"rater_cap": 0, "candidates": 0}), ("capped", {})):
        started = time.perf_counter()
        out[name] = fit_sparse_knn.fit(frame, {**p, **extra})
        out[f"{name}_s"] = time.perf_counter() - started
    ex, ap = out["exact"].fields, out["capped"].fields

    def overlap(a_sets, b_sets) -> float:
        total = sum(len(a) for a in a_sets)
        return sum(len(a & b) for a, b in zip(a_sets, b_sets, strict=True)) / max(total, 1)

    def est(nb):
        return [set(nb.indices[nb.indptr[u]:nb.indptr[u + 1]].tolist()) for u in range(nb.shape[0])]

    def rank(f):
        return [set(i[w > 0].tolist()) for i, w in zip(f["rank_nb_idx"], f["rank_nb_w"], strict=True)]

    return {"users": n_users, "exact_s": out["exact_s"], "capped_s": out["capped_s"],
            "est_recall": overlap(est(ex["nb"]), est(ap["nb"])), "rank_recall": overlap(rank(ex), rank(ap)),
            "est_per_user": float(np.mean(np.diff(ex["nb"].indptr))), "peak_mb": _peak_mb()}


def _sub(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.scale", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> int:
    """``10k`` → 10,000, ``1M`` → 1,000,000, ``2500`` → 2,500."""
    t = text.strip().lower().replace(",", "").replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t.rstrip("km")) * mult)


def _slope(a: float, b: float, x: float, y: float) -> float:
    return math.log(b / a) / math.log(y / x) if a > 0 and b > 0 and x > 0 and y > x else float("nan")


def run(args: list[str] | tuple[str, ...] = ()) -> str:
    sizes = [parse_size(a) for a in args if a != "recall"] or list(SIZES)
    rows, results = [], []
    warm = Path(tempfile.mkdtemp(prefix="scale-warm-"))
    try:
        _sub("--train", "500", str(warm / "b"))  # warm-up: imports, page cache; not counted
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"scale-{n}-"))
        try:
            t = _sub("--train", str(n), str(work / "b"))
            s = _sub("--serve", str(work / "b"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append({**t, **s})
        rows.append([f"{int(t['users']):,}", f"{int(t['ratings']):,}", t["gen_s"], t["train_s"], t["rss_mb"],
                     t["bundle_mb"], s["load_s"], s["load_cold_s"], s["serve_rss_mb"], s["top20_ms"]])
        print(f"[scale {n:,}: {json.dumps({**t, **s})}]", file=sys.stderr, flush=True)
    for a, b in itertools.pairwise(results):
        rows.append([f"exponent {int(a['users']):,}→{int(b['users']):,}", "vs ratings", float("nan"),
                     _slope(a["train_s"], b["train_s"], a["ratings"], b["ratings"]),
                     _slope(a["rss_mb"], b["rss_mb"], a["ratings"], b["ratings"]),
                     _slope(a["bundle_mb"], b["bundle_mb"], a["ratings"], b["ratings"]),
                     float("nan"), float("nan"), float("nan"), float("nan")])
    table = render(
        f"Scale: {ALGORITHM}, {N_MOVIES:,} movies, ~{RATINGS_PER_USER} ratings per user",
        ["users", "ratings", "generate s", "train s", "train peak RSS MB", "bundle MB", "load s",
         "first load s", "serving RSS MB", "top-20 ms"],
        rows,
        note="Train = Recommender.train (fit + top-20 lists materialised) in a fresh process, its peak RSS "
             "(~150 MB of it interpreter and libraries). Load = Recommender.load with checksums verified, "
             "arrays memory-mapped (median of 3 after a first, page-cache-warming load). top-20 = explain() "
             "of a random known user, median of 2,000. Exponent rows: log-log slope against ratings of train "
             "s, peak RSS and bundle size.",
    )
    if "recall" in args or not args:
        r = _sub("--recall", str(RECALL_USERS))
        table += "\n" + render(
            f"Neighbour recall against the exact neighbours, {RECALL_USERS:,} users",
            ["users", "exact fit s", "capped fit s", "estimate-neighbour recall", "ranking-neighbour recall",
             "exact neighbours per user", "peak RSS MB"],
            [[f"{int(r['users']):,}", r["exact_s"], r["capped_s"], r["est_recall"], r["rank_recall"],
              r["est_per_user"], r["peak_mb"]]],
            note="Exact: rater_cap=0, candidates=0 (every co-rater scored). Capped: the defaults. Recall: the "
                 "share of each user's exact neighbours the capped fit also keeps, over all users.",
        )
    return table


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"]:
        print(json.dumps(train_one(int(sys.argv[2]), sys.argv[3])))
    elif sys.argv[1:2] == ["--serve"]:
        print(json.dumps(serve_one(sys.argv[2])))
    elif sys.argv[1:2] == ["--recall"]:
        print(json.dumps(recall_one(int(sys.argv[2]))))
    else:
        print(run(sys.argv[1:]))
