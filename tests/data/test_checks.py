"""Data checks of the pipeline: each one refuses its kind of bad data and accepts the small world."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from app.contracts.tables import FILES
from auto_deployment.data.checks import CheckLimits, run_checks

LIMITS = CheckLimits(min_new_ratings=10, max_unknown_share=0.01)


def _edit(data_dir: Path, table: str, change) -> None:
    """Rewrite one CSV of `data_dir` through `change(frame) -> frame` (raw text columns kept)."""
    path = data_dir / FILES[table]
    frame = pd.read_csv(path, dtype={"movie_id": "str"})
    change(frame).to_csv(path, index=False)


def _failed(data_dir: Path, new_ratings: int = 100) -> dict[str, list[str]]:
    report = run_checks(data_dir, new_ratings, LIMITS)
    return {r.name: r.problems for r in report.failed}


def test_small_world_passes_every_check(data_dir: Path) -> None:
    report = run_checks(data_dir, 100, LIMITS)
    assert report.passed, report.summary()
    assert [r.name for r in report.results] == ["schema", "ranges", "unknown", "new_ratings"]


def test_schema_refuses_a_missing_column(data_dir: Path) -> None:
    _edit(data_dir, "ratings", lambda f: f.drop(columns=["rating"]))
    failed = _failed(data_dir)
    assert "schema" in failed and "rating" in failed["schema"][0]


def test_schema_refuses_a_missing_ratings_table(data_dir: Path) -> None:
    (data_dir / FILES["ratings"]).unlink()
    assert "ratings table missing" in _failed(data_dir)["schema"]


def test_schema_refuses_two_ratings_of_one_user_and_movie(data_dir: Path) -> None:
    _edit(data_dir, "ratings", lambda f: pd.concat([f, f.head(3)], ignore_index=True))
    assert any("sharing a key" in p for p in _failed(data_dir)["schema"])


def test_schema_refuses_text_in_user_ids_and_ratings(data_dir: Path) -> None:
    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({"user_id": object, "rating": object})
        frame.loc[0, "user_id"] = "alice"
        frame.loc[1, "rating"] = "five"
        return frame

    _edit(data_dir, "ratings", spoil)
    problems = " ".join(_failed(data_dir)["schema"])
    assert "user_id not a non-negative integer" in problems and "alice" in problems
    assert "rating not a number" in problems


def test_ranges_refuse_ratings_outside_one_to_five(data_dir: Path) -> None:
    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[:1, "rating"] = [0, 6]
        return frame

    _edit(data_dir, "ratings", spoil)
    failed = _failed(data_dir)
    assert list(failed) == ["ranges"]
    assert "ratings.rating outside 1..5 in 2 rows" in failed["ranges"][0]


def test_ranges_refuse_timestamps_from_the_future(data_dir: Path) -> None:
    future = int(time.time()) + 30 * 86_400

    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "timestamp"] = future
        return frame

    _edit(data_dir, "ratings", spoil)
    assert any("ratings.timestamp" in p for p in _failed(data_dir)["ranges"])


def test_ranges_refuse_bad_user_and_movie_attributes(data_dir: Path) -> None:
    def spoil_users(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({"gender": object})
        frame.loc[0, "age"] = 400
        frame.loc[1, "gender"] = "X"
        return frame

    def spoil_movies(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "vote_average"] = 11.5
        return frame

    _edit(data_dir, "users", spoil_users)
    _edit(data_dir, "movies", spoil_movies)
    problems = " ".join(_failed(data_dir)["ranges"])
    assert "users.age" in problems and "users.gender" in problems and "movies.vote_average" in problems


def test_ranges_refuse_a_watch_ending_before_it_begins(data_dir: Path) -> None:
    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "last_seen"] = frame.loc[0, "first_seen"] - 10
        return frame

    _edit(data_dir, "watches", spoil)
    assert any("end before they begin" in p for p in _failed(data_dir)["ranges"])


def test_unknown_refuses_ratings_of_users_missing_from_the_catalogue(data_dir: Path) -> None:
    users = pd.read_csv(data_dir / FILES["users"])
    ratings = pd.read_csv(data_dir / FILES["ratings"])
    dropped = users["user_id"].head(40)  # 40 of 300 users: far more than 1% of the ratings
    assert ratings["user_id"].isin(dropped).mean() > LIMITS.max_unknown_share
    _edit(data_dir, "users", lambda f: f[~f["user_id"].isin(dropped)])
    failed = _failed(data_dir)
    assert list(failed) == ["unknown"]
    assert "by users not in the catalogue" in failed["unknown"][0]


def test_unknown_tolerates_a_share_under_the_limit(data_dir: Path) -> None:
    ratings = pd.read_csv(data_dir / FILES["ratings"], dtype={"movie_id": "str"})
    counts = ratings["movie_id"].value_counts()
    rare = counts[counts.cumsum() <= len(ratings) * 0.005].index  # rarely rated movies: < 0.5% of ratings
    movie = counts.index[-1] if rare.empty else rare[-1]
    _edit(data_dir, "movies", lambda f: f[f["movie_id"] != movie])
    report = run_checks(data_dir, 100, LIMITS)
    assert report.passed, report.summary()
    unknown = next(r for r in report.results if r.name == "unknown")
    assert unknown.details["unknown_movies_ratings"] == int(counts[movie])


def test_unknown_refuses_ratings_of_uncatalogued_movies(data_dir: Path) -> None:
    ratings = pd.read_csv(data_dir / FILES["ratings"], dtype={"movie_id": "str"})
    popular = ratings["movie_id"].value_counts().index[:5]  # the five most rated: several % of ratings
    assert ratings["movie_id"].isin(popular).mean() > LIMITS.max_unknown_share

    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        renamed = {m: f"no+such+movie+{i}+1999" for i, m in enumerate(popular)}
        frame["movie_id"] = frame["movie_id"].map(lambda m: renamed.get(m, m))
        return frame

    _edit(data_dir, "ratings", spoil)
    failed = _failed(data_dir)
    assert list(failed) == ["unknown"]
    assert "by movies not in the catalogue" in failed["unknown"][0] and "no+such+movie+" in failed["unknown"][0]


@pytest.mark.parametrize("new_ratings", [0, 9])
def test_new_ratings_refuses_too_few(data_dir: Path, new_ratings: int) -> None:
    failed = _failed(data_dir, new_ratings=new_ratings)
    assert list(failed) == ["new_ratings"]
    assert failed["new_ratings"] == [f"{new_ratings} new ratings, at least 10 required"]


def test_new_ratings_passes_at_the_minimum(data_dir: Path) -> None:
    assert run_checks(data_dir, 10, LIMITS).passed


def test_every_failed_check_is_reported_at_once(data_dir: Path) -> None:
    def spoil(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "rating"] = 9
        return pd.concat([frame, frame.head(1)], ignore_index=True)

    _edit(data_dir, "ratings", spoil)
    report = run_checks(data_dir, 0, LIMITS)
    assert [r.name for r in report.failed] == ["schema", "ranges", "new_ratings"]
    summary = report.summary()
    assert "schema:" in summary and "ranges:" in summary and "new_ratings:" in summary


def test_unreadable_tables_fail_the_schema_check(data_dir: Path) -> None:
    (data_dir / FILES["ratings"]).write_bytes(b'user_id,movie_id\n"1,unterminated\n')
    failed = _failed(data_dir)
    assert "schema" in failed
