"""Training adapter of `SparseUserKNN`: the KNNBaseline fit without any n × n array.

Only `Recommender.train` imports this module (through the registry's ``fitter``). It computes what
`fit_knn` gets from Surprise, the same way, but keeps each user's neighbours only:

* inner ids in order of first appearance and raters in insertion order, as Surprise's trainset
  (the estimate's ties, and every list's, depend on them);
* ALS baselines: Surprise's ``baseline_als`` loop, vectorised with ``bincount`` (same sums, same order
  of epochs; equal to ~1e-15);
* ``pearson_baseline`` with shrinkage, for the pairs of users who co-rated something only: row blocks of
  the sparse products ``B·Bᵀ`` (co-rating counts), ``E·Eᵀ``, ``E²·Bᵀ``, ``B·E²ᵀ`` (E the baseline
  residuals, B who rated what). A block's memory grows with its co-raters, the total cost with
  ratings × co-raters. Optional pruning (``candidates``) keeps, per user, only the users with the most
  co-ratings before the exact re-scoring; 0 keeps every co-rater (exact top-k).
* per user, the ``neighbours`` most similar (pearson_baseline > 0) for the estimate, and the
  ``rank_neighbours`` best by cosine(co-rated) × max(0, pearson_baseline) for the ranking, as
  `fit_knn.ranking_neighbours` picks them from the dense matrix.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from app.recommender.base import Fit

log = logging.getLogger(__name__)

BLOCK_PAIRS = 4_000_000  # co-rating pairs per row block: bounds a block's memory (~ 40 bytes a pair per product)


def fit(frame: pd.DataFrame, p: dict[str, Any]) -> Fit:
    """Fit the sparse user KNN on `frame` (user_id, movie_id, rating) with params `p`."""
    users, user_ids = pd.factorize(frame["user_id"], sort=False)  # Surprise's inner ids: first appearance
    items, movie_ids = pd.factorize(frame["movie_id"], sort=False)
    r = frame["rating"].to_numpy(float)
    n_users, n_items = len(user_ids), len(movie_ids)
    order = np.argsort(items, kind="stable")  # each item's raters in insertion order, as Surprise's `ir`
    indptr = np.concatenate([[0], np.cumsum(np.bincount(items, minlength=n_items))])
    item_raters = sparse.csr_matrix(
        (r[order], users[order].astype(np.int64), indptr),
        shape=(n_items, n_users),
    )
    user_items = item_raters.T.tocsr()
    user_items.sort_indices()

    gm = float(np.mean(r))
    bu, bi = als_baselines(users, items, r, n_users, n_items, gm, p)
    nb, rank_idx, rank_w = neighbours(user_items, gm, bu, bi, p)

    coo = user_items.tocoo()
    like_vals = 1.0 + float(p["like_weight"]) * (coo.data - (gm + bu[coo.row] + bi[coo.col]))
    like = sparse.csr_matrix((like_vals, (coo.row, coo.col)), shape=user_items.shape)
    return Fit(
        user_ids=np.asarray(user_ids, np.int64),
        movie_ids=np.asarray(movie_ids, str),
        user_items=user_items,
        global_mean=gm,
        train_size=len(frame),
        fields={"global_mean": gm, "bu": bu, "bi": bi, "nb": nb, "item_raters": item_raters,
                "rank_nb_idx": rank_idx, "rank_nb_w": rank_w, "like": like},
    )


def als_baselines(users: np.ndarray, items: np.ndarray, r: np.ndarray, n_users: int, n_items: int, gm: float,
                  p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Surprise's ``baseline_als``: alternate item then user deviations, regularised, `bsl_epochs` times."""
    if p["bsl_method"] != "als":
        raise ValueError(f"user_knn_sparse computes ALS baselines only, not {p['bsl_method']!r}")
    n_i = np.bincount(items, minlength=n_items).astype(float)
    n_u = np.bincount(users, minlength=n_users).astype(float)
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(int(p["bsl_epochs"])):
        bi = np.bincount(items, weights=r - gm - bu[users], minlength=n_items) / (float(p["bsl_reg_i"]) + n_i)
        bu = np.bincount(users, weights=r - gm - bi[items], minlength=n_users) / (float(p["bsl_reg_u"]) + n_u)
    return bu, bi


