"""Training adapter of `SparseUserKNN`: the KNNBaseline fit without any n × n array.

Only `Recommender.train` imports this module (through the registry's ``fitter``). It computes what
`fit_knn` gets from Surprise, the same way, but keeps each user's neighbours only:

* inner ids in order of first appearance and raters in insertion order, as Surprise's trainset
  (the estimate's ties, and every list's, depend on them);
* ALS baselines: Surprise's ``baseline_als`` loop, vectorised with ``bincount`` (same sums, same order
  of epochs; equal to ~1e-15);
* ``pearson_baseline`` with shrinkage, exact for every pair it scores, in row blocks (memory bounded by
  ``BLOCK_PAIRS``), for one of two sets of pairs:

  - ``rater_cap`` 0 (`_all_co_raters`): every pair who co-rated something, from the sparse products
    ``B·Bᵀ``, ``E·Eᵀ``, ``E²·Bᵀ``, ``B·E²ᵀ`` (E the baseline residuals, B who rated what): the exact top-k,
    but a blockbuster makes nearly all pairs co-raters, so the cost grows ~users² (measured n^1.9);
  - ``rater_cap`` > 0, the default (`_capped_candidates`): candidates from movies' capped rater lists,
    ``candidates`` per user re-scored exactly: cost ~ ratings (its docstring says why this method).
* per user, the ``neighbours`` most similar (pearson_baseline > 0) for the estimate, and the
  ``rank_neighbours`` best by cosine(co-rated) × max(0, pearson_baseline) for the ranking, as
  `fit_knn.ranking_neighbours` picks them from the dense matrix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm import tqdm

from app.recommender.base import Fit

log = logging.getLogger(__name__)

BLOCK_PAIRS = 4_000_000  # co-rating pairs per row block: bounds a block's memory (~ 40 bytes a pair per product)
DENSE_ROWS = 512  # users per re-scoring block: their ratings as two dense rows of the catalogue (~2·8·movies B each)
RESCORE_PAIRS = 250_000  # candidate pairs re-scored at once (~20 ratings each, a few arrays of that length)


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
    """Each user's estimate neighbours (CSR, pearson_baseline > 0) and ranking neighbours (k-wide arrays).

    Pairs come in row blocks from `_all_co_raters` (``rater_cap`` 0: exact, cost ratings × co-raters) or
    `_capped_candidates` (cost ratings × ``rater_cap``); either way each pair's statistics are exact.
    """
    n = user_items.shape[0]
    k_est, k_rank = int(p["neighbours"]), max(1, min(int(p["rank_neighbours"]), n - 1))  # as fit_knn
    shrinkage = float(p["shrinkage"])
    coo = user_items.tocoo()
    binary = sparse.csr_matrix((np.ones_like(coo.data), (coo.row, coo.col)), shape=user_items.shape)
    binary.sort_indices()
    resid = sparse.csr_matrix((coo.data - (gm + bu[coo.row] + bi[coo.col]), (coo.row, coo.col)), shape=user_items.shape)
    resid.sort_indices()
    counts = np.diff(binary.indptr).astype(float)
    norms = np.sqrt(counts)
    norms[norms == 0] = 1.0
    blocks = (_capped_candidates(binary, resid, int(p["rater_cap"]), int(p["candidates"]))
              if int(p["rater_cap"]) > 0 else _all_co_raters(binary, resid, int(p["candidates"])))

    est_count, est_cols, est_vals = np.zeros(n, np.int64), [], []  # straight into CSR: ~12 bytes a neighbour
    rank_idx = np.zeros((n, k_rank), np.int32)
    rank_w = np.zeros((n, k_rank), float)
    n_blocks = n_pairs = 0
    # minutes at 1M users: a person running it sees how far it is (tqdm stays quiet off a terminal)
    progress = tqdm(total=n, unit="user", desc="neighbours", disable=None, leave=False)
    for start, rows, cols, f, prods, sqi, sqj in blocks:
        n_blocks, n_pairs = n_blocks + 1, n_pairs + len(rows)
        progress.update(start - progress.n)
        den = np.sqrt(sqi * sqj)
        with np.errstate(divide="ignore", invalid="ignore"):
            pb = np.where(den > 0, prods / den, 0.0)  # Surprise raises on 0/0; no spread means no evidence here
        pb *= (f - 1) / (f - 1 + shrinkage)

        pos = pb > 0
        sel = _top_per_row(rows[pos], cols[pos], pb[pos], k_est)
        er, ec, ev = rows[pos][sel], cols[pos][sel], pb[pos][sel]
        o = np.lexsort((ec, er))  # CSR order: rows ascending (blocks come in order), columns sorted
        uniq, cnt = np.unique(er, return_counts=True)
        est_count[uniq + start] += cnt
        est_cols.append(ec[o].astype(np.int32))
        est_vals.append(ev[o])

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

    progress.update(n - progress.n)
    progress.close()
    indptr = np.concatenate([[0], np.cumsum(est_count)])
    nb = sparse.csr_matrix(
        (np.concatenate([np.zeros(0), *est_vals]), np.concatenate([np.zeros(0, np.int32), *est_cols]), indptr),
        shape=(n, n),
    )
    log.debug("sparse neighbours", extra={"users": n, "stored": nb.nnz, "blocks": n_blocks, "pairs": n_pairs})
    return nb, rank_idx, rank_w


Block = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # start, rows (block-
# local, ascending), cols, co-ratings f, Σ e_u·e_v, Σ e_u², Σ e_v² over the common movies (e: baseline residuals)


def _row_blocks(pairs_per_row: np.ndarray, budget: float, max_rows: int | None = None) -> list[int]:
    """Row bounds so each block holds about `budget` pairs (a block's memory is ~40 bytes a pair per array)."""
    ends = np.cumsum(pairs_per_row)
    bounds = [0]
    while bounds[-1] < len(ends):
        before = ends[bounds[-1] - 1] if bounds[-1] else 0.0
        stop = max(int(np.searchsorted(ends, before + budget, side="right")), bounds[-1] + 1)
        bounds.append(min(stop, bounds[-1] + max_rows) if max_rows else stop)
    return bounds


def _all_co_raters(binary: sparse.csr_matrix, resid: sparse.csr_matrix, candidates: int) -> Iterator[Block]:
    """Every pair with a common movie (f ≥ 2), statistics from the block's sparse products: exact, cost Σ n_i²."""
    n = binary.shape[0]
    resid2 = resid.multiply(resid).tocsr()
    bt, et, e2t = binary.T.tocsr(), resid.T.tocsr(), resid2.T.tocsr()
    bounds = _row_blocks(binary @ np.diff(bt.indptr).astype(float), BLOCK_PAIRS)  # co-raters per user (bound)
    for start, stop in itertools.pairwise(bounds):
        freq = (binary[start:stop] @ bt).tocsr()
        freq.sort_indices()
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(freq.indptr))
        cols, f = freq.indices.astype(np.int64), freq.data
        keep = (rows + start != cols) & (f >= 2)  # Surprise: fewer than 2 common items → similarity 0
        if candidates > 0:  # pruning: only the most co-rated users get the exact re-scoring
            keep &= _top_per_row(rows, cols, np.where(keep, f, -1.0), candidates)
        rows, cols, f = rows[keep], cols[keep], f[keep]
        keys = rows * n + cols
        yield (start, rows, cols, f, _on_pattern(keys, resid[start:stop] @ et, n),
               _on_pattern(keys, resid2[start:stop] @ bt, n), _on_pattern(keys, binary[start:stop] @ e2t, n))


