"""Recommendation algorithms on one base (`base.Recommender`), the way Surprise builds on ``AlgoBase``.

=================  ==================================================================================
``base``           ids, cold/warm choice, profiles, list rules, fallback, top lists, bundle, registry
``cold_start``     the cold-start ranking every algorithm shares (IMDb-style rating × gender average)
``profiles``       user and movie attributes read from the tables at training
``knn``            `UserKNN`, the default algorithm: KNNBaseline estimate + neighbour-support score
``fit_knn``        its training adapter (Surprise); imported by `Recommender.train` only
=================  ==================================================================================

Adding an algorithm is one module: a dataclass subclass of `Recommender` decorated with
`register(name, fitter="module:function")`, imported below so bundles naming it can load.
"""

from __future__ import annotations

from app.recommender.base import (
    ALGORITHMS,
    COLD,
    DEFAULT_ALGORITHM,
    FALLBACK,
    LIST_WIDTH,
    WARM,
    Fit,
    Recommendation,
    Recommender,
    register,
)
from app.recommender.knn import UserKNN

DEFAULT_PARAMS = ALGORITHMS[DEFAULT_ALGORITHM].default_params()

__all__ = [
    "ALGORITHMS",
    "COLD",
    "DEFAULT_ALGORITHM",
    "DEFAULT_PARAMS",
    "FALLBACK",
    "LIST_WIDTH",
    "WARM",
    "Fit",
    "Recommendation",
    "Recommender",
    "UserKNN",
    "register",
]
