"""A small hand-built catalogue where every rule of a list can be checked by eye."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.model import Recommender

N_USERS, N_MOVIES = 80, 120  # users 1..N_USERS rate 15-40 movies each (but COLD_USER)
ADULT = {f"adult+movie+{i}+1999" for i in range(6)}
MINORS = set(range(1, 13))  # age 15
COLD_USER = 70  # an adult with 2 ratings: below the cold-start threshold
COLD_MINOR = 81  # a 15-year-old with a profile and 2 ratings (of plain movies): cold, known, a minor
PROFILE_ONLY_USER = 500  # an adult in users.csv, no rating at all
PROFILE_ONLY_MINOR = 501  # a 14-year-old in users.csv, no rating at all


def movie_id(i: int) -> str:
    return f"adult+movie+{i}+1999" if i < 6 else f"plain+movie+{i}+2001"


def build_catalogue() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ratings with two taste groups (even/odd users like even/odd movies); adults rate adult movies.

    The same tables on every call (seeded), so separate processes can train the same model.
    """
    rng = np.random.default_rng(5)
    rows = []
    for u in range(1, N_USERS + 1):
        n = 2 if u == COLD_USER else int(rng.integers(15, 40))
        pool = [i for i in range(N_MOVIES) if not (u in MINORS and i < 6)]
        for i in rng.choice(pool, size=n, replace=False):
            liked = (i % 2) == (u % 2)
            rating = int(np.clip(round(rng.normal(4.2 if liked else 2.3, 0.7)), 1, 5))
            rows.append((u, movie_id(int(i)), rating, 1_000_000 + len(rows)))
    rows += [(COLD_MINOR, movie_id(10), 4, 2_000_000), (COLD_MINOR, movie_id(11), 3, 2_000_001)]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    raters = [*range(1, N_USERS + 1), COLD_MINOR]
    users = pd.DataFrame(
        {
            "user_id": [*raters, PROFILE_ONLY_USER, PROFILE_ONLY_MINOR],
            "age": [15 if u in MINORS or u == COLD_MINOR else 30 for u in raters] + [40, 14],
            "gender": ["F" if u % 3 == 0 else "M" for u in raters] + ["F", "F"],
            "occupation": ["student"] * (len(raters) + 2),
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
def catalogue() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return build_catalogue()


@pytest.fixture(scope="session")
def model(catalogue) -> Recommender:
    ratings, users, movies = catalogue
    return Recommender.train(ratings, users, movies)