def _capped_candidates(binary: sparse.csr_matrix, resid: sparse.csr_matrix, cap: int,
                       candidates: int) -> Iterator[Block]:
    """Candidate pairs from movies' capped rater lists, then each candidate's exact statistics: cost ~ ratings.

    Why this and not an ANN index over user vectors: pearson_baseline with shrinkage ranks a pair mostly by
    how many movies it co-rated (f) and how well it agrees on them; a low-dimensional embedding keeps
    neither, and would add a dependency. Listing pairs through every rater of a blockbuster is what costs
    Σ n_i² (nearly all pairs share one); but a pair sharing many movies usually shares a rarer one too. So
    each movie lends pairs among at most `cap` of its raters, chosen as those for whom it is among their
    rarest movies (the prefix-filtering idea of all-pairs similarity search); rare movies keep all theirs.
    Per user the `candidates` users sharing most of those movies are re-scored exactly (`_pair_stats`).
    Cost ≤ ratings·cap products, then users·candidates·(ratings per user); deterministic. bench/scale.py
    measures the time and the neighbour recall against the exact path.
    """
    n, n_items = binary.shape
    rows_all = np.repeat(np.arange(n, dtype=np.int64), np.diff(binary.indptr))
    items_all = binary.indices.astype(np.int64)
    n_i = np.bincount(items_all, minlength=n_items)
    # each rating's rarity rank among its user's movies (0: the user's rarest), then per movie its `cap` raters
    # with the lowest such rank (ties: a fixed pseudo-random order of users, so no user id range is favoured)
    o = np.lexsort((items_all, n_i[items_all], rows_all))
    rank = np.empty(len(o), np.int64)
    rank[o] = np.arange(len(o)) - binary.indptr[rows_all[o]]
    tie = np.random.default_rng(0).permutation(n)[rows_all]
    o = np.lexsort((tie, rank, items_all))
    del rank, tie
    pos = np.arange(len(o)) - np.searchsorted(items_all[o], items_all[o])
    kept = o[pos < cap]
    del o, pos
    cand = sparse.csr_matrix((np.ones(len(kept), np.float32), (rows_all[kept], items_all[kept])), shape=binary.shape)
    cand_t = cand.T.tocsr()
    bounds = _row_blocks(cand @ np.diff(cand_t.indptr).astype(float), BLOCK_PAIRS, DENSE_ROWS)
    dense_e = np.zeros((max(b - a for a, b in itertools.pairwise(bounds)), n_items))  # one block's rows, dense
    for start, stop in itertools.pairwise(bounds):
        c = (cand[start:stop] @ cand_t).tocsr()
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(c.indptr))
        cols, shared = c.indices.astype(np.int64), c.data.astype(np.int64)
        keep = rows + start != cols
        rows, cols, shared = rows[keep], cols[keep], shared[keep]
        if candidates > 0:
            keep = _most_per_row(rows, shared, candidates, stop - start)
            rows, cols = rows[keep], cols[keep]
        lo, hi = binary.indptr[start], binary.indptr[stop]
        local = rows_all[lo:hi] - start
        # u's residuals as a dense row; a rated movie whose residual is exactly 0 stores 1e-300 so "rated" stays
        # readable from the value alone (it changes no sum by more than 1e-300)
        dense_e[local, items_all[lo:hi]] = np.where(resid.data[lo:hi] == 0.0, 1e-300, resid.data[lo:hi])
        f, prods, sqi, sqj = _pair_stats(binary, resid, dense_e, rows, cols)
        dense_e[local, items_all[lo:hi]] = 0.0  # reset only what was set: cost ~ the block's ratings
        good = f >= 2  # Surprise: fewer than 2 common items → similarity 0
        yield start, rows[good], cols[good], f[good], prods[good], sqi[good], sqj[good]


