"""Recommendation algorithms on one base (`base.Recommender`), the way Surprise builds on ``AlgoBase``.

==================  ==================================================================================
``base``            ids, cold/warm choice, profiles, list rules, fallback, top lists, bundle, registry
``cold_start``      the cold-start ranking every algorithm shares (IMDb-style rating × gender average)
``profiles``        user and movie attributes read from the tables at training
``knn``             `UserKNN`, the default algorithm: KNNBaseline estimate + neighbour-support score
``fit_knn``         its training adapter (Surprise); imported by `Recommender.train` only
``sparse_knn``      `SparseUserKNN` (``user_knn_sparse``): the same estimate and score from per-user top-k
                    neighbours (memory n·k, no n × n array); `train` picks it above ``EXACT_MAX_USERS`` users
``fit_sparse_knn``  its training adapter (capped rater lists, one numba-compiled loop per user); training only
``baselines``       bench/test only: ``bench_random`` and ``bench_popularity``, the bad models the release must catch
==================  ==================================================================================

Adding an algorithm is one module: a dataclass subclass of `Recommender` decorated with
`register(name, fitter="module:function")`, imported below so bundles naming it can load.
"""

from __future__ import annotations

from app.recommender import baselines  # noqa: F401  (registers the bench/test baselines, so their bundles load)
from app.recommender.base import (
    ALGORITHMS,
    COLD,
    DEFAULT_ALGORITHM,
    EXACT_MAX_USERS,
    FALLBACK,
    LIST_WIDTH,
    WARM,
    Fit,
    Recommendation,
    Recommender,
    register,
)
from app.recommender.knn import UserKNN
from app.recommender.sparse_knn import SparseUserKNN

DEFAULT_PARAMS = ALGORITHMS[DEFAULT_ALGORITHM].default_params()

__all__ = [
    "ALGORITHMS",
    "COLD",
    "DEFAULT_ALGORITHM",
    "DEFAULT_PARAMS",
    "EXACT_MAX_USERS",
    "FALLBACK",
    "LIST_WIDTH",
    "WARM",
    "Fit",
    "Recommendation",
    "Recommender",
    "SparseUserKNN",
    "UserKNN",
    "register",
]
