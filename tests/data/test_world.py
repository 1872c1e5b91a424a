"""Expectations on the synthetic world: determinism, schema, realism, and that tastes are learnable."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from surprise import Dataset, KNNWithMeans, Reader

from app.contracts.events import WatchEvent, parse_line
from app.contracts.tables import FILES, MOVIES, RATINGS, USERS, WATCHES, load_tables, save_tables
from simulator.datasets import write_default_data
from simulator.ids import course_movie_id
from simulator.world import World
from tests.fixtures.datasets import SMALL_RATINGS, build_small_world

COURSE_ID = re.compile(r"[a-z0-9._\-]+(\+[a-z0-9._\-]+)*\+[0-9]{4}")


# ---------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_users_movies_and_history(small_world):
    again = build_small_world()
    pd.testing.assert_frame_equal(again.world.users, small_world.world.users)
    pd.testing.assert_frame_equal(again.world.movies, small_world.world.movies)
    pd.testing.assert_frame_equal(again.tables.ratings, small_world.tables.ratings)
    pd.testing.assert_frame_equal(again.tables.watches, small_world.tables.watches)


def test_different_seed_gives_a_different_world(small_world):
    other = World.generate(seed=8, n_users=300, n_movies=400)
    assert not other.users.equals(small_world.world.users)
    assert set(other.movies.movie_id) != set(small_world.world.movies.movie_id)


def test_different_history_seed_gives_a_different_history_of_the_same_world(small_world):
    ratings, _ = small_world.world.history(n_ratings=SMALL_RATINGS, seed=99)
    assert len(ratings) == len(small_world.tables.ratings)
    pairs = set(zip(ratings.user_id, ratings.movie_id, strict=True))
    old = set(zip(small_world.tables.ratings.user_id, small_world.tables.ratings.movie_id, strict=True))
    assert pairs != old


# ---------------------------------------------------------------------- schema and ranges


def test_tables_have_exactly_the_schema_columns(small_world):
    t = small_world.tables
    assert list(t.users.columns) == USERS
    assert list(t.movies.columns) == MOVIES
    assert list(t.ratings.columns) == RATINGS
    assert list(t.watches.columns) == WATCHES


def test_tables_survive_a_save_and_load_round_trip(small_world, data_dir):
    loaded = load_tables(data_dir)
    keys = {"users": ["user_id"], "movies": ["movie_id"], "ratings": ["user_id", "movie_id"],
            "watches": ["user_id", "movie_id"]}
    for name, key in keys.items():
        ours = getattr(small_world.tables, name).sort_values(key, kind="mergesort", ignore_index=True)
        pd.testing.assert_frame_equal(getattr(loaded, name), ours, check_dtype=False, rtol=1e-5, obj=name)


def test_user_attributes_are_plausible(small_world):
    users = small_world.world.users
    assert users.user_id.is_unique
    assert users.user_id.dtype == np.int64
    assert users.age.between(5, 100).all()
    assert set(users.gender) == {"M", "F"}
    assert users.occupation.nunique() >= 10
    assert (users.loc[users.age < 18, "occupation"] == "K-12 student").all()


def test_movie_attributes_are_in_range(small_world):
    movies = small_world.world.movies
    assert movies.year.between(1900, 2030).all()
    assert movies.vote_average.between(0, 10).all()
    assert (movies.vote_count >= 0).all()
    assert (movies.popularity > 0).all()
    assert movies.runtime.between(40, 240).all()
    assert movies.adult.dtype == bool
    genres = {g for gs in movies.genres for g in gs.split("|")}
    assert 12 <= len(genres) <= 20
    assert movies.genres.str.split("|").map(len).between(1, 3).all()


def test_history_has_the_requested_size_and_one_rating_per_user_and_movie(small_world):
    ratings, watches = small_world.tables.ratings, small_world.tables.watches
    assert len(ratings) == SMALL_RATINGS
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert not watches.duplicated(["user_id", "movie_id"]).any()
    assert len(watches) > len(ratings)
    assert set(ratings.user_id) <= set(small_world.world.users.user_id)
    assert set(watches.movie_id) <= set(small_world.world.movies.movie_id)


def test_ratings_are_whole_stars_from_1_to_5(small_world):
    rating = small_world.tables.ratings.rating
    assert rating.isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    assert rating.nunique() == 5
    assert 3.0 < rating.mean() < 4.2


def test_every_rating_follows_a_watch_of_that_movie(small_world):
    ratings, watches = small_world.tables.ratings, small_world.tables.watches
    both = ratings.merge(watches, on=["user_id", "movie_id"], how="left", validate="one_to_one")
    assert both.last_seen.notna().all()
    assert (both.timestamp >= both.last_seen).all()


def test_watch_minutes_fit_the_runtime_and_times_are_ordered(small_world):
    watches = small_world.tables.watches.merge(small_world.world.movies[["movie_id", "runtime"]], on="movie_id")
    assert (watches.minutes >= 1).all()
    assert (watches.minutes <= watches.runtime).all()
    assert (watches.last_seen >= watches.first_seen + 60 * watches.minutes).all()


def test_rating_timestamps_increase_over_the_simulated_period(small_world):
    world, ts = small_world.world, small_world.tables.ratings.timestamp
    assert ts.is_monotonic_increasing
    assert ts.min() >= world.start_time
    assert ts.max() <= world.start_time + world.period_days * 86_400
    assert ts.max() - ts.min() > 0.5 * world.period_days * 86_400


def test_an_impossible_history_size_is_refused(small_world):
    with pytest.raises(ValueError, match="do not fit"):
        small_world.world.history(n_ratings=300 * 400)


# ---------------------------------------------------------------------- movie ids


def test_movie_ids_are_unique_course_style_and_built_from_title_and_year(small_world):
    movies = small_world.world.movies
    assert movies.movie_id.is_unique
    for movie_id, title, year in zip(movies.movie_id, movies.title, movies.year, strict=True):
        assert COURSE_ID.fullmatch(movie_id), movie_id
        assert movie_id == course_movie_id(title, year)
        assert movie_id.endswith(f"+{year}")


def test_some_movie_ids_carry_the_streams_mangled_punctuation(world_tables):
    ids = world_tables.movies.movie_id
    assert ids.str.contains("_+", regex=False).sum() >= 3
    assert ids.str.contains(".+", regex=False).sum() >= 3
    assert ids.str.contains("+-+", regex=False).sum() >= 3


def test_every_movie_id_survives_the_watch_line_parser(small_world):
    for movie_id in small_world.world.movies.movie_id:
        event = parse_line(f"2024-01-01T10:00:00,42,GET /data/m/{movie_id}/7.mpg")
        assert isinstance(event, WatchEvent)
        assert event.movie_id == movie_id
        assert event.minute == 7


@pytest.mark.parametrize(("title", "year", "expected"), [
    # examples of the real stream (design section 3)
    ("The Lord of the Rings: The Return of the King", 2003, "the+lord+of+the+rings+the+return+of+the+king+2003"),
    ("Monsters, Inc.", 2001, "monsters_+inc.+2001"),
    ("WALL·E", 2008, "walle+2008"),
    ("Louis C.K.: Oh My God", 2013, "louis+c.k.+oh+my+god+2013"),
    ("The Hunger Games: Mockingjay - Part 1", 2014, "the+hunger+games+mockingjay+-+part+1+2014"),
])
def test_course_movie_id_mangles_titles_like_the_stream(title, year, expected):
    assert course_movie_id(title, year) == expected


@pytest.mark.parametrize("title", ["AC/DC: Live", "x = y", "Tab\tand  spaces", "Émilie, ça va?", "!!!", ""])
def test_course_movie_id_never_holds_characters_the_parser_rejects(title):
    movie_id = course_movie_id(title, 1999)
    assert not re.search(r"[\s,/=]", movie_id)
    assert movie_id.endswith("+1999")
    assert isinstance(parse_line(f"2024-01-01T10:00:00,1,GET /data/m/{movie_id}/1.mpg"), WatchEvent)


# ---------------------------------------------------------------------- realism


def test_about_three_percent_of_movies_are_adult(world_tables):
    share = world_tables.movies.adult.mean()
    assert 0.02 <= share <= 0.04


def test_ten_to_fifteen_percent_of_users_are_minors(world_tables):
    share = (world_tables.users.age < 18).mean()
    assert 0.08 <= share <= 0.16


def test_minors_have_a_plausible_history_without_adult_movies(world_tables):
    minors = set(world_tables.users.user_id[world_tables.users.age < 18])
    adult = set(world_tables.movies.movie_id[world_tables.movies.adult])
    theirs = world_tables.watches[world_tables.watches.user_id.isin(minors)]
    assert theirs.user_id.nunique() == len(minors)
    assert not theirs.movie_id.isin(adult).any()


def test_popularity_has_a_long_tail(world_tables):
    counts = world_tables.ratings.movie_id.value_counts()
    n_movies = len(world_tables.movies)
    top_decile_share = counts.iloc[: n_movies // 10].sum() / counts.sum()
    assert top_decile_share > 0.3
    assert counts.median() < 0.6 * counts.mean()
    # the catalogue's popularity attribute tells which movies get watched
    pop = world_tables.movies.set_index("movie_id").popularity
    assert pd.Series(counts).corr(pop.reindex(counts.index), method="spearman") > 0.6


def test_user_activity_is_skewed_but_nobody_is_silent(world_tables):
    per_user = world_tables.ratings.user_id.value_counts()
    assert len(per_user) == len(world_tables.users)
    assert per_user.max() > 5 * per_user.median()


def test_observed_ratings_follow_true_taste(small_world):
    world, ratings = small_world.world, small_world.tables.ratings
    true = world.true_ratings(ratings.user_id.to_numpy(), ratings.movie_id.to_numpy())
    assert ((true >= 1) & (true <= 5)).all()
    assert np.corrcoef(true, ratings.rating)[0, 1] > 0.6


def test_liked_movies_are_watched_longer(small_world):
    world = small_world.world
    watches = small_world.tables.watches.merge(world.movies[["movie_id", "runtime"]], on="movie_id")
    true = world.true_ratings(watches.user_id.to_numpy(), watches.movie_id.to_numpy())
    share = watches.minutes / watches.runtime
    assert share[true >= 4].mean() > share[true <= 2].mean() + 0.2


def test_sample_watch_is_reproducible_and_in_range(small_world):
    world = small_world.world
    user = int(world.users.user_id.iloc[3])
    movie = str(world.movies.movie_id.iloc[5])
    runtime = int(world.movies.runtime.iloc[5])
    first = [world.sample_watch(user, movie, np.random.default_rng(5)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = np.random.default_rng(6)
    watches = [world.sample_watch(user, movie, rng) for _ in range(2000)]
    assert all(1 <= w.minutes <= runtime for w in watches)
    given = [w.rating for w in watches if w.rating is not None]
    assert set(given) <= {1, 2, 3, 4, 5}
    assert abs(len(given) / len(watches) - world.rate_probability) < 0.05
    assert abs(np.mean(given) - world.true_rating(user, movie)) < 0.35


def test_sample_movies_skips_seen_and_keeps_minors_from_adult_movies(small_world):
    world = small_world.world
    minor = int(world.users.user_id[world.users.age < 18].iloc[0])
    adult = set(world.movies.movie_id[world.movies.adult])
    assert adult
    rng = np.random.default_rng(1)
    exclude = set(world.movies.movie_id.iloc[:50])
    picks = world.sample_movies(minor, 200, rng, exclude=exclude)
    assert len(picks) == len(set(picks)) == 200
    assert not set(picks) & (adult | exclude)


# ---------------------------------------------------------------------- tastes are learnable


def _split(ratings: pd.DataFrame, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    held = np.random.default_rng(seed).random(len(ratings)) < 0.2
    return ratings[~held], ratings[held]


def _fit_user_knn(train: pd.DataFrame, k: int) -> tuple[KNNWithMeans, object]:
    data = Dataset.load_from_df(train[["user_id", "movie_id", "rating"]], Reader(rating_scale=(1, 5)))
    trainset = data.build_full_trainset()
    sim_options = {"name": "pearson_baseline", "user_based": True, "shrinkage": 100}
    return KNNWithMeans(k=k, sim_options=sim_options, verbose=False).fit(trainset), trainset


def test_user_based_cf_predicts_true_taste_better_than_popularity(world_tables):
    """Surprise's user-based KNN on held-out ratings vs non-personal scores (rating count, mean rating)."""
    world = World.generate(seed=0)
    train, test = _split(world_tables.ratings)
    algo, _ = _fit_user_knn(train, k=40)
    est = np.array([p.est for p in algo.test(list(zip(test.user_id, test.movie_id, test.rating, strict=True)))])
    true = world.true_ratings(test.user_id.to_numpy(), test.movie_id.to_numpy())
    count = test.movie_id.map(train.movie_id.value_counts()).fillna(0).to_numpy()
    mean = test.movie_id.map(train.groupby("movie_id").rating.mean()).fillna(train.rating.mean()).to_numpy()
    corr_cf = np.corrcoef(est, true)[0, 1]
    assert corr_cf > np.corrcoef(count, true)[0, 1] + 0.3
    assert corr_cf > np.corrcoef(mean, true)[0, 1] + 0.1


