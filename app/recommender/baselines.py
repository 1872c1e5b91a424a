"""Bench/test baselines: deliberately bad models the release's quality check must catch (issue 11).

``bench_random`` scores every movie at random (seeded per user), ``bench_popularity`` by how many users
rated it, the same for everyone. Neither is ever trained by the pipeline: the detection matrix
(``bench/release.py``) and ``tests/release/test_detection_matrix.py`` build bundles of them and release
them as canaries, which must be aborted by the model-quality check, not by latency or errors (they answer
as fast as the real model, from the same materialised top lists).

Why registered algorithms and not a fault drill that scrambles lists: a drill would change answers behind
the model's back (the bundle, `/version` and provenance would name the real model), while a bundle is what
a bad retraining really produces; it passes the bundle contract, and the base (`base.Recommender`) still
applies every list rule (adult filter, nothing rated, exactly 20, deterministic), so only the ranking is
bad. They live in ``app/`` because the serving slot loads a bundle by the algorithm its metadata names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import sparse

from app.recommender.base import Fit, Recommender, register

if TYPE_CHECKING:
    import pandas as pd

RANDOM, POPULARITY = "bench_random", "bench_popularity"


def fit(frame: pd.DataFrame, p: dict[str, Any]) -> Fit:
    """Ids, the user × item ratings and each movie's rater count: all either baseline needs."""
    users, user_inner = np.unique(frame["user_id"].to_numpy(np.int64), return_inverse=True)
    movies, movie_inner = np.unique(frame["movie_id"].to_numpy(str), return_inverse=True)
    user_items = sparse.csr_matrix((frame["rating"].to_numpy(float), (user_inner, movie_inner)),
                                   shape=(len(users), len(movies)))
    user_items.sum_duplicates()
    user_items.sort_indices()
    gm = float(frame["rating"].mean())
    raters = np.diff(user_items.tocsc().indptr).astype(float)
    return Fit(users, movies.astype(str), user_items, gm, len(frame), {"global_mean": gm, "raters": raters})


@dataclass(kw_only=True, eq=False)
class _Baseline(Recommender):
    """The shared arrays: the global mean (every estimate) and each movie's rater count."""

    global_mean: float
    raters: np.ndarray  # users who rated each movie

    def estimate(self, u: int | None, i: int | None) -> float:
        return self.global_mean

    def arrays(self) -> dict[str, np.ndarray]:
        return {"global_mean": np.array([self.global_mean]), "raters": self.raters}

    @classmethod
    def read_fields(
        cls, arrays: Mapping[str, np.ndarray], directory: Path, n_users: int, n_items: int, mmap: bool
    ) -> dict[str, Any]:
        raters = arrays["raters"]
        if raters.shape != (n_items,):
            raise ValueError(f"raters has shape {raters.shape}, expected ({n_items},)")
        return {"global_mean": float(arrays["global_mean"][0]), "raters": raters}


@register(RANDOM, fitter="app.recommender.baselines:fit")
@dataclass(kw_only=True, eq=False)
class RandomBaseline(_Baseline):
    """Test/bench only: a random ranking per user (seeded by `seed` and the user, so lists are stable)."""

    description: ClassVar[str] = "bench baseline: random lists"
    PARAMS: ClassVar[dict[str, Any]] = {"seed": 0}

    def score(self, u: int) -> np.ndarray:
        return np.random.default_rng([int(self.params.get("seed", 0)), u]).random(len(self.movie_ids)) + 1e-9


@register(POPULARITY, fitter="app.recommender.baselines:fit")
@dataclass(kw_only=True, eq=False)
class PopularityBaseline(_Baseline):
    """Test/bench only: the most rated movies, the same for every user (minus what the rules remove)."""

    description: ClassVar[str] = "bench baseline: popularity-only lists"
    PARAMS: ClassVar[dict[str, Any]] = {}

    def score(self, u: int) -> np.ndarray:
        return self.raters.astype(float)
