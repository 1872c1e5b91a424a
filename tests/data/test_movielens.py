"""Expectations on the MovieLens-100k importer (the recbole wheel's copy, converted to our tables)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from app.contracts.events import WatchEvent, parse_line
from app.contracts.tables import MOVIES, RATINGS, USERS, WATCHES, load_tables, save_tables
from simulator.movielens import ML100K_FILES, course_title, ml100k_dir, movielens_100k

ML_GENRES = {
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
}


def test_importer_keeps_every_rating_user_and_movie(ml100k):
    assert len(ml100k.ratings) == 100_000
    assert ml100k.ratings.user_id.nunique() == len(ml100k.users) == 943
    assert len(ml100k.movies) == ml100k.ratings.movie_id.nunique() == 1_682
    assert set(ml100k.ratings.movie_id) == set(ml100k.movies.movie_id)
    assert set(ml100k.ratings.user_id) == set(ml100k.users.user_id)
    assert not ml100k.ratings.duplicated(["user_id", "movie_id"]).any()


def test_tables_have_exactly_the_schema_columns(ml100k):
    assert list(ml100k.ratings.columns) == RATINGS
    assert list(ml100k.users.columns) == USERS
    assert list(ml100k.movies.columns) == MOVIES
    assert list(ml100k.watches.columns) == WATCHES
    assert ml100k.watches.empty


def test_movie_ids_are_unique_and_course_style(ml100k):
    ids = ml100k.movies.movie_id
    assert ids.is_unique
    assert not ids.str.contains(r"[\s,/=A-Z]").any()
    assert ids.str.fullmatch(r"[a-z0-9._\-]+(\+[a-z0-9._\-]+)*").all()
    dated = ml100k.movies.year.notna()
    assert dated.sum() >= 1_680
    ends_in_year = [mid.endswith(f"+{int(y)}") for mid, y in zip(ids[dated], ml100k.movies.year[dated], strict=True)]
    assert all(ends_in_year)
    for movie_id in ids:
        event = parse_line(f"1998-04-01T12:00:00.123,5,GET /data/m/{movie_id}/12.mpg")
        assert isinstance(event, WatchEvent) and event.movie_id == movie_id


def test_well_known_titles_get_the_course_ids(ml100k):
    ids = set(ml100k.movies.movie_id)
    # MovieLens writes "Toy Story (1995)", "Usual Suspects, The (1995)", "Monty Python's Life of Brian (1979)"
    assert {"toy+story+1995", "the+usual+suspects+1995", "monty+pythons+life+of+brian+1979"} <= ids
    assert "star+wars+1977" in ids


def test_titles_listed_twice_stay_two_movies_with_year_ending_ids(ml100k):
    amy = ml100k.movies[ml100k.movies.title == "Chasing Amy"]
    assert len(amy) == 2  # MovieLens-100k holds it under two item ids
    assert amy.movie_id.nunique() == 2
    assert amy.movie_id.str.endswith("+1997").all()
    assert "chasing+amy+1997" in set(amy.movie_id)


@pytest.mark.parametrize(("raw", "title", "year"), [
    ("Usual Suspects, The", "The Usual Suspects", None),
    ("Seven (Se7en)", "Seven", None),
    ("Associate, L'", "L'Associate", None),
    ("Land Before Time III: The Time of the Great Giving (1995)", "Land Before Time III: The Time of the Great Giving",
     1995),
])
def test_course_title_turns_movielens_titles_into_display_titles(raw, title, year):
    got_title, got_year = course_title(raw)
    assert got_title == title
    assert (np.isnan(got_year) if year is None else got_year == year)


def test_users_have_ages_genders_and_occupations(ml100k):
    users = ml100k.users
    assert users.user_id.is_unique
    assert users.age.between(1, 100).all()
    assert (users.age < 18).sum() > 0
    assert set(users.gender) == {"M", "F"}
    assert users.occupation.nunique() == 21
    assert "student" in set(users.occupation)


def test_ratings_are_whole_stars_with_unix_timestamps(ml100k):
    ratings = ml100k.ratings
    assert ratings.rating.isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    # collected September 1997 – April 1998
    when = pd.to_datetime(ratings.timestamp, unit="s")
    assert when.min() >= pd.Timestamp("1997-09-01") and when.max() < pd.Timestamp("1998-05-01")


def test_movie_votes_are_derived_from_the_ratings(ml100k):
    stats = ml100k.ratings.groupby("movie_id").rating.agg(["mean", "size"])
    movies = ml100k.movies.set_index("movie_id")
    assert (movies.vote_count == stats["size"].reindex(movies.index)).all()
    np.testing.assert_allclose(movies.vote_average, 2 * stats["mean"].reindex(movies.index), atol=1e-3)
    assert movies.vote_average.between(0, 10).all()
    assert (movies.popularity.rank() == movies.vote_count.rank()).all()


def test_movie_attributes_we_lack_are_missing_not_invented(ml100k):
    movies = ml100k.movies
    assert movies.runtime.isna().all()
    assert not movies.adult.any()
    genres = {g for gs in movies.genres.dropna() for g in gs.split("|")}
    assert genres == ML_GENRES
    assert movies.year.dropna().between(1920, 1998).all()


def test_tables_survive_a_save_and_load_round_trip(ml100k, tmp_path):
    save_tables(ml100k, tmp_path)
    loaded = load_tables(tmp_path)
    movies = ml100k.movies.sort_values("movie_id", kind="mergesort", ignore_index=True)
    pd.testing.assert_frame_equal(loaded.movies, movies, check_dtype=False, rtol=1e-5)
    assert len(loaded.ratings) == 100_000


def test_existing_files_are_used_without_downloading(ml100k, tmp_path):
    """Files in a given folder (or in `<root>/ml-100k/`) are read as they are; pip is never run."""
    source = ml100k_dir()
    own = tmp_path / "mine"
    nested = tmp_path / "root" / "ml-100k"
    for folder in (own, nested):
        folder.mkdir(parents=True)
        for name in ML100K_FILES:
            shutil.copy(source / name, folder / name)
    for where in (own, tmp_path / "root"):
        tables = movielens_100k(where)
        pd.testing.assert_frame_equal(tables.ratings, ml100k.ratings)
        pd.testing.assert_frame_equal(tables.movies, ml100k.movies)
    # a download would have left a new folder (or its temporary one) beside the files
    assert sorted(p.name for p in own.iterdir()) == sorted(ML100K_FILES)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["ml-100k"]


def test_cache_dir_setting_decides_where_the_files_live(ml100k, tmp_path, monkeypatch):
    source = ml100k_dir()
    (tmp_path / "ml-100k").mkdir()
    for name in ML100K_FILES:
        shutil.copy(source / name, tmp_path / "ml-100k" / name)
    monkeypatch.setenv("MOVIEREC_CACHE_DIR", str(tmp_path))
    assert ml100k_dir() == tmp_path / "ml-100k"
    assert len(movielens_100k().ratings) == len(ml100k.ratings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k"]


def test_a_missing_or_partial_cache_is_filled_from_the_recbole_wheel(ml100k, tmp_path):
    """Downloads the wheel with pip (PyPI) and extracts only the three MovieLens files."""
    target = tmp_path / "cache" / "ml-100k"
    target.mkdir(parents=True)
    (target / "ml-100k.inter").write_text("half a download\n")
    assert ml100k_dir(target) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(ML100K_FILES)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ml-100k"]  # no wheel or temp folder left
    pd.testing.assert_frame_equal(movielens_100k(target).ratings, ml100k.ratings)


def test_unreachable_pypi_says_where_the_data_comes_from_and_how_to_provide_it(tmp_path, monkeypatch):
    from simulator.movielens import MovieLensUnavailable

    # a closed port as the package index: pip fails at once, exactly as on a machine without PyPI
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(MovieLensUnavailable) as caught:
        ml100k_dir(tmp_path / "empty-cache")
    message = str(caught.value)
    assert "PyPI" in message and "recbole==" in message and "MOVIEREC_CACHE_DIR" in message
    assert str(tmp_path / "empty-cache") in message
    assert not (tmp_path / "empty-cache" / "ml-100k" / "ml-100k.inter").exists()