def _most_per_row(rows: np.ndarray, count: np.ndarray, k: int, n_rows: int) -> np.ndarray:
    """Mask of `k` entries per row with the highest small-integer `count`, without sorting them all.

    `rows` ascending; ties at the cut go by position in the row (scipy's product order: deterministic).
    """
    width = int(count.max()) + 2 if len(count) else 2
    hist = np.bincount(rows * width + count, minlength=n_rows * width).reshape(n_rows, width)
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # at_least[r, c]: entries of row r with count ≥ c
    # per row, the lowest count t whose "≥ t" still fits in k; entries at t - 1 fill the rest in row order
    t = (at_least <= k).argmax(axis=1)
    keep = count >= t[rows]
    edge = np.flatnonzero(count == t[rows] - 1)
    if len(edge):
        room = k - at_least[np.arange(n_rows), t]
        er = rows[edge]
        nth = np.arange(len(edge)) - np.searchsorted(er, er)
        keep[edge[nth < room[er]]] = True
    return keep


def _pair_stats(binary: sparse.csr_matrix, resid: sparse.csr_matrix, dense_e: np.ndarray, rows: np.ndarray,
                cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pair (block row u, user v): common movies f, Σ e_u·e_v, Σ e_u², Σ e_v², walking v's ratings (sparse)
    against u's dense row (`dense_e`, 0 where u did not rate), `RESCORE_PAIRS` pairs at a time."""
    out = [np.zeros(len(rows)) for _ in range(4)]
    width = dense_e.shape[1]
    flat_e = dense_e.ravel()
    for lo in range(0, len(rows), RESCORE_PAIRS):
        r, c = rows[lo:lo + RESCORE_PAIRS], cols[lo:lo + RESCORE_PAIRS]
        starts = binary.indptr[c]
        lengths = binary.indptr[c + 1] - starts
        ends = np.cumsum(lengths)
        offsets = np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)
        m = len(r)
        eu = flat_e[np.repeat(r * width, lengths) + binary.indices[offsets]]
        hit = np.flatnonzero(eu)  # the few of v's movies u rated too: everything after runs on those only
        eu, ev = eu[hit], resid.data[offsets[hit]]
        pair = np.searchsorted(ends, hit, side="right")
        out[0][lo:lo + m] = np.bincount(pair, minlength=m)
        out[1][lo:lo + m] = np.bincount(pair, eu * ev, m)
        out[2][lo:lo + m] = np.bincount(pair, eu * eu, m)
        out[3][lo:lo + m] = np.bincount(pair, ev * ev, m)
    return out[0], out[1], out[2], out[3]


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