def test_neighbour_top20_finds_more_held_out_favourites_than_popularity_top20(small_world):
    """Top-20 by the support of a user's Surprise-nearest neighbours vs the most-rated top-20."""
    train, test = _split(small_world.tables.ratings)
    k = 40
    algo, trainset = _fit_user_knn(train, k=k)
    ratings = np.zeros((trainset.n_users, trainset.n_items))
    for u, i, r in trainset.all_ratings():
        ratings[u, i] = r
    seen = ratings > 0
    sim = algo.sim.copy()
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1)[:, :k]
    weights = np.maximum(np.take_along_axis(sim, neighbours, axis=1), 0.0)
    support = np.einsum("un,uni->ui", weights, ratings[neighbours])
    popularity = np.broadcast_to(seen.sum(axis=0).astype(float), seen.shape)

    inner_user = {trainset.to_raw_uid(u): u for u in range(trainset.n_users)}
    inner_item = {trainset.to_raw_iid(i): i for i in range(trainset.n_items)}
    favourites: dict[int, set[int]] = {}
    liked = test[test.rating >= 4]
    for user, movie in zip(liked.user_id, liked.movie_id, strict=True):
        if user in inner_user and movie in inner_item:
            favourites.setdefault(inner_user[user], set()).add(inner_item[movie])

    def hit_rate(scores: np.ndarray) -> float:
        top = np.argsort(-np.where(seen, -np.inf, scores), axis=1, kind="stable")[:, :20]
        return float(np.mean([bool(favourites[u] & set(top[u])) for u in favourites]))

    assert hit_rate(support) > hit_rate(popularity) + 0.1


# ---------------------------------------------------------------------- default data for `make up`


def test_write_default_data_fills_an_empty_data_dir_once(tmp_path, world_tables):
    target = tmp_path / "data"
    assert write_default_data(target) is True
    loaded = load_tables(target)
    assert len(loaded.ratings) == len(world_tables.ratings)
    assert set(loaded.users.user_id) == set(world_tables.users.user_id)
    before = (target / FILES["ratings"]).read_bytes()
    assert write_default_data(target, seed=1) is False
    assert (target / FILES["ratings"]).read_bytes() == before


def test_write_default_data_keeps_collected_data(data_dir, small_world):
    before = load_tables(data_dir)
    assert write_default_data(data_dir) is False
    assert len(load_tables(data_dir).ratings) == len(before.ratings) == len(small_world.tables.ratings)


def test_write_default_data_replaces_a_ratings_file_without_rows(tmp_path, small_world):
    target = tmp_path / "data"
    empty = small_world.tables
    save_tables(type(empty)(ratings=empty.ratings.iloc[:0], watches=empty.watches.iloc[:0],
                            users=empty.users, movies=empty.movies), target)
    assert write_default_data(target) is True
    assert len(load_tables(target).ratings) > 0
