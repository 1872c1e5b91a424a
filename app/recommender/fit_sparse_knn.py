"""Training adapter of `SparseUserKNN`: the KNNBaseline fit without any n × n array.

Only `Recommender.train` imports this module (through the registry's ``fitter``). It computes what
`fit_knn` gets from Surprise, the same way, but keeps each user's neighbours only:

* inner ids in order of first appearance and raters in insertion order, as Surprise's trainset
  (the estimate's ties, and every list's, depend on them);
* ALS baselines: Surprise's ``baseline_als`` loop, vectorised with ``bincount`` (same sums, same order
  of epochs; equal to ~1e-15);
* ``pearson_baseline`` with shrinkage, exact for every pair it scores (to a few ulp where the capped path
  adds movies back), for one of two sets of pairs:

  - ``rater_cap`` 0 (`_all_co_raters`, row blocks bounded by ``BLOCK_PAIRS``): every pair who co-rated something,
    from the sparse products
    ``B·Bᵀ``, ``E·Eᵀ``, ``E²·Bᵀ``, ``B·E²ᵀ`` (E the baseline residuals, B who rated what): the exact top-k,
    but a blockbuster makes nearly all pairs co-raters, so the cost grows ~users² (measured n^1.9);
  - ``rater_cap`` > 0, the default (`_capped_neighbours`): the users its movies' capped rater lists name,
    the ``candidates`` most similar of them scored exactly, in a compiled loop per user: cost ~ ratings
    (its docstring says why this method, and why numba); the lists are shortened below ``rater_cap`` where
    their pass would visit more than ``list_budget`` entries a rating (`budgeted_cap`).
* per user, the ``neighbours`` most similar (pearson_baseline > 0) for the estimate, and the
  ``rank_neighbours`` best by cosine(co-rated) × max(0, pearson_baseline) for the ranking, as
  `fit_knn.ranking_neighbours` picks them from the dense matrix.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import pandas as pd
from scipy import sparse
from tqdm import tqdm

from app.recommender.base import Fit

log = logging.getLogger(__name__)

BLOCK_PAIRS = 4_000_000  # co-rating pairs per row block: bounds a block's memory (~ 40 bytes a pair per product)
CHUNK_USERS = 65_536  # users per `_capped_kernel` call: their top-k arrays (k·12 B each) before compacting


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


def exact_neighbours_of(fitted: Fit, p: dict[str, Any], users: np.ndarray) -> dict[str, Any]:
    """The exact ``nb``, ``rank_nb_idx`` and ``rank_nb_w`` rows of the inner ids `users` (sorted) of a `fit`."""
    f = fitted.fields
    nb, rank_idx, rank_w = neighbours(fitted.user_items, f["global_mean"], f["bu"], f["bi"], p, only=users)
    return {"nb": nb, "rank_nb_idx": rank_idx, "rank_nb_w": rank_w}


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


def neighbours(user_items: sparse.csr_matrix, gm: float, bu: np.ndarray, bi: np.ndarray, p: dict[str, Any],
               only: np.ndarray | None = None) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Each user's estimate neighbours (CSR, pearson_baseline > 0) and ranking neighbours (k-wide arrays).

    `only` (sorted inner ids): the exact neighbours of those users alone, one row each, whatever ``rater_cap``
    says: what the capped path is measured against at a size where the exact fit of everyone is out of reach.

    Pairs come from `_capped_neighbours` (``rater_cap`` > 0, cost ≤ ratings × ``list_budget``) or in row blocks from
    `_all_co_raters` (``rater_cap`` 0: exact, cost ratings × co-raters); either way each pair's statistics are
    exact, and both pick the same way (ties to the lower column). Where no rater list is cut they agree bit for
    bit; where one is, a movie added back is summed last, so a similarity may differ by a few ulp.
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
    if int(p["rater_cap"]) > 0 and only is None:
        cap = list_length(np.bincount(binary.indices, minlength=binary.shape[1]), p)
        nb, rank_idx, rank_w, n_pairs = _capped_neighbours(binary, resid, norms, cap, int(p["candidates"]),
                                                           shrinkage, k_est, k_rank)
        log.info("sparse neighbours", extra={"users": n, "stored": nb.nnz, "rater_cap": int(p["rater_cap"]),
                                             "list_length": cap, "pairs": n_pairs})
        return nb, rank_idx, rank_w
    row_ids = _row_ids(only, n)
    blocks = _all_co_raters(binary, resid, int(p["candidates"]) if only is None else 0, row_ids)
    n_rows = len(row_ids)

    est_count, est_cols, est_vals = np.zeros(n_rows, np.int64), [], []  # straight into CSR: ~12 B a neighbour
    rank_idx = np.zeros((n_rows, k_rank), np.int32)
    rank_w = np.zeros((n_rows, k_rank), float)
    n_blocks = n_pairs = 0
    # minutes at 1M users: a person running it sees how far it is (tqdm stays quiet off a terminal)
    progress = tqdm(total=n_rows, unit="user", desc="neighbours", disable=None, leave=False)
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
        w = (f / norms[row_ids[rows + start]] / norms[cols]) * np.clip(pb, 0.0, None)
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

    progress.update(n_rows - progress.n)
    progress.close()
    indptr = np.concatenate([[0], np.cumsum(est_count)])
    nb = sparse.csr_matrix(
        (np.concatenate([np.zeros(0), *est_vals]), np.concatenate([np.zeros(0, np.int32), *est_cols]), indptr),
        shape=(n_rows, n),
    )
    log.debug("sparse neighbours", extra={"users": n, "stored": nb.nnz, "blocks": n_blocks, "pairs": n_pairs})
    return nb, rank_idx, rank_w


Block = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # start, rows (block-
# local, ascending), cols, co-ratings f, Σ e_u·e_v, Σ e_u², Σ e_v² over the common movies (e: baseline residuals)


def _row_blocks(pairs_per_row: np.ndarray, budget: float) -> list[int]:
    """Row bounds so each block holds about `budget` pairs (a block's memory is ~40 bytes a pair per array)."""
    ends = np.cumsum(pairs_per_row)
    bounds = [0]
    while bounds[-1] < len(ends):
        before = ends[bounds[-1] - 1] if bounds[-1] else 0.0
        stop = max(int(np.searchsorted(ends, before + budget, side="right")), bounds[-1] + 1)
        bounds.append(stop)
    return bounds


def list_length(raters: np.ndarray, p: dict[str, Any]) -> int:
    """The rater lists' length a fit with params `p` uses, given each movie's number of `raters`."""
    return budgeted_cap(raters, int(p["rater_cap"]), float(p["list_budget"]))


def budgeted_cap(raters: np.ndarray, cap: int, budget: float) -> int:
    """The longest rater list, at most `cap`, whose list pass visits at most `budget` entries per rating.

    `raters`: each movie's number of raters. The pass visits Σ n_i·min(n_i, cap) entries, and with a fixed cap
    that grows faster than the ratings: more movies fill their lists as the world grows (at cap 1,000 the
    world generator's ratings cost 193 visits a rating at 20k users, 505 at 100k, 876 at 1M). Bounding the
    visits per rating keeps the fit linear in ratings at every size; where the budget does not bind (small
    worlds) this is `cap`. `budget` 0: no bound. At least 1.
    """
    if budget <= 0 or cap <= 1:
        return cap
    raters = np.asarray(raters, float)
    allowed = budget * raters.sum()
    lo, hi = 1, cap  # visits grow with the cap: the largest cap within budget, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if float((raters * np.minimum(raters, mid)).sum()) <= allowed:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _row_ids(only: np.ndarray | None, n: int) -> np.ndarray:
    """The users whose rows are wanted: all, or `only` if it is sorted unique inner ids (else rows would be
    mislabelled, so it is refused)."""
    if only is None:
        return np.arange(n)
    row_ids = np.asarray(only, np.int64)
    if len(row_ids) and (np.any(np.diff(row_ids) <= 0) or row_ids[0] < 0 or row_ids[-1] >= n):
        raise ValueError("only: sorted, unique inner user ids")
    return row_ids


def _all_co_raters(binary: sparse.csr_matrix, resid: sparse.csr_matrix, candidates: int,
                   row_ids: np.ndarray) -> Iterator[Block]:
    """Every pair of a user of `row_ids` (`_row_ids`; blocks of those rows) with a common movie (f ≥ 2),
    statistics from the block's sparse products: exact, cost the rows' co-raters (Σ n_i² for all)."""
    n = binary.shape[0]
    resid2 = resid.multiply(resid).tocsr()
    bt, et, e2t = binary.T.tocsr(), resid.T.tocsr(), resid2.T.tocsr()
    if len(row_ids) != n:
        binary, resid, resid2 = binary[row_ids], resid[row_ids], resid2[row_ids]
    bounds = _row_blocks(binary @ np.diff(bt.indptr).astype(float), BLOCK_PAIRS)  # co-raters per user (bound)
    for start, stop in itertools.pairwise(bounds):
        freq = (binary[start:stop] @ bt).tocsr()
        freq.sort_indices()
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(freq.indptr))
        cols, f = freq.indices.astype(np.int64), freq.data
        keep = (row_ids[rows + start] != cols) & (f >= 2)  # Surprise: fewer than 2 common items → similarity 0
        if candidates > 0:  # pruning: only the most co-rated users get the exact re-scoring
            keep &= _top_per_row(rows, cols, np.where(keep, f, -1.0), candidates)
        rows, cols, f = rows[keep], cols[keep], f[keep]
        keys = rows * n + cols
        yield (start, rows, cols, f, _on_pattern(keys, resid[start:stop] @ et, n),
               _on_pattern(keys, resid2[start:stop] @ bt, n), _on_pattern(keys, binary[start:stop] @ e2t, n))


