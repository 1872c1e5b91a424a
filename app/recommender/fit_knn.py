"""Training adapter of `UserKNN`: Surprise's KNNBaseline fit, turned into the arrays the model keeps.

Only `Recommender.train` imports this module (lazily, through the registry's ``fitter``), so an
inference server never loads Surprise. Inner ids are Surprise's (order of first appearance in the
ratings): the estimate's tie order, and every list's, depends on them.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from surprise import Dataset, KNNBaseline, Reader

from app.recommender.base import Fit

log = logging.getLogger(__name__)


def fit(frame: pd.DataFrame, p: dict[str, Any]) -> Fit:
    """Fit KNNBaseline (user-based, pearson_baseline) on `frame` (user_id, movie_id, rating) with params `p`."""
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset()
    algo = KNNBaseline(
        k=int(p["k"]),
        min_k=int(p["min_k"]),
        sim_options={"name": "pearson_baseline", "user_based": True, "shrinkage": int(p["shrinkage"])},
        bsl_options={
            "method": p["bsl_method"],
            "reg_i": p["bsl_reg_i"],
            "reg_u": p["bsl_reg_u"],
            "n_epochs": int(p["bsl_epochs"]),
        },
        verbose=False,
    )
    try:
        algo.fit(trainset)
    except ZeroDivisionError as exc:  # Surprise's pearson_baseline on ratings without any spread
        raise ValueError("ratings have no spread around their baselines: similarities are undefined") from exc

    n_users, n_items = trainset.n_users, trainset.n_items
    user_ids = np.array([trainset.to_raw_uid(u) for u in range(n_users)], dtype=np.int64)
    movie_ids = np.array([str(trainset.to_raw_iid(i)) for i in range(n_items)], dtype=str)

    # item × user in Surprise's own order of raters: its top-k ties break on that order
    indptr, indices, data = [0], [], []
    for i in range(n_items):
        for u, r in trainset.ir[i]:
            indices.append(u)
            data.append(r)
        indptr.append(len(indices))
    item_raters = sparse.csr_matrix(
        (np.array(data, float), np.array(indices, np.int64), np.array(indptr, np.int64)),
        shape=(n_items, n_users),
    )
    user_items = item_raters.T.tocsr()
    user_items.sort_indices()

    gm = float(trainset.global_mean)
    bu, bi = np.asarray(algo.bu, float), np.asarray(algo.bi, float)
    sim = np.asarray(algo.sim, float)
    nb_idx, nb_w = ranking_neighbours(user_items, sim, int(p["rank_neighbours"]))
    coo = user_items.tocoo()
    like_vals = 1.0 + float(p["like_weight"]) * (coo.data - (gm + bu[coo.row] + bi[coo.col]))
    like = sparse.csr_matrix((like_vals, (coo.row, coo.col)), shape=user_items.shape)
    return Fit(
        user_ids=user_ids,
        movie_ids=movie_ids,
        user_items=user_items,
        global_mean=gm,
        train_size=int(trainset.n_ratings),
        fields={
            "global_mean": gm,
            "bu": bu,
            "bi": bi,
            "sim": sim,
            "item_raters": item_raters,
            "rank_nb_idx": nb_idx,
            "rank_nb_w": nb_w,
            "like": like,
        },
    )


def ranking_neighbours(user_items: sparse.csr_matrix, taste: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k users by cosine over who rated what × positive taste similarity, in row blocks."""
    binary = user_items.copy()
    binary.data = np.ones_like(binary.data)
    norms = np.sqrt(np.asarray(binary.sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    n = binary.shape[0]
    k = max(1, min(k, n - 1)) if n > 1 else 1
    idx = np.zeros((n, k), np.int64)
    w = np.zeros((n, k), float)
    block = 512
    bt = binary.T.tocsc()
    for start in range(0, n, block):
        stop = min(n, start + block)
        co = (binary[start:stop] @ bt).toarray() / norms[start:stop, None] / norms[None, :]
        co *= np.clip(taste[start:stop], 0.0, None)
        co[np.arange(stop - start), np.arange(start, stop)] = -1.0  # never your own neighbour
        part = np.argpartition(-co, k - 1, axis=1)[:, :k] if n > 1 else np.zeros((stop - start, 1), np.int64)
        vals = np.take_along_axis(co, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        w[start:stop] = np.clip(np.take_along_axis(vals, order, axis=1), 0.0, None)
    return idx, w