def neighbours(user_items: sparse.csr_matrix, gm: float, bu: np.ndarray, bi: np.ndarray,
               p: dict[str, Any]) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Each user's estimate neighbours (CSR, pearson_baseline > 0) and ranking neighbours (k-wide arrays)."""
    n = user_items.shape[0]
    k_est, k_rank = int(p["neighbours"]), max(1, min(int(p["rank_neighbours"]), n - 1))  # as fit_knn
    shrinkage, candidates = float(p["shrinkage"]), int(p["candidates"])
    coo = user_items.tocoo()
    binary = sparse.csr_matrix((np.ones_like(coo.data), (coo.row, coo.col)), shape=user_items.shape)
    resid = sparse.csr_matrix((coo.data - (gm + bu[coo.row] + bi[coo.col]), (coo.row, coo.col)), shape=user_items.shape)
    resid2 = resid.multiply(resid).tocsr()
    bt, et, e2t = binary.T.tocsr(), resid.T.tocsr(), resid2.T.tocsr()
    counts = np.diff(binary.indptr).astype(float)
    norms = np.sqrt(counts)
    norms[norms == 0] = 1.0

    # co-raters per user (upper bound, self included): cut row blocks so each holds ~BLOCK_PAIRS pairs
    pairs = binary @ np.diff(bt.indptr).astype(float)
    bounds = [0]
    acc = 0.0
    for u, c in enumerate(pairs):
        acc += c
        if acc > BLOCK_PAIRS and u > bounds[-1]:
            bounds.append(u)
            acc = c
    bounds.append(n)

    est_rows, est_cols, est_vals = [], [], []
    rank_idx = np.zeros((n, k_rank), np.int32)
    rank_w = np.zeros((n, k_rank), float)
    for start, stop in itertools.pairwise(bounds):
        if stop <= start:
            continue
        freq = (binary[start:stop] @ bt).tocsr()
        freq.sort_indices()
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(freq.indptr))
        cols, f = freq.indices.astype(np.int64), freq.data
        keep = (rows + start != cols) & (f >= 2)  # Surprise: fewer than 2 common items → similarity 0
        if candidates > 0:  # pruning: only the most co-rated users get the exact re-scoring
            keep &= _top_per_row(rows, cols, np.where(keep, f, -1.0), candidates)
        rows, cols, f = rows[keep], cols[keep], f[keep]
        keys = rows * n + cols
        prods = _on_pattern(keys, resid[start:stop] @ et, n)
        sqi = _on_pattern(keys, resid2[start:stop] @ bt, n)
        sqj = _on_pattern(keys, binary[start:stop] @ e2t, n)
        den = np.sqrt(sqi * sqj)
        with np.errstate(divide="ignore", invalid="ignore"):
            pb = np.where(den > 0, prods / den, 0.0)  # Surprise raises on 0/0; no spread means no evidence here
        pb *= (f - 1) / (f - 1 + shrinkage)

        pos = pb > 0
        sel = _top_per_row(rows[pos], cols[pos], pb[pos], k_est)
        est_rows.append(rows[pos][sel] + start)
        est_cols.append(cols[pos][sel])
        est_vals.append(pb[pos][sel])

        # ranking weight, in fit_knn.ranking_neighbours' order of operations (so lists agree bit for bit)
        w = (f / norms[rows + start] / norms[cols]) * np.clip(pb, 0.0, None)
        wp = w > 0
        r2, c2, w2 = rows[wp], cols[wp], w[wp]
        top = _top_per_row(r2, c2, w2, k_rank)
        r2, c2, w2 = r2[top], c2[top], w2[top]
        o = np.lexsort((c2, -w2, r2))
        r2, c2, w2 = r2[o], c2[o], w2[o]
        rank = np.arange(len(r2)) - np.searchsorted(r2, r2)
        fits = rank < k_rank
        rank_idx[r2[fits] + start, rank[fits]] = c2[fits]
        rank_w[r2[fits] + start, rank[fits]] = w2[fits]

    er = np.concatenate(est_rows) if est_rows else np.zeros(0, np.int64)
    nb = sparse.csr_matrix(
        (np.concatenate(est_vals) if est_vals else np.zeros(0), (er, np.concatenate(est_cols) if est_cols else er)),
        shape=(n, n),
    )
    nb.sort_indices()
    nb.indices = nb.indices.astype(np.int32)
    log.debug("sparse neighbours", extra={"users": n, "stored": nb.nnz, "blocks": len(bounds) - 1})
    return nb, rank_idx, rank_w


def _top_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int) -> np.ndarray:
    """Mask of the `k` largest values in each row (ties: lower column first); `rows` ascending."""
    counts = np.bincount(rows) if len(rows) else np.zeros(0, np.int64)
    mask = counts[rows] <= k if len(rows) else np.zeros(0, bool)  # short rows keep everything, unsorted
    big = np.flatnonzero(~mask)
    if len(big):
        r, c, v = rows[big], cols[big], vals[big]
        o = np.lexsort((c, -v, r))
        sr = r[o]
        rank = np.arange(len(sr)) - np.searchsorted(sr, sr)
        mask[big[o[rank < k]]] = True
    return mask


def _on_pattern(keys: np.ndarray, m: sparse.spmatrix, n: int) -> np.ndarray:
    """Values of `m` at the sorted (row·n + col) `keys`; 0 where scipy dropped an exact zero sum."""
    m = m.tocsr()
    m.sort_indices()  # row-major, sorted columns: its keys are sorted too, no argsort needed
    mkeys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n + m.indices
    if len(mkeys) == len(keys) and np.array_equal(mkeys, keys):
        return m.data
    if not len(mkeys):
        return np.zeros(len(keys))
    pos = np.minimum(np.searchsorted(mkeys, keys), len(mkeys) - 1)
    return np.where(mkeys[pos] == keys, m.data[pos], 0.0)