def _capped_neighbours(binary: sparse.csr_matrix, resid: sparse.csr_matrix, norms: np.ndarray, cap: int,
                       candidates: int, shrinkage: float, k_est: int,
                       k_rank: int) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray, int]:
    """Each user's neighbours among those its movies' capped rater lists name, statistics exact: cost ~ ratings·cap.

    Why this rule: pearson_baseline with shrinkage (200) ranks a pair mostly by how many movies it co-rated
    (f), then by how well it agrees on them; with ~20 ratings a user, the users who co-rate most with anyone
    are the heavy raters (at 1M the exact neighbours' median user has rated 65 movies, the population's 14).
    Listing pairs through every rater of a blockbuster is what costs Σ n_i² (nearly all pairs share one), so
    each movie lists only its `cap` heaviest raters (ties: a fixed pseudo-random order of users, so no id range
    is favoured). Per user, one pass over its movies' lists sums each listed user's statistics over the movies
    that list it; the `candidates` best by the pearson_baseline of those partial sums then get the movies that
    did not list them added, so every pair kept is scored exactly. Measured on the world generator's ratings
    (the README has the figures): choosing by the partial similarity rather than by how often a user is listed
    needs 3× fewer candidates for the same recall at 20k (300 against 1,000 for 0.93); the heaviest-first lists
    hold 8× more of a 1M world's exact neighbours than the rarest-first lists of all-pairs similarity search's
    prefix filtering (this module's rule before) at the same cap. An ANN index over low-dimensional user vectors
    keeps neither f nor the agreement, and would add a dependency.

    The per-user loop is `_capped_kernel`, compiled with numba: numpy needed a dozen passes over
    ~users·candidates pair arrays (lexsorts, repeats, gathers) and spent 4/5 of its time there; one loop per
    user with dense scratch arrays does it in one pass, on every core. Cost: Σ n_i·min(n_i, cap) list entries
    (≤ ratings·cap), then users·candidates·(u's ratings) for the additions. Returns (nb, rank_idx, rank_w,
    pairs scored).
    """
    n, n_items = binary.shape
    counts = np.diff(binary.indptr)
    # every user's place in one order, heaviest first (ties: a fixed pseudo-random order, no id range favoured)
    prio = np.empty(n, np.int64)
    prio[np.lexsort((np.random.default_rng(0).permutation(n), -counts))] = np.arange(n)
    rows_all = np.repeat(np.arange(n, dtype=np.int64), counts)
    items_all = binary.indices.astype(np.int64)
    o = np.lexsort((prio[rows_all], items_all))  # per movie, its raters heaviest first
    pos = np.arange(len(o)) - np.searchsorted(items_all[o], items_all[o])
    kept = o[pos < cap]
    # a movie's last listed place: a rater v of movie i is in its list iff prio[v] <= limit[i]
    limit = np.full(n_items, n, np.int64)
    full = o[pos == cap - 1]
    limit[items_all[full]] = prio[rows_all[full]]
    limit[np.bincount(items_all, minlength=n_items) <= cap] = n
    del o, pos, full
    t_indptr = np.concatenate([[0], np.cumsum(np.bincount(items_all[kept], minlength=n_items))])
    # movie → its capped raters, heaviest first, each named by its place in `prio` rather than its id: the
    # kernel's scratch row of a user is its place, so the heavy users that most lists name share a few MB of
    # it instead of being spread over n rows (12-15 % less fit time at 300k users; same result)
    t_indices = prio[rows_all[kept]].astype(np.int32)
    by_prio = np.empty(n, np.int64)  # place → user
    by_prio[prio] = np.arange(n)
    t_resid = resid.data[kept]  # and their residuals on it
    del kept, rows_all, items_all

    est_count, est_cols, est_vals = np.zeros(n, np.int64), [], []
    rank_idx = np.zeros((n, k_rank), np.int32)
    rank_w = np.zeros((n, k_rank), float)
    # the kernel's scratch, one row per thread (numba.get_thread_id), allocated once per fit: allocated per
    # slice and call instead, zeroing it cost users² over a fit (8·threads slices × 32 B × n² / CHUNK_USERS:
    # 8 GB at 1M on 2 cores)
    threads = numba.get_num_threads()
    acc = np.zeros((threads, n, 4))
    touched, cand = np.empty((threads, n), np.int32), np.empty((threads, n), np.int32)
    guess, work, pb, w = (np.empty((threads, n)) for _ in range(4))
    pairs = 0
    progress = tqdm(total=n, unit="user", desc="neighbours", disable=None, leave=False)
    for lo in range(0, n, CHUNK_USERS):
        hi = min(n, lo + CHUNK_USERS)
        cnt = np.zeros(hi - lo, np.int64)
        cols = np.zeros((hi - lo, k_est), np.int32)
        vals = np.zeros((hi - lo, k_est))
        pairs += _capped_kernel(lo, hi, binary.indptr, binary.indices, resid.data, t_indptr, t_indices, t_resid,
                                prio, by_prio, limit, norms, candidates, shrinkage, cnt, cols, vals, rank_idx, rank_w,
                                8 * threads, acc, touched, guess, work, cand, pb, w)
        est_count[lo:hi] = cnt
        keep = np.arange(k_est) < cnt[:, None]  # each row's neighbours first, columns ascending
        est_cols.append(cols[keep])
        est_vals.append(vals[keep])
        progress.update(hi - lo)
    progress.close()
    del acc, touched, guess, work, cand, pb, w, cnt, cols, vals, keep
    return _csr_from_chunks(est_count, est_cols, est_vals, n), rank_idx, rank_w, pairs


