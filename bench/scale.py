"""`python -m bench scale [10k 100k 300k 1M]`: the scalable user KNN (`user_knn_sparse`) from 10k users up.

Ratings are generated with numpy directly (no dense users × movies matrix): 27,000 movies with Zipf-like
popularity, ~20 ratings per user, ratings from a 4-factor taste model; the same seed gives the same table.
Per size, fresh subprocesses (so each peak RSS, ``ru_maxrss``, is its own):

1. generate, `Recommender.train(..., algorithm="user_knn_sparse")` with its default parameters (top lists
   materialised, as the pipeline trains), `save`: train seconds, peak RSS, bundle size; `REPEAT` times
   (``BENCH_SCALE_REPEAT``), the sizes interleaved, the table giving the medians;
2. `Recommender.load` of that bundle (checksums verified, arrays memory-mapped): load seconds (median of 3,
   the first one warms the page cache and is not counted), and the top-20 for a known user (`explain`,
   median over 2,000 random users after a warm-up).

The last rows are the growth exponents of train time and peak RSS against ratings (slope of log-log
between consecutive sizes; 1 = linear). A separate table measures neighbour recall against the exact
neighbours (``rater_cap=0, candidates=0``: every co-rater scored, cost ~ users²) on `RECALL_USERS` users.
`python -m bench scale sweep [N]` prints recall and fit seconds against the candidate rule's two knobs
(``rater_cap``, ``candidates``) on an N-user world (default 20k). `python -m bench scale sample [N]` measures
the recall at the real size (default 1M), where no exact fit of everyone is possible: against the exact
neighbours of `SAMPLE_USERS` sampled users only (`sample_recall`).

`python -m bench scale quality 20k 100k 1M` measures quality against the world's true tastes instead: per size a
world from `simulator.world_scale` (~20 ratings per user), the model `Recommender.train` picks, and NDCG@20
graded by true taste (`simulator.loop.true_ndcg`, gain ``2^(true-1) - 1``, rated and, for a minor, adult movies
ineligible as the server excludes them) over `QUALITY_SAMPLE` random warm users, for the served lists, the
popularity lists under the same rules, and up to `QUALITY_EXACT_MAX` users the exact neighbours (every co-rater
scored, cost ~ users²) with the neighbour recall of the served fit against it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.table import render

log = logging.getLogger(__name__)

SIZES = (10_000, 100_000, 300_000)
REPEAT = 3  # train runs per size (BENCH_SCALE_REPEAT): the table gives their medians
RECALL_USERS = 20_000
QUALITY_SIZES = (20_000, 100_000)
QUALITY_SAMPLE = 2_000  # warm users whose lists are graded
QUALITY_EXACT_MAX = 20_000  # the exact neighbours (~users² pairs) are measured up to this many users
QUALITY_CHUNK = 250  # users whose true ratings of the whole catalogue are held at once (~50 MB)
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
    from app.recommender.fit_sparse_knn import list_length

    lists = list_length(ratings.groupby("movie_id").size().to_numpy(), model.params)
    return {"ratings": len(ratings), "users": len(model.user_ids), "gen_s": gen_s, "train_s": train_s,
            "rss_mb": _peak_mb(), "bundle_mb": sum(f.stat().st_size for f in path.iterdir()) / 1e6,
            "list_length": lists}


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


def neighbour_recall(exact: Any, approx: Any) -> dict[str, float]:
    """Share of each user's exact neighbours (estimate: ``nb``; ranking: ``rank_nb_idx`` with weight > 0) that
    `approx` keeps too, over all users; both fitted on the same frame (same inner ids). Models or fit fields."""
    def get(f: Any, name: str) -> Any:
        return f[name] if isinstance(f, dict) else getattr(f, name)

    def overlap(a_sets: list[set[int]], b_sets: list[set[int]]) -> float:
        total = sum(len(a) for a in a_sets)
        return sum(len(a & b) for a, b in zip(a_sets, b_sets, strict=True)) / max(total, 1)

    def est(f: Any) -> list[set[int]]:
        nb = get(f, "nb")
        return [set(nb.indices[nb.indptr[u]:nb.indptr[u + 1]].tolist()) for u in range(nb.shape[0])]

    def rank(f: Any) -> list[set[int]]:
        return [set(i[w > 0].tolist()) for i, w in zip(get(f, "rank_nb_idx"), get(f, "rank_nb_w"), strict=True)]

    nb = get(exact, "nb")
    return {"est_recall": overlap(est(exact), est(approx)), "rank_recall": overlap(rank(exact), rank(approx)),
            "est_per_user": float(sum(nb.indptr[1:] - nb.indptr[:-1]) / max(nb.shape[0], 1))}


TIE_WIDE = 2_000  # exact neighbours kept per user to see how many crowd the k-th one's similarity
TIE_WITHIN = 0.9  # "near the cut": similarity at least this share of the exact k-th neighbour's


def neighbour_margin(wide: Any, exact: Any, approx: Any, k: int) -> dict[str, float]:
    """How much the neighbours the approximate fit misses matter, beside the recall (all CSR ``nb``, same users).

    * ``sim_captured``: per user, the summed similarity of its approximate neighbours over that of its exact ones
      (every pair a fit keeps is scored exactly, so the two sums compare), mean over users;
    * ``near_cut_median``: per user, how many users are within `TIE_WITHIN` of the exact k-th neighbour's
      similarity (from the `TIE_WIDE` exact best); far more than k means the exact set is one pick among
      near-equals, and recall against that pick says little about the lists;
    * ``near_cut_over_2k``: the share of users with more than 2k such near-equals.
    """
    import numpy as np

    near = []
    for u in range(wide.shape[0]):
        w = np.sort(wide.data[wide.indptr[u]:wide.indptr[u + 1]])[::-1]
        if len(w) >= k:
            near.append(int(np.count_nonzero(w >= TIE_WITHIN * w[k - 1])))
    near_a = np.array(near)
    return {"sim_captured": sim_captured(exact, approx), "near_cut_median": float(np.median(near_a)),
            "near_cut_over_2k": float(np.mean(near_a > 2 * k)), "near_cut_users": len(near_a)}


def sim_captured(exact: Any, approx: Any) -> float:
    """Per user, the approximate neighbours' summed similarity over the exact ones' (CSR ``nb``), mean over users."""
    import numpy as np

    e, a = (np.asarray(m.sum(axis=1)).ravel() for m in (exact, approx))  # scipy's row sums: empty rows give 0
    has = e > 0
    return float(np.mean(np.minimum(a[has], e[has]) / e[has]))  # min: ties at the cut may favour either side


def _recall_frame(n_users: int, world: bool) -> Any:
    """(user_id, movie_id, rating) of `n_users`: the world generator's ratings or `ratings_frame`'s."""
    if not world:
        return ratings_frame(n_users)[["user_id", "movie_id", "rating"]]
    import pandas as pd

    from app.contracts.tables import FILES
    from simulator.world_scale import write_world

    work = Path(tempfile.mkdtemp(prefix=f"recall-{n_users}-"))
    try:
        write_world(work, n_users, N_MOVIES, n_users * RATINGS_PER_USER, seed=0, progress=False)
        return pd.read_csv(work / FILES["ratings"], usecols=["user_id", "movie_id", "rating"], dtype={"movie_id": str})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def recall_one(n_users: int, world: bool = False) -> dict[str, float]:
    """Neighbour recall of the default (capped) fit against the exact one, estimate and ranking neighbours,
    and how crowded the exact neighbours' cut is (`neighbour_margin`). `world`: ratings from
    `simulator.world_scale` (what quality is measured on) instead of `ratings_frame`."""
    from app.recommender import fit_sparse_knn
    from app.recommender.sparse_knn import SparseUserKNN

    frame = _recall_frame(n_users, world)
    p = SparseUserKNN.default_params()
    out = {}
    for name, extra in (("exact", {"rater_cap": 0, "candidates": 0}), ("capped", {}),
                        ("wide", {"rater_cap": 0, "candidates": 0, "neighbours": TIE_WIDE})):
        started = time.perf_counter()
        out[name] = fit_sparse_knn.fit(frame, {**p, **extra})
        out[f"{name}_s"] = time.perf_counter() - started
    nb = {name: out[name].fields["nb"] for name in ("exact", "capped", "wide")}
    return {"users": n_users, "ratings": "world" if world else "bench", "exact_s": out["exact_s"],
            "capped_s": out["capped_s"], **neighbour_recall(out["exact"].fields, out["capped"].fields),
            **neighbour_margin(nb["wide"], nb["exact"], nb["capped"], int(p["neighbours"])), "peak_mb": _peak_mb()}


SWEEP = ((200, 300), (500, 300), (1_000, 300), (2_000, 300), (1_000, 1_000), (3_000, 3_000), (0, 300), (0, 1_000))


def recall_sweep(n_users: int, settings: tuple[tuple[int, int], ...] = SWEEP) -> list[dict[str, float]]:
    """Recall and fit seconds of the candidate rule against its two knobs, on the world generator's ratings.

    ``(rater_cap, candidates)``; ``rater_cap`` 0 lists every co-rater (exact co-rating counts, ~users² work)
    and re-scores the `candidates` most co-rated: how far knowing every pair's count alone would get.
    """
    from app.recommender import fit_sparse_knn
    from app.recommender.sparse_knn import SparseUserKNN

    frame = _recall_frame(n_users, world=True)
    p = SparseUserKNN.default_params()
    fit_sparse_knn.fit(frame.iloc[: len(frame) // 20], p)  # warm-up: imports, allocator; not counted
    started = time.perf_counter()
    exact = fit_sparse_knn.fit(frame, {**p, "rater_cap": 0, "candidates": 0})
    rows = [{"rater_cap": 0, "candidates": 0, "fit_s": time.perf_counter() - started, "est_recall": 1.0,
             "rank_recall": 1.0, "sim_captured": 1.0}]
    for cap, cands in settings:
        started = time.perf_counter()
        got = fit_sparse_knn.fit(frame, {**p, "rater_cap": cap, "candidates": cands, "list_budget": 0})  # the
        # cap as labelled (the budget would shorten the widest lists)
        seconds = time.perf_counter() - started
        rows.append({"rater_cap": cap, "candidates": cands, "fit_s": seconds,
                     **neighbour_recall(exact.fields, got.fields),
                     "sim_captured": sim_captured(exact.fields["nb"], got.fields["nb"])})
    return rows


SAMPLE_USERS = 2_000  # users whose exact neighbours are computed at a size where the exact fit is out of reach
SAMPLE_SETTINGS = (None, (200, 300))  # None: the defaults; (200, 300): a narrower cap, for the price of recall


def sample_recall(n_users: int, sample: int = SAMPLE_USERS,
                  settings: tuple[tuple[int, int] | None, ...] = SAMPLE_SETTINGS) -> list[dict[str, float]]:
    """Recall of the capped fit at the real size, against the exact neighbours of a seeded sample of users.

    The exact fit of a million users is ~users² work (hours, and memory beyond this machine), but the exact
    neighbours of a few thousand users cost only their co-raters (`fit_sparse_knn.exact_neighbours_of`).
    ``(rater_cap, candidates)``, None meaning the defaults. One fit each, fit seconds included.
    """
    import numpy as np

    from app.recommender import fit_sparse_knn
    from app.recommender.sparse_knn import SparseUserKNN

    frame = _recall_frame(n_users, world=True)
    p = SparseUserKNN.default_params()
    fit_sparse_knn.fit(frame.iloc[: len(frame) // 50], p)  # warm-up: imports, compilation; not counted
    rows, exact = [], None
    for setting in settings:
        knobs = {"rater_cap": setting[0], "candidates": setting[1], "list_budget": 0} if setting else {}
        started = time.perf_counter()
        got = fit_sparse_knn.fit(frame, {**p, **knobs})
        seconds = time.perf_counter() - started
        if exact is None:  # same frame, same inner ids and baselines whatever the knobs
            users = np.sort(np.random.default_rng(0).choice(len(got.user_ids), min(sample, len(got.user_ids)),
                                                            replace=False))
            started = time.perf_counter()
            exact = fit_sparse_knn.exact_neighbours_of(got, p, users)
            exact_s = time.perf_counter() - started
        approx = {"nb": got.fields["nb"][users], "rank_nb_idx": got.fields["rank_nb_idx"][users],
                  "rank_nb_w": got.fields["rank_nb_w"][users]}
        q = {**p, **knobs}
        rows.append({"users": n_users, "sample": len(users), "rater_cap": int(q["rater_cap"]),
                     "list_length": fit_sparse_knn.list_length(np.diff(got.fields["item_raters"].indptr), q),
                     "candidates": int(q["candidates"]), "fit_s": seconds, "exact_sample_s": exact_s,
                     **neighbour_recall(exact, approx), "sim_captured": sim_captured(exact["nb"], approx["nb"]),
                     "peak_mb": _peak_mb()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _served(model: Any, world: Any, users: Any) -> Any:
    """(users, 20) world movie rows, -1 padded: the list the server returns to each raw user id."""
    import numpy as np

    from app.recommender.base import LIST_WIDTH

    out = np.full((len(users), LIST_WIDTH), -1, np.int64)
    for row, user in enumerate(users.tolist()):
        movies = model.recommend(int(user))
        if movies:
            out[row, : len(movies)] = world.movie_index(movies)
    return out


def quality_one(n_users: int, keep: str = "", exact: bool | None = None, **params: Any) -> dict[str, Any]:
    """NDCG@20 by true taste of served, popularity and (small worlds) exact-neighbour lists on a generated world.

    `keep`: a directory to leave the world (``world/``) and the served bundle (``bundle/``) in, for the serving
    measurements; otherwise both go to a temporary directory that is removed. `params`: model parameters.
    """
    import numpy as np
    import pandas as pd

    from app.contracts.tables import FILES
    from app.model import Recommender
    from app.recommender.base import LIST_WIDTH
    from simulator.loop import true_ndcg
    from simulator.world_scale import load_world, write_world

    exact = n_users <= QUALITY_EXACT_MAX if exact is None else exact
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"quality-{n_users}-"))
    try:
        started = time.perf_counter()
        write_world(work / "world", n_users, N_MOVIES, n_users * RATINGS_PER_USER, seed=0, progress=False)
        gen_s = time.perf_counter() - started
        world = load_world(work / "world")
        ratings = pd.read_csv(work / "world" / FILES["ratings"], usecols=["user_id", "movie_id", "rating"],
                              dtype={"movie_id": str})
        started = time.perf_counter()
        model = Recommender.train(ratings, world.users, world.movies, **params)
        train_s = time.perf_counter() - started
        train_rss = _peak_mb()
        if keep:
            model.save(work / "bundle")

        rng = np.random.default_rng(7)
        sample = np.array([u for u in rng.permutation(model.user_ids)[: 4 * QUALITY_SAMPLE].tolist()
                           if not model.is_cold(u)][:QUALITY_SAMPLE], np.int64)
        rows = world.user_index(sample)
        n_movies = len(world.movies)
        mine = ratings[ratings["user_id"].isin(sample)]
        blocked = np.zeros((len(sample), n_movies), bool)
        blocked[pd.Index(sample).get_indexer(mine["user_id"]), world.movie_index(mine["movie_id"].to_numpy())] = True
        minor = ~(world.users["age"].to_numpy()[rows] >= 18)  # the server's rule: unknown age counts as a minor
        blocked |= minor[:, None] & world.movies["adult"].to_numpy(bool)[None, :]

        # popularity under the same rules: most-rated first (ties: catalogue order), nothing blocked
        rated_n = ratings["movie_id"].value_counts()
        counts = np.zeros(n_movies, np.int64)
        counts[world.movie_index(rated_n.index.to_numpy())] = rated_n.to_numpy()
        order = np.lexsort((np.arange(n_movies), -counts))
        lists = {"ours": _served(model, world, sample),
                 "popularity": np.stack([order[~b[order]][:LIST_WIDTH] for b in blocked])}
        out: dict[str, Any] = {"users": len(model.user_ids), "ratings": len(ratings), "algorithm": model.algorithm,
                               "gen_s": gen_s, "train_s": train_s, "rss_mb": train_rss, "sample": len(sample)}
        if exact:
            started = time.perf_counter()
            ref = Recommender.train(ratings, world.users, world.movies, algorithm="user_knn_sparse",
                                    materialise=False, **{**params, "rater_cap": 0, "candidates": 0})
            out["exact_s"] = time.perf_counter() - started
            lists["exact"] = _served(ref, world, sample)
            if model.algorithm == "user_knn_sparse":
                out.update(neighbour_recall(ref, model))
            del ref
        sums = dict.fromkeys(lists, 0.0)
        for lo in range(0, len(sample), QUALITY_CHUNK):
            r = rows[lo:lo + QUALITY_CHUNK]
            true = world.true_ratings_at(np.repeat(r, n_movies), np.tile(np.arange(n_movies), len(r)))
            true = true.reshape(len(r), n_movies)
            for name, made in lists.items():  # every user has an eligible movie of gain > 0: none is dropped
                sums[name] += true_ndcg(made[lo:lo + QUALITY_CHUNK], true, ~blocked[lo:lo + QUALITY_CHUNK]) * len(r)
        out.update({f"ndcg_{name}": total / len(sample) for name, total in sums.items()})
        out["peak_mb"] = _peak_mb()
        out["loadavg"] = Path("/proc/loadavg").read_text().split()[0]  # the machine is shared: say how busy
        return out
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


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


def quality_table(sizes: list[int]) -> str:
    """`quality_one` per size, each in a fresh process (one at a time: the 1M world needs ~8 GB)."""
    rows = []
    for n in sizes:
        q = _sub("--quality", str(n))
        print(f"[quality {n:,}: {json.dumps(q)}]", file=sys.stderr, flush=True)
        rows.append(quality_row(q))
    return render(
        f"Quality against the world's true tastes: NDCG@20 over {QUALITY_SAMPLE:,} warm users",
        QUALITY_HEADERS, rows, note=QUALITY_NOTE)


QUALITY_HEADERS = ["users", "ratings", "served path", "NDCG@20 served", "NDCG@20 popularity", "served / popularity",
                   "NDCG@20 exact neighbours", "estimate-neighbour recall", "ranking-neighbour recall",
                   "world s", "train s", "exact train s", "peak RSS MB", "load avg"]
QUALITY_NOTE = ("World: simulator.world_scale (27,000 movies, ~20 ratings per user, seed 0). Served: the model "
                "Recommender.train picks by size, its top-20 (rated movies and, for minors, adult ones excluded). "
                "Popularity: most-rated first under the same rules. Exact neighbours: user_knn_sparse with "
                f"rater_cap=0, candidates=0 (every co-rater scored, cost ~ users²), up to {QUALITY_EXACT_MAX:,} "
                "users; recall: the share of its neighbours the served fit keeps. NDCG graded by true taste "
                "(gain 2^(true-1) - 1) against the best 20 eligible movies of the whole catalogue.")


def quality_row(q: dict[str, Any]) -> list[object]:
    nan = float("nan")
    return [f"{int(q['users']):,}", f"{int(q['ratings']):,}", q["algorithm"], q["ndcg_ours"], q["ndcg_popularity"],
            q["ndcg_ours"] / q["ndcg_popularity"], q.get("ndcg_exact", nan), q.get("est_recall", nan),
            q.get("rank_recall", nan), q["gen_s"], q["train_s"], q.get("exact_s", nan), q["peak_mb"],
            q.get("loadavg", "-")]


def sweep_table(n_users: int = RECALL_USERS) -> str:
    """`bench scale sweep`: `recall_sweep` in a fresh process, as a table."""
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--recall-sweep", str(n_users)], capture_output=True,
                         text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return render(
        f"The candidate rule's two knobs: neighbour recall and fit seconds, {n_users:,}-user world",
        ["rater_cap", "candidates", "fit s", "estimate-neighbour recall", "ranking-neighbour recall",
         "similarity captured"],
        [[r["rater_cap"] or "all co-raters", r["candidates"] or "all", r["fit_s"], r["est_recall"], r["rank_recall"],
          r["sim_captured"]] for r in rows],
        note="The first row is the exact fit the others are compared with. rater_cap 'all co-raters' with a "
             "candidate budget: every pair's co-rating count known (~users² work), the most co-rated re-scored. "
             "Fit = fit_sparse_knn.fit only (no top lists), one run each after a warm-up, in one process.",
    )


def sample_table(n_users: int, sample: int = SAMPLE_USERS) -> str:
    """`bench scale sample N [S]`: `sample_recall` in a fresh process, as a table."""
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--sample-recall", str(n_users), str(sample)],
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return render(
        f"Neighbour recall at {n_users:,} users, against the exact neighbours of {rows[0]['sample']:,} sampled users",
        ["rater_cap", "list length", "candidates", "fit s", "estimate-neighbour recall", "ranking-neighbour recall",
         "similarity captured", "exact neighbours per sampled user", "peak RSS MB"],
        [[r["rater_cap"], r["list_length"], r["candidates"], r["fit_s"], r["est_recall"], r["rank_recall"],
          r["sim_captured"], r["est_per_user"], r["peak_mb"]] for r in rows],
        note=f"World generator's ratings. Fit = fit_sparse_knn.fit, one run each after a warm-up, in one process; "
             f"the first row is the defaults. Exact neighbours of the sample (every co-rater scored): "
             f"{rows[0]['exact_sample_s']:.0f} s. Recall over the sampled users only.",
    )


def run(args: list[str] | tuple[str, ...] = ()) -> str:
    if "sample" in args:
        sizes = [parse_size(a) for a in args if a != "sample"]
        return sample_table(*(sizes or [1_000_000]))
    if "sweep" in args:
        return sweep_table(next((parse_size(a) for a in args if a != "sweep"), RECALL_USERS))
    if "quality" in args:
        return quality_table([parse_size(a) for a in args if a != "quality"] or list(QUALITY_SIZES))
    sizes = [parse_size(a) for a in args if a != "recall"] or list(SIZES)
    repeat = max(1, int(os.environ.get("BENCH_SCALE_REPEAT", str(REPEAT))))
    rows, results = [], []
    warm = Path(tempfile.mkdtemp(prefix="scale-warm-"))
    try:
        _sub("--train", "500", str(warm / "b"))  # warm-up: imports, page cache; not counted
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    works = {n: Path(tempfile.mkdtemp(prefix=f"scale-{n}-")) for n in sizes}
    trains: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    try:
        served: dict[int, dict[str, float]] = {}
        for r in range(repeat):  # sizes interleaved, so a slow spell of the machine touches every size alike
            for n in sizes:
                trains[n].append(_sub("--train", str(n), str(works[n] / "b")))
                print(f"[scale {n:,} train {r + 1}/{repeat}: {json.dumps(trains[n][-1])}]", file=sys.stderr,
                      flush=True)
                if r == repeat - 1:  # served right after its last train, as a release would load it
                    served[n] = _sub("--serve", str(works[n] / "b"))
                shutil.rmtree(works[n] / "b", ignore_errors=True)  # one bundle on disk at a time (4 GB at 1M)
        for n in sizes:
            t = {k: statistics.median(x[k] for x in trains[n]) for k in trains[n][0]}
            s = served[n]
            results.append({**t, **s})
            rows.append([f"{int(t['users']):,}", f"{int(t['ratings']):,}", int(t["list_length"]), t["gen_s"],
                         t["train_s"], t["rss_mb"], t["bundle_mb"], s["load_s"], s["load_cold_s"],
                         s["serve_rss_mb"], s["top20_ms"]])
            print(f"[scale {n:,}: {json.dumps({**t, **s, 'train_runs': [x['train_s'] for x in trains[n]]})}]",
                  file=sys.stderr, flush=True)
    finally:
        for work in works.values():
            shutil.rmtree(work, ignore_errors=True)
    for a, b in itertools.pairwise(results):
        rows.append([f"exponent {int(a['users']):,}→{int(b['users']):,}", "vs ratings", "", float("nan"),
                     _slope(a["train_s"], b["train_s"], a["ratings"], b["ratings"]),
                     _slope(a["rss_mb"], b["rss_mb"], a["ratings"], b["ratings"]),
                     _slope(a["bundle_mb"], b["bundle_mb"], a["ratings"], b["ratings"]),
                     float("nan"), float("nan"), float("nan"), float("nan")])
    table = render(
        f"Scale: {ALGORITHM}, {N_MOVIES:,} movies, ~{RATINGS_PER_USER} ratings per user",
        ["users", "ratings", "list length", "generate s", "train s", "train peak RSS MB", "bundle MB", "load s",
         "first load s", "serving RSS MB", "top-20 ms"],
        rows,
        note=f"Train = Recommender.train (fit + top-20 lists materialised) in a fresh process, its peak RSS "
             f"(~150 MB of it interpreter and libraries): medians of {repeat} runs, sizes interleaved "
             "(BENCH_SCALE_REPEAT). List length: the rater lists' length the list budget gives "
             "(fit_sparse_knn.budgeted_cap, at most rater_cap). Load = Recommender.load with checksums verified, "
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
        table += "\n" + render(
            "How crowded the exact neighbours' cut is",
            ["similarity captured", f"users within {TIE_WITHIN:.0%} of the k-th (median)", "share with > 2k"],
            [[r["sim_captured"], r["near_cut_median"], r["near_cut_over_2k"]]],
            note="Similarity captured: the capped neighbours' summed pearson_baseline over the exact ones' (mean "
                 "over users). Near the cut: users whose similarity is at least that share of the exact k-th "
                 f"neighbour's (k = the estimate's stored neighbours), from the {TIE_WIDE:,} exact best.",
        )
    return table


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train"]:
        print(json.dumps(train_one(int(sys.argv[2]), sys.argv[3])))
    elif sys.argv[1:2] == ["--serve"]:
        print(json.dumps(serve_one(sys.argv[2])))
    elif sys.argv[1:2] == ["--recall"]:  # --recall N [world]
        print(json.dumps(recall_one(int(sys.argv[2]), world=sys.argv[3:4] == ["world"])))
    elif sys.argv[1:2] == ["--sample-recall"]:  # --sample-recall N S: one JSON line per setting
        for row in sample_recall(int(sys.argv[2]), int(sys.argv[3])):
            print(json.dumps(row))
    elif sys.argv[1:2] == ["--recall-sweep"]:  # --recall-sweep N: one JSON line per (rater_cap, candidates)
        for row in recall_sweep(int(sys.argv[2])):
            print(json.dumps(row), flush=True)
    elif sys.argv[1:2] == ["--quality"]:  # --quality N [--keep DIR] [name=value model parameters...]
        rest = sys.argv[3:]
        keep = rest[rest.index("--keep") + 1] if "--keep" in rest else ""
        extra = {k: json.loads(v) for k, _, v in (a.partition("=") for a in rest if "=" in a)}
        print(json.dumps(quality_one(parse_size(sys.argv[2]), keep, **extra)))
    else:
        print(run(sys.argv[1:]))
