"""The cold-start ranking every algorithm shares: what a user with too little history is shown.

Per gender key (``'M'``, ``'F'``, and ``''`` for everyone) one order of the whole catalogue: an
IMDb-style weighted rating (scaled to 1-5) blended with the shrunk average rating that users of that
gender gave the movie. It is computed once at training from the ratings and the movie attributes,
so serving a cold user is a filter over a stored order, never a sum.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PARAMS: dict[str, Any] = {
    "cold_min_ratings": 5,  # fewer ratings than this: the user gets the cold-start ranking
    "imdb_weight": 0.5,
    "imdb_min_votes_quantile": 0.8,
    "gender_prior_votes": 10.0,
}
GENDER_KEYS = ("", "M", "F")


def orders(
    user_items: sparse.csr_matrix,
    genders: np.ndarray,
    movie_attrs: pd.DataFrame,
    global_mean: float,
    p: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Fallback ranking per gender key → movie inner ids, best first.

    Popularity only breaks ties and catalogue position makes the order total, so the same model
    always gives the same order.
    """
    n_items = user_items.shape[1]
    va = movie_attrs["vote_average"].to_numpy(float)
    vc = movie_attrs["vote_count"].fillna(0).to_numpy(float)
    have_imdb = ~np.isnan(va)
    imdb = np.full(n_items, np.nan)
    if have_imdb.any():
        c = float(np.nanmean(va))
        m = float(np.quantile(vc[have_imdb], float(p["imdb_min_votes_quantile"]))) or 1.0
        wr = (vc / (vc + m)) * np.nan_to_num(va, nan=c) + (m / (vc + m)) * c
        imdb = np.where(have_imdb, 1.0 + 4.0 * wr / 10.0, np.nan)
    prior = float(p["gender_prior_votes"])
    pop = np.asarray((user_items != 0).sum(axis=0)).ravel().astype(float)
    out: dict[str, np.ndarray] = {}
    for key in GENDER_KEYS:
        rows = np.flatnonzero(genders == key) if key else np.arange(user_items.shape[0])
        sub = user_items[rows] if len(rows) else user_items
        sums = np.asarray(sub.sum(axis=0)).ravel()
        counts = np.asarray((sub != 0).sum(axis=0)).ravel().astype(float)
        mean = float(sums.sum() / counts.sum()) if counts.sum() else global_mean
        shrunk = (sums + prior * mean) / (counts + prior)
        w = float(p["imdb_weight"])
        score = np.where(np.isnan(imdb), shrunk, w * np.nan_to_num(imdb) + (1 - w) * shrunk)
        out[key] = np.lexsort((np.arange(n_items), -pop, -score)).astype(np.int64)
    return out
