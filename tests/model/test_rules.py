"""The rules every list obeys, whatever strategy produced it (warm CF, cold start, fallback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.model import Recommender
from app.recommender import COLD, FALLBACK, WARM
from tests.model.conftest import (
    ADULT,
    COLD_MINOR,
    COLD_USER,
    MINORS,
    N_USERS,
    PROFILE_ONLY_MINOR,
    PROFILE_ONLY_USER,
)

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_USER = 99_999


def rated_by(ratings: pd.DataFrame, user: int) -> set[str]:
    return set(ratings.loc[ratings.user_id == user, "movie_id"])


@pytest.mark.parametrize(
    "user", [2, 3, 30, COLD_USER, COLD_MINOR, PROFILE_ONLY_USER, PROFILE_ONLY_MINOR, UNKNOWN_USER]
)
def test_every_list_has_exactly_twenty_distinct_movies(model, user):
    recs = model.recommend(user)
    assert len(recs) == 20
    assert len(set(recs)) == 20


def test_never_recommends_a_movie_the_user_rated(model, catalogue):
    ratings, _, _ = catalogue
    for user in range(1, N_USERS + 1):
        assert not set(model.recommend(user)) & rated_by(ratings, user), user


def test_minors_never_get_adult_movies_on_the_cf_path(model):
    warm_minors = [u for u in MINORS if not model.is_cold(u)]
    assert warm_minors, "the catalogue must have warm minors for this test to mean anything"
    for user in warm_minors:
        assert not set(model.recommend(user, n=100)) & ADULT


@pytest.mark.parametrize(
    ("user", "how"), [(COLD_MINOR, COLD), (PROFILE_ONLY_MINOR, COLD), (UNKNOWN_USER, FALLBACK)]
)
def test_cold_minors_and_unknown_users_never_get_adult_movies(model, catalogue, user, how):
    ratings, users, _ = catalogue
    age = users.loc[users.user_id == user, "age"]
    assert (age < 18).all() and len(age) == (user != UNKNOWN_USER), "a known minor, or nobody we know"
    made = model.explain(user, n=100)
    assert made.how == how and model.is_cold(user)
    assert len(made.movies) == 100 and not set(made.movies) & ADULT
    assert not set(made.movies) & rated_by(ratings, user)
    # only the filter keeps them out: the cold list of an adult woman (the same gender key) holds them all
    assert set(model.recommend(PROFILE_ONLY_USER)) >= ADULT


def test_the_cold_minor_is_a_known_user_below_the_cold_start_threshold(model, catalogue):
    ratings, _, _ = catalogue
    assert 0 < len(rated_by(ratings, COLD_MINOR)) < model.params["cold_min_ratings"]
    assert COLD_MINOR in set(model.user_ids.tolist())


def test_explain_says_how_each_list_was_made_and_gives_the_recommend_list(model):
    expected = {2: WARM, 3: WARM, COLD_USER: COLD, COLD_MINOR: COLD, PROFILE_ONLY_USER: COLD, UNKNOWN_USER: FALLBACK}
    for user, how in expected.items():
        for n in (20, 50):  # materialised and computed
            made = model.explain(user, n)
            assert made.how == how and made.cold == (how != WARM) == model.is_cold(user), user
            assert made.movies == model.recommend(user, n)


def test_the_fallback_list_is_the_list_of_a_user_we_know_nothing_about(model):
    assert model.fallback() == model.recommend(UNKNOWN_USER) == model.recommend(123_456_789)
    assert len(model.fallback(100)) == 100 and not set(model.fallback(100)) & ADULT
    assert model.fallback(7) == model.fallback(100)[:7]


def test_unknown_age_counts_as_a_minor(catalogue):
    ratings, users, movies = catalogue
    users = users.copy()
    users.loc[users.user_id == 30, "age"] = np.nan
    model = Recommender.train(ratings, users, movies)
    assert not set(model.recommend(30, n=len(movies))) & ADULT


def test_adults_can_get_adult_movies_from_cold_start(model):
    # the profile-only adult: the 9.9 IMDb-style score lifts every adult movie into the top 20
    assert set(model.recommend(PROFILE_ONLY_USER)) >= ADULT


def test_fallback_fills_the_list_when_neighbours_support_few_movies(model, catalogue):
    ratings, _, movies = catalogue
    warm = next(u for u in range(1, N_USERS + 1) if not model.is_cold(u))
    eligible = len(movies) - len(rated_by(ratings, warm)) - (len(ADULT) if warm in MINORS else 0)
    recs = model.recommend(warm, n=len(movies))
    assert len(recs) == eligible  # every eligible movie, none twice, once support runs out


def test_cold_start_blends_imdb_rating_with_same_gender_average(tmp_path):
    """A movie women love and men hate ranks high for a new woman, low for a new man."""
    rows = []
    for u in range(1, 41):
        female = u <= 20
        rows.append((u, "divisive+2000", 5 if female else 1, 1))
        rows.append((u, "steady+2000", 3, 2))
        rows.append((u, f"own+{u}+2000", 3, 3))
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    raters = list(range(1, 41))
    users = pd.DataFrame(
        {
            "user_id": [*raters, 100, 101],
            "age": 30,
            "gender": ["F" if u <= 20 else "M" for u in raters] + ["F", "M"],
            "occupation": "x",
        }
    )
    ids = sorted(ratings.movie_id.unique())
    movies = pd.DataFrame({"movie_id": ids, "adult": False, "vote_average": 6.0, "vote_count": 100})
    model = Recommender.train(ratings, users, movies)
    woman, man = model.recommend(100, n=len(ids)), model.recommend(101, n=len(ids))
    assert woman.index("divisive+2000") == 0
    assert man.index("divisive+2000") > man.index("steady+2000")
    # A stranger (no gender) gets the overall average, 3.0 for every movie, and every IMDb-style score
    # is 6.0: all tie. Popularity breaks the tie (divisive and steady have 40 raters, the others one),
    # then catalogue position (order of first rating).
    stranger = model.recommend(555, n=len(ids))
    assert stranger == ["divisive+2000", "steady+2000", *(f"own+{u}+2000" for u in range(1, 41))]
    again = Recommender.load(Recommender.train(ratings, users, movies).save(tmp_path / "again"))
    assert again.recommend(555, n=len(ids)) == stranger


def test_cold_start_prefers_better_imdb_rating_when_ratings_agree():
    # both movies average 3 with the same spread: only the IMDb-style score tells them apart
    rows = [(u, "great+2000", 2 + u % 3, 1) for u in range(1, 10)]
    rows += [(u, "poor+2000", 2 + (u + 1) % 3, 1) for u in range(1, 10)]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    movies = pd.DataFrame(
        {"movie_id": ["great+2000", "poor+2000"], "adult": False, "vote_average": [8.5, 4.0], "vote_count": 900}
    )
    model = Recommender.train(ratings, None, movies)
    assert model.recommend(999, n=2) == ["great+2000", "poor+2000"]


def test_cold_threshold_is_configurable(catalogue):
    ratings, users, movies = catalogue
    strict = Recommender.train(ratings, users, movies, cold_min_ratings=1000)
    assert strict.is_cold(2)
    assert strict.recommend(2) != Recommender.train(ratings, users, movies).recommend(2)


def test_lists_are_the_same_from_a_model_trained_in_another_process_and_from_its_bundle(model, tmp_path):
    """Another interpreter (another str hash seed) trains on the same tables and saves; we load it."""
    probe = [2, 3, COLD_USER, COLD_MINOR, PROFILE_ONLY_USER, UNKNOWN_USER]
    script = (
        "import sys; from app.model import Recommender; from tests.model.conftest import build_catalogue; "
        "Recommender.train(*build_catalogue()).save(sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "b")], env=env, cwd=ROOT, check=True, timeout=120)
    theirs = Recommender.load(tmp_path / "b")
    for user in probe:
        for n in (20, 50):  # materialised and computed
            assert theirs.recommend(user, n) == model.recommend(user, n), (user, n)
    assert json.loads((tmp_path / "b" / "metadata.json").read_text())["params"] == model.params


def test_warm_lists_follow_the_users_taste_group(model, catalogue):
    """Even users like even movies: their top-10 should be mostly even movies (CF works)."""
    share = []
    for user in range(2, N_USERS + 1, 2):
        if model.is_cold(user):
            continue
        top = model.recommend(user)[:10]
        share.append(np.mean([int(m.split("+")[2]) % 2 == 0 for m in top]))
    assert np.mean(share) > 0.8


def test_predictions_stay_on_the_rating_scale(model, catalogue):
    _, _, movies = catalogue
    for user in (1, 2, COLD_USER, UNKNOWN_USER):
        for movie in movies.movie_id[:40]:
            assert 1.0 <= model.predict(user, movie) <= 5.0
    assert 1.0 <= model.predict(UNKNOWN_USER, "never+seen+1900") <= 5.0


def test_unknown_parameters_are_refused(catalogue):
    ratings, users, movies = catalogue
    with pytest.raises(ValueError, match="unknown model parameters"):
        Recommender.train(ratings, users, movies, neighbourz=3)


def test_empty_ratings_are_refused():
    with pytest.raises(ValueError, match="empty"):
        Recommender.train(pd.DataFrame(columns=["user_id", "movie_id", "rating", "timestamp"]))


def test_ratings_without_any_spread_are_refused_with_a_reason():
    rows = [(u, m, 3, 1) for u in range(1, 11) for m in ("a+2000", "b+2000")]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    with pytest.raises(ValueError, match="no spread"):
        Recommender.train(ratings)
