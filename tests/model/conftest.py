"""A small hand-built catalogue where every rule of a list can be checked by eye."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.model import Recommender

N_USERS, N_MOVIES = 80, 120
ADULT = {f"adult+movie+{i}+1999" for i in range(6)}
MINORS = set(range(1, 13))  # ages 12..16
COLD_USER = 70  # has 2 ratings: below the cold-start threshold
PROFILE_ONLY_USER = 500  # in users.csv, no rating at all


def movie_id(i: int) -> str:
    return f"adult+movie+{i}+1999" if i < 6 else f"plain+movie+{i}+2001"


@pytest.fixture(scope="session")
def catalogue() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ratings with two taste groups (even/odd users like even/odd movies); adults rate adult movies."""
    rng = np.random.default_rng(5)
    rows = []
    for u in range(1, N_USERS + 1):
        n = 2 if u == COLD_USER else int(rng.integers(15, 40))
        pool = [i for i in range(N_MOVIES) if not (u in MINORS and i < 6)]
        for i in rng.choice(pool, size=n, replace=False):
            liked = (i % 2) == (u % 2)
            rating = int(np.clip(round(rng.normal(4.2 if liked else 2.3, 0.7)), 1, 5))
            rows.append((u, movie_id(int(i)), rating, 1_000_000 + len(rows)))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    users = pd.DataFrame(
        {
            "user_id": [*range(1, N_USERS + 1), PROFILE_ONLY_USER],
            "age": [15 if u in MINORS else 30 for u in range(1, N_USERS + 1)] + [40],
            "gender": ["F" if u % 3 == 0 else "M" for u in range(1, N_USERS + 1)] + ["F"],
            "occupation": ["student"] * (N_USERS + 1),
        }
    )
    movies = pd.DataFrame(
        {
            "movie_id": [movie_id(i) for i in range(N_MOVIES)],
            "title": [f"movie {i}" for i in range(N_MOVIES)],
            "year": [1999] * N_MOVIES,
            "genres": ["Drama"] * N_MOVIES,
            "adult": [i < 6 for i in range(N_MOVIES)],
            # adult movies get the best IMDb-style scores: the filter, not the score, must keep them out
            "vote_average": [9.9 if i < 6 else 5 + (i % 7) * 0.5 for i in range(N_MOVIES)],
            "vote_count": [5000] * N_MOVIES,
            "popularity": [1.0] * N_MOVIES,
            "runtime": [100] * N_MOVIES,
        }
    )
    return ratings, users, movies


@pytest.fixture(scope="session")
def model(catalogue) -> Recommender:
    ratings, users, movies = catalogue
    return Recommender.train(ratings, users, movies)
