"""Quality figures beyond the gate's RMSE: intervals, what the lists expose, fairness gaps.

Every figure here is a plain formula over arrays, so a test can check it by hand:

* **intervals** (95 %, normal approximation, which holds for the thousands of ratings a run scores):
  MAE and any mean ± z·s/√n; RMSE as the square root of the interval of the mean squared error
  (the square root is monotone, so the coverage carries over). Analytic rather than bootstrapped:
  same answer at n in the thousands, no random seed, and milliseconds instead of seconds.
* **what the lists expose** (Kaminskas & Bridge 2016, Abdollahpouri et al. 2019):
  novelty = mean self-information −log2 p(i) of listed movies, p(i) = (raters of i + 1) / (users + 1)
  in the training data (add-one, so a movie nobody rated is finite); intra-list diversity = mean
  over pairs in a list of 1 − Jaccard of their genre sets; popularity bias = average
  recommendation popularity (ARP, mean training raters of a listed movie), the share of listed
  movies from the short head (the most-rated movies holding half the training ratings), and the
  Gini coefficient of exposure over the catalogue (0: every movie shown equally, 1: one movie only).
* **fairness gaps**: a group's figure against the rest of the users with Welch's z-test on the
  per-rating squared errors (RMSE) or per-user NDCG; a gap is flagged when its p-value is below
  0.05 divided by the number of groups of the dimension (Bonferroni), so ten occupations do not
  produce a "significant" gap by chance.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
HEAD_SHARE = 0.5  # the short head: the most-rated movies that together hold this share of the ratings


def _z(confidence: float = CONFIDENCE) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean with its normal-approximation interval; no interval below two values."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"value": mean, "low": None, "high": None, "n": n}
    half = _z(confidence) * float(x.std(ddof=1)) / math.sqrt(n)
    return {"value": mean, "low": mean - half, "high": mean + half, "n": n}


def rmse_interval(errors: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """RMSE with the square root of the interval of the mean squared error (lower end floored at 0)."""
    mse = mean_interval(np.asarray(errors, dtype=float) ** 2, confidence)
    if mse["value"] is None:
        return mse
    out = {"value": math.sqrt(mse["value"]), "low": None, "high": None, "n": mse["n"]}
    if mse["low"] is not None:
        out["low"] = math.sqrt(max(0.0, mse["low"]))
        out["high"] = math.sqrt(mse["high"])
    return out


def accuracy_intervals(errors: Sequence[float] | np.ndarray) -> dict[str, dict[str, Any]]:
    """RMSE and MAE of prediction errors, each with its interval."""
    e = np.asarray(errors, dtype=float)
    return {"rmse": rmse_interval(e), "mae": mean_interval(np.abs(e))}


def welch_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p-value of Welch's z-test for equal means (None when a side has fewer than 2 values)."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = float(a.mean() - b.mean())
    if se == 0:
        return 1.0 if diff == 0 else 0.0
    return float(2 * stats.norm.sf(abs(diff) / se))


def group_gaps(values: pd.Series, groups: pd.Series, kind: str) -> dict[str, dict[str, Any]]:
    """Per group: figure with interval, gap to the overall figure, Welch p against the rest, flag.

    `kind` is ``"rmse"`` (values are errors; the test compares squared errors) or ``"mean"``
    (values are per-user scores such as NDCG).
    """
    v = values.to_numpy(float)
    g = groups.astype(str).to_numpy()
    names = sorted(set(g.tolist()))
    figure = rmse_interval if kind == "rmse" else mean_interval
    overall = figure(v)["value"]
    tested = v**2 if kind == "rmse" else v
    limit = ALPHA / max(1, len(names))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = g == name
        entry = figure(v[mine])
        p = welch_p(tested[mine], tested[~mine])
        entry["gap"] = None if entry["value"] is None or overall is None else entry["value"] - overall
        entry["p"] = p
        entry["significant"] = bool(p is not None and p < limit)
        out[name] = entry
    return out


def novelty(lists: Iterable[Sequence[str]], raters: dict[str, int], n_users: int) -> float | None:
    """Mean self-information −log2((raters + 1) / (users + 1)) of every listed movie."""
    values = [-math.log2((raters.get(m, 0) + 1) / (n_users + 1)) for lst in lists for m in lst]
    return float(np.mean(values)) if values else None


def genre_sets(movies: pd.DataFrame) -> dict[str, frozenset[str]]:
    """Movie id → its genres (``a|b|c`` in the movies table); movies without genres are left out."""
    if movies is None or movies.empty or "genres" not in movies.columns:
        return {}
    out = {}
    for movie, genres in zip(movies["movie_id"].astype(str), movies["genres"], strict=True):
        if isinstance(genres, str) and genres.strip():
            out[movie] = frozenset(x.strip() for x in genres.split("|") if x.strip())
    return out


def intra_list_diversity(lists: Iterable[Sequence[str]], genres: dict[str, frozenset[str]]) -> float | None:
    """Mean over lists of the mean 1 − Jaccard(genres) over pairs of listed movies with genres.

    Vectorised (an evaluation scores up to 100,000 lists of 20, 190 pairs each): genres become bit masks in
    64-bit words, each pair of list positions is one numpy pass over every list.
    """
    lists = [list(lst) for lst in lists]
    vocab = {g: i for i, g in enumerate(sorted({g for s in genres.values() for g in s}))}
    width = max((len(lst) for lst in lists), default=0)
    if not vocab or width < 2:
        return None
    movies = list(genres)
    row = {m: i for i, m in enumerate(movies)}
    masks = np.zeros((len(movies) + 1, (len(vocab) + 63) // 64), np.uint64)  # last row: no genres known
    for i, m in enumerate(movies):
        for g in genres[m]:
            masks[i, vocab[g] // 64] |= np.uint64(1) << np.uint64(vocab[g] % 64)
    unknown = len(movies)
    pos = np.full((len(lists), width), unknown, np.int64)
    for r, lst in enumerate(lists):  # each list's known movies first, in order (pairs among them only)
        known = [row[m] for m in lst if m in row]
        pos[r, : len(known)] = known
    total, pairs = np.zeros(len(lists)), np.zeros(len(lists))
    for a, b in itertools.combinations(range(width), 2):
        both = (pos[:, a] != unknown) & (pos[:, b] != unknown)
        ma, mb = masks[pos[:, a]], masks[pos[:, b]]
        inter = np.bitwise_count(ma & mb).sum(axis=1)
        union = np.bitwise_count(ma | mb).sum(axis=1)
        total += np.where(both, 1.0 - inter / np.maximum(union, 1), 0.0)
        pairs += both
    scored = pairs > 0
    return float(np.mean(total[scored] / pairs[scored])) if scored.any() else None


def short_head(raters: dict[str, int], share: float = HEAD_SHARE) -> set[str]:
    """The most-rated movies (ties by id) whose raters add up to `share` of all ratings."""
    ranked = sorted(raters.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(c for _, c in ranked)
    head, running = set(), 0
    for movie, count in ranked:
        if running >= share * total:
            break
        head.add(movie)
        running += count
    return head


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 equal, → 1 concentrated on one)."""
    x = np.sort(np.asarray(counts, dtype=float))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float((2 * (ranks * x).sum()) / (n * x.sum()) - (n + 1) / n)


def exposure(lists: Iterable[Sequence[str]], catalogue: Iterable[str], raters: dict[str, int],
             genres: dict[str, frozenset[str]], n_users: int) -> dict[str, Any]:
    """What a set of lists shows: novelty, diversity, popularity bias, exposure Gini."""
    lists = [list(lst) for lst in lists]
    shown = [m for lst in lists for m in lst]
    catalogue = list(dict.fromkeys(str(m) for m in catalogue))
    times = pd.Series(shown, dtype=object).value_counts() if shown else pd.Series(dtype=float)
    head = short_head(raters)
    return {
        "novelty": novelty(lists, raters, n_users),
        "intra_list_diversity": intra_list_diversity(lists, genres),
        "avg_popularity": float(np.mean([raters.get(m, 0) for m in shown])) if shown else None,
        "short_head_share": float(np.mean([m in head for m in shown])) if shown else None,
        "exposure_gini": gini([int(times.get(m, 0)) for m in catalogue]),
    }
