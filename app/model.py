"""The stable import point of the model the platform trains and serves (design section 10).

``from app.model import Recommender`` keeps working whatever the package layout: the code lives in
`app.recommender` (base, cold start, algorithms). This module only re-exports.
"""

from __future__ import annotations

from app.contracts.bundle import BundleError
from app.recommender import DEFAULT_PARAMS, LIST_WIDTH, Recommendation, Recommender, UserKNN

__all__ = ["DEFAULT_PARAMS", "LIST_WIDTH", "BundleError", "Recommendation", "Recommender", "UserKNN"]
