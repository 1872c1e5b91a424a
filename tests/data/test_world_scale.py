"""The world generator at scale (`python -m simulator world`): tables of design section 4, chunked, no dense matrix."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.contracts.events import RecommendationEvent, WatchEvent, parse_line
from app.contracts.tables import FILES, MOVIES, RATINGS, USERS, WATCHES, load_tables, save_tables
from app.model import Recommender
from app.settings import ROOT
from simulator.world_scale import (
    MANIFEST,
    _Proposal,
    generate_world,
    history_chunk,
    load_world,
    plan_history,
    write_world,
)

SMALL = {"n_users": 3000, "n_movies": 800, "n_ratings": 40_000, "seed": 5}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "data"
    write_world(out, progress=False, **SMALL)
    return out


@pytest.fixture(scope="module")
def tables(written: Path):
    return load_tables(written)


# ---------------------------------------------------------------------- determinism and format


def test_same_seed_gives_byte_identical_files_whatever_the_number_of_workers(written: Path, tmp_path: Path) -> None:
    write_world(tmp_path / "again", progress=False, workers=2, **SMALL)
    for name in [*FILES.values(), MANIFEST]:
        assert filecmp.cmp(written / name, tmp_path / "again" / name, shallow=False), name


def test_another_seed_gives_another_world(written: Path, tmp_path: Path) -> None:
    write_world(tmp_path / "other", progress=False, **{**SMALL, "seed": 6})
    for name in FILES.values():
        assert (written / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_files_are_exactly_what_save_tables_writes_for_the_same_tables(written: Path, tables, tmp_path: Path) -> None:
    """One format, decided in app.contracts.tables: the streamed bytes equal save_tables' bytes."""
    save_tables(tables, tmp_path / "saved")
    for name in FILES.values():
        assert filecmp.cmp(written / name, tmp_path / "saved" / name, shallow=False), name


def test_tables_have_the_contract_columns_and_types(written: Path, tables) -> None:
    for name, columns in {"ratings": RATINGS, "watches": WATCHES, "users": USERS, "movies": MOVIES}.items():
        assert (written / FILES[name]).read_text().splitlines()[0] == ",".join(columns)
        assert list(getattr(tables, name).columns) == columns
    assert tables.ratings.user_id.dtype == np.int64 and tables.watches.minutes.dtype == np.int64
    assert tables.movies.adult.dtype == bool
    assert set(tables.users.gender) == {"M", "F"} and tables.users.age.between(8, 85).all()
    assert (tables.users.loc[tables.users.age < 18, "occupation"] == "K-12 student").all()
    assert tables.users.user_id.tolist() == list(range(1, SMALL["n_users"] + 1))
    assert tables.movies.movie_id.is_unique and tables.movies.vote_average.between(0, 10).all()


# ---------------------------------------------------------------------- sizes, ranges, behaviour


def test_exactly_the_requested_ratings_whole_stars_each_after_its_watch(written: Path, tables) -> None:
    ratings, watches = tables.ratings, tables.watches
    assert len(ratings) == SMALL["n_ratings"]
    assert len(watches) == round(SMALL["n_ratings"] * 1.5)  # default watch_share 0.5
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    assert not watches.duplicated(["user_id", "movie_id"]).any()
    assert ratings.rating.isin([1.0, 2.0, 3.0, 4.0, 5.0]).all() and ratings.rating.nunique() == 5
    assert 3.0 < ratings.rating.mean() < 4.3
    both = ratings.merge(watches, on=["user_id", "movie_id"], how="left", validate="one_to_one")
    assert both.last_seen.notna().all() and (both.timestamp >= both.last_seen).all()
    runtime = watches.movie_id.map(tables.movies.set_index("movie_id").runtime)
    assert (watches.minutes >= 1).all() and (watches.minutes <= runtime).all()
    assert (watches.last_seen >= watches.first_seen + 60 * watches.minutes).all()
    assert set(watches.user_id) == set(tables.users.user_id)  # everybody watched something
    manifest = json.loads((written / MANIFEST).read_text())
    assert (manifest["ratings"], manifest["watches"]) == (len(ratings), len(watches))


