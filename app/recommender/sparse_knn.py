"""User-based KNN at the real size: `UserKNN`'s estimate and ranking from each user's top-k neighbours only.

`UserKNN` keeps Surprise's dense user × user similarity: 8·n² bytes in the bundle, ~48·n² while fitting,
so it ends near 20,000 users on a 24 GiB machine. This algorithm answers the same two questions from
per-user neighbour lists (memory n·k, no n × n array in fit or bundle):

* ``estimate(u, i)``: KNNBaseline's, with the similarity of a rater who is not among u's stored
  ``neighbours`` taken as 0. Where every positively similar user is stored (k ≥ co-raters, every
  co-rater scored) it equals the exact path's to ~1e-12 (tested); with a small k or the capped
  candidates the RMSE moves by a bounded amount (tested on MovieLens-100k).
* ``score(u)``: the same neighbour support as `UserKNN` (the same k-wide ``rank_nb_idx``/``rank_nb_w``).

Which users are neighbours: by default each user's candidates come from movies' capped rater lists (their
heaviest raters; ``rater_cap``, shortened by ``list_budget``, and ``candidates``: cost ~ ratings, not users²),
each kept pair scored with the exact pearson_baseline; ``rater_cap=0, candidates=0`` scores every co-rater
(the exact top-k, cost ~ users²).
`bench/scale.py` measures the recall of the one against the other.

`Recommender.train` picks it above ``exact_max_users`` users (see `base.EXACT_MAX_USERS`). Fitting is in
`app.recommender.fit_sparse_knn`, which serving never imports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import sparse

from app.recommender.base import SCALABLE_ALGORITHM, Recommender, csr_arrays, csr_from, register
from app.recommender.knn import UserKNN

log = logging.getLogger(__name__)


@register(SCALABLE_ALGORITHM, fitter="app.recommender.fit_sparse_knn:fit")
@dataclass(kw_only=True, eq=False)
class SparseUserKNN(Recommender):
    """KNNBaseline estimates and neighbour-support scores from each user's top-k neighbours (CSR)."""

    description: ClassVar[str] = "user-based KNNBaseline (pearson_baseline, top-k neighbours only) + neighbour support"
    PARAMS: ClassVar[dict[str, Any]] = {
        **UserKNN.PARAMS,
        "neighbours": 200,  # stored per user for the estimate (memory n·k): the k raters used come from these
        # Candidate pairs (fit_sparse_knn._capped_neighbours): each movie lists at most `rater_cap` of its raters,
        # the heaviest (0: all of them, the exact top-k at a cost ~ users²), and per user the `candidates` most
        # similar of the users its movies list are scored exactly (0: all). Cost ≤ ratings·list_budget. 1,000 / 300:
        # recall 0.93 / 0.91 on a 20k world (`bench scale sweep`); at 1M (lists of 537 by list_budget) a 4-minute
        # fit, recall 0.25 / 0.09 of a 2,000-user sample's exact neighbours, 66 % of their similarity (`bench scale
        # sample`; lists of 1,000: 7 minutes, 0.33 / 0.13, 76 %).
        "rater_cap": 1_000,
        "candidates": 300,
        # Lists shorter than rater_cap where their pass would visit more than this many entries a rating
        # (fit_sparse_knn.budgeted_cap; 0: no bound): keeps the fit linear in ratings at every size. The world
        # generator's ratings need 193 a rating at 20k users (the cap holds), 876 at 1M (lists of 537). Growth of
        # the train time against ratings with it: ≤ 1.18 from 10k to 1M users, 1.34 without (`bench scale`).
        "list_budget": 500,
    }

    global_mean: float
    bu: np.ndarray  # user baselines
    bi: np.ndarray  # item baselines
    nb: sparse.csr_matrix  # user × user pearson_baseline (> 0) of each user's top neighbours, sorted columns
    item_raters: sparse.csr_matrix  # item × user ratings, in Surprise's insertion order (tie order)
    rank_nb_idx: np.ndarray  # user × K neighbours for ranking
    rank_nb_w: np.ndarray  # their weights (cosine · positive taste, ≥ 0; 0 pads)
    like: sparse.csr_matrix  # user × item support a neighbour lends: 1 + like_weight · (r - baseline)

    def estimate(self, u: int | None, i: int | None) -> float:
        """`UserKNN`'s KNNBaseline estimate, with similarities from the stored neighbours (`rater_similarities`)."""
        return UserKNN.estimate(self, u, i)  # type: ignore[arg-type]

    def rater_similarities(self, u: int, raters: np.ndarray) -> np.ndarray:
        """A rater outside u's stored neighbours counts as similarity 0; u itself as 1 (Surprise's diagonal)."""
        ns, ne = self.nb.indptr[u], self.nb.indptr[u + 1]
        cols, vals = self.nb.indices[ns:ne], self.nb.data[ns:ne]
        if ne > ns:
            pos = np.minimum(np.searchsorted(cols, raters), len(cols) - 1)
            sims = np.where(cols[pos] == raters, vals[pos], 0.0)
        else:
            sims = np.zeros(len(raters))
        sims[raters == u] = 1.0
        return sims

    def score(self, u: int) -> np.ndarray:
        """`UserKNN`'s neighbour support: it reads only the ranking arrays and ``like``, which this class shares."""
        return UserKNN.score(self, u)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ its arrays in the bundle
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "global_mean": np.array([self.global_mean]),
            "bu": self.bu,
            "bi": self.bi,
            "rank_nb_idx": self.rank_nb_idx,
            "rank_nb_w": self.rank_nb_w,
            **csr_arrays("nb", self.nb),
            **csr_arrays("item_raters", self.item_raters),
            **csr_arrays("like", self.like),
        }

    @classmethod
    def read_fields(
        cls, arrays: Mapping[str, np.ndarray], directory: Path, n_users: int, n_items: int, mmap: bool
    ) -> dict[str, Any]:
        return {
            "global_mean": float(arrays["global_mean"][0]),
            "bu": arrays["bu"],
            "bi": arrays["bi"],
            "nb": csr_from(arrays, "nb", (n_users, n_users)),
            "item_raters": csr_from(arrays, "item_raters", (n_items, n_users)),
            "rank_nb_idx": arrays["rank_nb_idx"],
            "rank_nb_w": arrays["rank_nb_w"],
            "like": csr_from(arrays, "like", (n_users, n_items)),
        }