def _csr_from_chunks(counts: np.ndarray, cols: list[np.ndarray], vals: list[np.ndarray], n: int) -> sparse.csr_matrix:
    """Rows' (columns, values) chunks, in row order, as one CSR matrix, emptying the lists.

    At 1M users the neighbours are ~2.3 GB: concatenating would hold them twice. `np.empty` pages become
    resident only when written and each chunk is freed once copied, so the peak stays ~one copy plus a chunk.
    """
    indptr = np.concatenate([[0], np.cumsum(counts)])
    data, indices = np.empty(indptr[-1]), np.empty(indptr[-1], np.int32)
    at = 0
    while cols:
        c, v = cols.pop(0), vals.pop(0)
        indices[at:at + len(c)], data[at:at + len(v)] = c, v
        at += len(c)
    assert at == len(indices)
    return sparse.csr_matrix((data, indices, indptr), shape=(n, n))


@numba.njit(parallel=True, cache=True)
def _capped_kernel(lo: int, hi: int, indptr: np.ndarray, indices: np.ndarray, resid: np.ndarray,
                   t_indptr: np.ndarray, t_indices: np.ndarray, t_resid: np.ndarray, prio: np.ndarray,
                   by_prio: np.ndarray, limit: np.ndarray, norms: np.ndarray, candidates: int, shrinkage: float,
                   est_cnt: np.ndarray, est_col: np.ndarray, est_val: np.ndarray, rank_idx: np.ndarray,
                   rank_w: np.ndarray, slices: int, acc_t: np.ndarray, touched_t: np.ndarray, guess_t: np.ndarray,
                   work_t: np.ndarray, cand_t: np.ndarray, pb_t: np.ndarray, w_t: np.ndarray) -> int:
    """Users lo..hi. One pass over u's movies and their capped lists sums each listed user's statistics over
    the movies that list it (in movie order, as the exact path's sparse products do); the `candidates` best by
    the pearson_baseline of those sums get the movies that did not list them added (a binary search in their
    ratings, for u's movies whose list is full and ends before them; summed last, so exact to a few ulp). Then the top
    ``est_col.shape[1]`` by pearson_baseline (columns ascending) and the top ``rank_idx.shape[1]`` by the ranking
    weight (best first), both with ties to the lower column. `slices`: runs of users (numba gives each thread
    a contiguous share of them). The `*_t` scratch arrays hold one row per thread (`numba.get_thread_id`);
    ``acc_t`` must be zero and is left zero, so the next user, slice or call starts clean. Lists, ``touched``
    and the rows of ``acc_t`` name users by their place in `prio` (`by_prio` maps back); candidates, rows and
    columns are user ids."""
    k_est, k_rank = est_col.shape[1], rank_idx.shape[1]
    step = (hi - lo + slices - 1) // slices
    scored = np.zeros(slices, np.int64)
    for s in numba.prange(slices):
        # for the current user u and each v (row: v's place): co-ratings found so far, Σ e_u·e_v, Σ e_u², Σ e_v²; one
        # row of 32 bytes a user, so an entry of a list costs one cache line (4 arrays cost 4 misses)
        tid = numba.get_thread_id()
        acc, touched, guess, work = acc_t[tid], touched_t[tid], guess_t[tid], work_t[tid]
        cand, pb, w = cand_t[tid], pb_t[tid], w_t[tid]
        for u in range(lo + s * step, min(hi, lo + (s + 1) * step)):
            nt, pu = 0, prio[u]
            for q in range(indptr[u], indptr[u + 1]):
                eu = resid[q]
                i = indices[q]
                for r in range(t_indptr[i], t_indptr[i + 1]):
                    v = t_indices[r]  # a place in prio, as `touched` and the rows of ``acc``
                    if v != pu:
                        if acc[v, 0] == 0.0:
                            touched[nt] = v
                            nt += 1
                        ev = t_resid[r]
                        acc[v, 0] += 1.0
                        acc[v, 1] += eu * ev
                        acc[v, 2] += eu * eu
                        acc[v, 3] += ev * ev
            m = nt if candidates <= 0 else min(nt, candidates)
            if m < nt:  # the best `candidates` by the partial pearson_baseline; listed once (no similarity
                # yet): after all the others, in the order met
                for t in range(nt):
                    v = touched[t]
                    guess[t] = _shrunk(acc[v, 0], acc[v, 1], acc[v, 2], acc[v, 3], shrinkage) if acc[v, 0] >= 2 \
                        else -2.0
                    work[t] = -guess[t]
                cut = _kth_smallest(work[:nt], m - 1)
                got = 0
                for t in range(nt):  # above the cut, then at it in the order met
                    if -guess[t] < cut:
                        cand[got] = by_prio[touched[t]]
                        got += 1
                for t in range(nt):
                    if got < m and -guess[t] == cut:
                        cand[got] = by_prio[touched[t]]
                        got += 1
            else:
                for t in range(nt):
                    cand[t] = by_prio[touched[t]]
            cand[:m].sort()  # column order: ties below go to the lower column
            scored[s] += m
            for t in range(m):
                v = cand[t]
                pb[t] = 0.0
                w[t] = 0.0
                pv = prio[v]
                f, p, a, b = acc[pv, 0], acc[pv, 1], acc[pv, 2], acc[pv, 3]
                for q in range(indptr[u], indptr[u + 1]):  # the movies whose full list ended before v
                    i = indices[q]
                    if pv > limit[i]:
                        at = np.searchsorted(indices[indptr[v]:indptr[v + 1]], i)
                        if at < indptr[v + 1] - indptr[v] and indices[indptr[v] + at] == i:
                            eu, ev = resid[q], resid[indptr[v] + at]
                            f += 1.0
                            p += eu * ev
                            a += eu * eu
                            b += ev * ev
                if f < 2:  # Surprise: fewer than 2 common items → similarity 0
                    continue
                x = _shrunk(f, p, a, b, shrinkage)
                pb[t] = x
                w[t] = (f / norms[u] / norms[v]) * max(x, 0.0)
            for t in range(nt):
                v = touched[t]
                acc[v] = 0.0
            pos = np.flatnonzero(pb[:m] > 0)
            best = pos[np.argsort(-pb[pos], kind="mergesort")[:k_est]]  # stable: equal values keep column order
            best.sort()
            est_cnt[u - lo] = len(best)
            est_col[u - lo, :len(best)] = cand[best]
            est_val[u - lo, :len(best)] = pb[best]
            pos = np.flatnonzero(w[:m] > 0)
            best = pos[np.argsort(-w[pos], kind="mergesort")[:k_rank]]
            rank_idx[u, :len(best)] = cand[best]
            rank_w[u, :len(best)] = w[best]
    return scored.sum()