def test_minors_never_watch_adult_titles(tables) -> None:
    minors = set(tables.users.user_id[tables.users.age < 18])
    adult = set(tables.movies.movie_id[tables.movies.adult])
    assert minors and adult
    watched = tables.watches[tables.watches.user_id.isin(minors)]
    assert len(watched) > 1000 and not watched.movie_id.isin(adult).any()


def test_popular_movies_are_watched_most_and_activity_is_skewed(tables) -> None:
    counts = tables.ratings.movie_id.value_counts()
    top_decile_share = counts.iloc[: len(tables.movies) // 10].sum() / counts.sum()
    assert top_decile_share > 0.4
    pop = tables.movies.set_index("movie_id").popularity
    assert pd.Series(counts).corr(pop.reindex(counts.index), method="spearman") > 0.7
    per_user = tables.watches.user_id.value_counts()
    assert per_user.max() > 5 * per_user.median()


def test_ratings_follow_true_taste_and_taste_decides_what_is_watched(written: Path, tables) -> None:
    world = load_world(written)
    r = tables.ratings
    ui, mj = world.user_index(r.user_id.to_numpy()), world.movie_index(r.movie_id.to_numpy())
    assert np.corrcoef(world.true_ratings_at(ui, mj), r.rating)[0, 1] > 0.7
    shuffled = np.random.default_rng(0).permutation(mj)  # same users, same movie popularity, pairs broken
    assert world.taste_at(ui, mj).mean() > world.taste_at(ui, shuffled).mean() + 1.0


def test_the_chunked_draw_approximates_the_dense_world_history_draw() -> None:
    """Same world, World.history (Gumbel top-k over the whole catalogue) vs the chunked proposal draw."""
    world = generate_world(seed=1, n_users=2000, n_movies=1500)
    ratings, _ = world.history(n_ratings=40_000, seed=1)
    dense_u, dense_m = world.user_index(ratings.user_id.to_numpy()), world.movie_index(ratings.movie_id.to_numpy())
    plan = plan_history(world, 40_000, seed=1)
    chunk = history_chunk(world, plan, 0, 2000)
    ours_u, ours_m = chunk.watch_user[chunk.rated], chunk.watch_movie[chunk.rated]

    def top_decile_share(movies: np.ndarray) -> float:
        counts = np.sort(np.bincount(movies, minlength=1500))[::-1]
        return counts[:150].sum() / counts.sum()

    assert abs(top_decile_share(ours_m) - top_decile_share(dense_m)) < 0.05
    dense_taste, ours_taste = world.taste_at(dense_u, dense_m).mean(), world.taste_at(ours_u, ours_m).mean()
    assert 0.85 * dense_taste < ours_taste <= 1.05 * dense_taste
    assert np.array_equal(np.bincount(ours_u, minlength=2000), plan.n_rate)  # each user's count as planned


# ---------------------------------------------------------------------- true taste, replay


def test_true_taste_is_the_factor_dot_product_and_matches_true_ratings(written: Path) -> None:
    world = load_world(written)
    u, m = 17, 42
    d = world.user_factors.shape[1]
    by_hand = world.user_factors[u] @ world.movie_factors[m] / np.sqrt(d) + world.user_genre[u] @ world.movie_genre[m]
    assert world.taste_at(np.array([u]), np.array([m]))[0] == pytest.approx(by_hand, abs=1e-5)
    z = world.mu + world.user_bias[u] + world.movie_quality[m] + by_hand
    assert world.true_ratings_at([u], [m])[0] == pytest.approx(1 + 4 / (1 + np.exp(-z)), abs=1e-5)
    rng = np.random.default_rng(3)
    ui, mj = rng.integers(0, len(world.users), 5000), rng.integers(0, len(world.movies), 5000)
    ids_u, ids_m = world.users.user_id.to_numpy()[ui], world.movies.movie_id.to_numpy()[mj]
    np.testing.assert_allclose(world.true_ratings_at(ui, mj), world.true_ratings(ids_u, ids_m), atol=1e-5)


def test_load_world_regenerates_the_written_users_and_movies(written: Path, tables) -> None:
    world = load_world(written)
    pd.testing.assert_frame_equal(world.users[USERS].astype({"occupation": str}), tables.users, check_dtype=False)
    pd.testing.assert_frame_equal(world.movies[MOVIES], tables.movies, check_dtype=False, rtol=1e-5)


def test_load_world_refuses_a_directory_this_code_would_not_regenerate(written: Path, tmp_path: Path) -> None:
    manifest = json.loads((written / MANIFEST).read_text())
    manifest["world"]["seed"] += 1  # the tables were written from another world
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the ones"):
        load_world(tmp_path)


def test_the_proposal_sampler_is_exactly_an_inverse_cdf() -> None:
    weights = np.array([[0.5, 0.0, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    proposal = _Proposal(np.log(np.maximum(weights, 1e-300)), buckets=2)
    u = np.array([0.0, 0.49, 0.51, 0.74, 0.76, 0.99, 0.0, 0.09, 0.11, 0.29, 0.31, 0.61, 0.999])
    groups = np.array([0] * 6 + [1] * 7)
    # group 0: cdf 0.5, 0.5, 0.75, 1 (movie 1 weightless); group 1: cdf 0.1, 0.3, 0.6, 1
    assert proposal.draw(groups, u).tolist() == [0, 0, 2, 2, 3, 3, 0, 0, 1, 1, 2, 3, 3]
    rng = np.random.default_rng(0)
    g, uu = rng.integers(0, 2, 100_000), rng.random(100_000)
    expected = np.array([np.searchsorted(np.cumsum(weights[k]) / weights[k].sum(), x, side="right")
                         for k, x in zip(g[:2000], uu[:2000], strict=True)])
    assert np.array_equal(proposal.draw(g[:2000], uu[:2000]), expected)
    share = np.bincount(proposal.draw(np.zeros(100_000, np.int64), uu), minlength=4) / 100_000
    np.testing.assert_allclose(share, weights[0], atol=0.01)


@pytest.mark.slow
def test_a_100k_by_5k_world_never_holds_a_users_by_movies_array(tmp_path: Path) -> None:
    """Peak memory of the whole command stays far below one dense users × movies matrix (4 GB as float64,
    2 GB as float32): the interpreter, numpy and pandas alone take a few hundred MB, so the world is large
    enough that any dense array would dominate the peak."""
    code = ("import resource, sys; from simulator.__main__ import main; "
            "rc = main(['world', '--users', '100000', '--movies', '5000', '--ratings', '1000000', '--workers', '1', "
            f"'--out', {str(tmp_path / 'w')!r}]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int(done.stderr.strip().splitlines()[-1])
    dense32 = 100_000 * 5_000 * 4
    assert peak < 0.5 * dense32, f"peak RSS {peak / 2**20:.0f} MiB"
    assert json.loads(done.stdout)["ratings"] == 1_000_000


def test_traffic_plays_a_written_world_with_users_from_all_of_it(start_server, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_world(data, n_users=1200, n_movies=500, n_ratings=24_000, seed=9, progress=False)
    tables = load_tables(data)
    model = Recommender.train(tables.ratings, tables.users, tables.movies)
    model.metadata.update(version=1, data_checksum="world-scale-test")
    model.save(tmp_path / "models" / "1")
    server = start_server(models_root=tmp_path / "models", version=1, workers=1)
    log = tmp_path / "events.log"
    done = subprocess.run(
        [sys.executable, "-m", "simulator", "traffic", "--world-dir", str(data), "--url", server.url,
         "--rate", "40", "--duration", "30", "--max-sessions", "200", "--new-user-share", "0",
         "--out", f"file:{log}", "--json", "--seed", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (json.loads(done.stdout)["requests"], json.loads(done.stdout)["ok"]) == (200, 200)
    events = [parse_line(line) for line in log.read_text().splitlines()]
    asked = [e.user_id for e in events if isinstance(e, RecommendationEvent)]
    assert len(asked) == 200 and set(asked) <= set(tables.users.user_id)
    assert min(asked) < 1200 * 0.1 and max(asked) > 1200 * 0.9  # drawn across the whole population
    assert {e.movie_id for e in events if isinstance(e, WatchEvent)} <= set(tables.movies.movie_id)