@numba.njit(cache=True, nogil=True)
def _kth_smallest(a: np.ndarray, k: int) -> float:
    """The `k`-th smallest value of `a` (0-based, 0 <= k < len(a)), reordering `a` in place; the value
    np.partition puts at k.

    By hand because numba's np.partition copies its input (an allocation per user of the listed users' size),
    while this works in the per-thread scratch: a quickselect with a three-way split, so runs of equal values
    (the many users listed once) end it early.
    """
    lo, hi = 0, len(a) - 1
    while lo < hi:
        x, y, z = a[lo], a[(lo + hi) // 2], a[hi]
        pivot = max(min(x, y), min(max(x, y), z))  # median of three
        lt, i, gt = lo, lo, hi  # a[lo:lt] < pivot, a[lt:i] == pivot, a[gt+1:hi+1] > pivot
        while i <= gt:
            if a[i] < pivot:
                a[lt], a[i] = a[i], a[lt]
                lt += 1
                i += 1
            elif a[i] > pivot:
                a[gt], a[i] = a[i], a[gt]
                gt -= 1
            else:
                i += 1
        if k < lt:
            hi = lt - 1
        elif k > gt:
            lo = gt + 1
        else:
            return pivot
    return a[lo]


@numba.njit(cache=True, nogil=True)
def _shrunk(f: float, prods: float, sq_u: float, sq_v: float, shrinkage: float) -> float:
    """pearson_baseline with shrinkage, in `neighbours`' order of operations (0 where there is no spread)."""
    den = np.sqrt(sq_u * sq_v)
    x = prods / den if den > 0 else 0.0
    return x * ((f - 1) / (f - 1 + shrinkage))


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
