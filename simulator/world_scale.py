"""The synthetic world at the real service's size (1M users × 27k movies), written to disk in chunks.

``World.generate`` + ``World.history`` (``simulator.world``) score every user against every movie: the
catalogue's average taste and each user's Gumbel top-k draw over the whole catalogue are users × movies
arrays (216 GB at 1M × 27k). This module builds the same kind of world without any such array:

* **tastes** stay low-rank: user and movie factor matrices (n × d, m × d) plus genre affinities
  (n × G, m × G), exactly the fields of ``World``, so the world this module returns *is* a ``World``
  and every traffic/population call works on it; ``World.taste_at`` / ``World.true_ratings_at``
  answer the true taste of any (user, movie) pairs by dot products;
* **users** are drawn by the same distributions as ``World.generate`` (age, gender, occupation,
  taste group), vectorised; **movies** by the very same code;
* **vote_average** is the mean true rating over a fixed sample of users instead of all of them;
* **what a user watches**: candidates are proposed by the user's group (taste group × minor) from
  ``popularity^alpha · exp(gamma · group-mean taste)`` (adult titles weightless for minors), drawn with
  ``Generator.random`` and an inverse CDF, ``oversample`` × as many as the user watches; a Gumbel top-k
  on ``gamma · (own taste − group-mean taste) + log(times proposed)`` keeps the user's watches. That is
  ``World.history``'s draw (weight ``popularity^alpha · exp(gamma · taste)``, without replacement)
  by importance resampling, tending to it as ``oversample`` grows: popular titles dominate, and users of one
  taste group share their niche titles. A user whose proposals run short (a heavy user of a narrow
  group) gets the exact draw over the whole catalogue for that one row;
* **ratings** (true taste plus noise, 1..5), minutes and times follow ``World.history``, computed only
  for the sampled pairs, one chunk of ``CHUNK_USERS`` users at a time, each chunk from its own seed.

Files are the tables of design section 4, in the format and order of ``app.contracts.tables.save_tables``
(``tests/data/test_world_scale.py`` checks the bytes are the same), plus ``world.json``: what the world
was generated from, so ``load_world(DIR)`` regenerates its users, movies and tastes (seconds, no history)
and ``python -m simulator traffic --world-dir DIR`` plays it. Same arguments → byte-identical files.

CLI: ``python -m simulator world --users N --movies M --ratings R --seed S --out DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from app.contracts.tables import FILES, MOVIES, RATINGS, USERS, WATCHES
from app.logs import kv, setup_logging
from simulator.world import (
    _KIDS_GENRES,
    _OCC_ADULT_WEIGHT,
    GENRES,
    OCCUPATIONS,
    World,
    _allocate,
    _allocate_rated,
    _make_genres,
    _make_movies,
)

log = logging.getLogger(__name__)

MANIFEST = "world.json"
FORMAT = 1  # bump when the same arguments would give other files
CHUNK_USERS = 10_000  # users per generated chunk: fixes the per-chunk seeds, so never derive it from a size
VOTE_SAMPLE = 1_000  # users whose mean true rating makes a movie's vote_average
_WORLD_TAG, _HISTORY_TAG, _CHUNK_TAG = 0x7363616C, 0x68697374, 0x63686B


# ---------------------------------------------------------------------- users, movies, tastes


def generate_world(seed: int = 0, n_users: int = 1_000_000, n_movies: int = 27_000, n_clusters: int = 12,
                   n_factors: int = 8, adult_share: float = 0.03, minor_share: float = 0.12,
                   vote_sample: int = VOTE_SAMPLE, **knobs: float) -> World:
    """A ``World`` of any size, built without a users × movies array (same arguments → same world).

    Movies come in ``movie_id`` order (the order the tables are written in). ``knobs`` override the
    behaviour constants as in ``World.generate``.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _WORLD_TAG]))
    users, cluster, minor = _make_users(rng, n_users, n_clusters, minor_share)
    genre_sets, movie_genre = _make_genres(rng, n_movies)
    n_genres = len(GENRES)
    centres = rng.normal(0.0, 1.0, (n_clusters, n_factors))
    group_genre = rng.normal(0.0, 0.9, (n_clusters, n_genres))
    user_factors = centres[cluster] + rng.normal(0.0, 0.45, (n_users, n_factors))
    user_genre = group_genre[cluster] + rng.normal(0.0, 0.35, (n_users, n_genres))
    user_genre[minor] += np.array([_KIDS_GENRES.get(g, 0.0) for g in GENRES])
    user_bias = rng.normal(0.0, 0.35, n_users)
    movie_factors = rng.normal(0.0, 1.0, (n_movies, n_factors))
    movie_quality = rng.normal(0.0, 0.55, n_movies)
    log_pop = 1.0 + 1.4 * rng.normal(0.0, 1.0, n_movies) + 1.2 * movie_quality
    movies = _make_movies(rng, n_movies, genre_sets, log_pop, adult_share)

    order = np.argsort(movies["movie_id"].to_numpy(dtype=str), kind="stable")  # table order, so rows sort by index
    movies = movies.iloc[order].reset_index(drop=True)
    world = World(
        seed=int(seed), users=users, movies=movies, user_cluster=cluster, user_factors=user_factors,
        movie_factors=movie_factors[order], user_genre=user_genre, movie_genre=movie_genre[order],
        user_bias=user_bias, movie_quality=movie_quality[order], log_popularity=log_pop[order], **knobs,
    )
    sample = np.sort(rng.choice(n_users, size=min(n_users, vote_sample), replace=False))
    mean_true = _mean_true_rating(world, sample)
    world.movies["vote_average"] = np.clip(2.0 * mean_true + rng.normal(0.0, 0.3, n_movies), 0.0, 10.0).round(1)
    world.movies["vote_count"] = rng.poisson(np.exp(world.log_popularity) * 40.0).astype("int64")
    log.info("large world generated", extra=kv(seed=seed, users=n_users, movies=n_movies,
                                               seconds=round(time.perf_counter() - started, 3)))
    return world


def _make_users(rng: np.random.Generator, n: int, n_clusters: int,
                minor_share: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``simulator.world._make_users``'s distributions, drawn for all users at once (no per-user loop)."""
    minor = rng.random(n) < minor_share
    adult_age = np.clip(np.rint(18 + rng.gamma(2.2, 9.0, n)), 18, 85)
    age = np.where(minor, rng.integers(8, 18, n), adult_age).astype(np.int64)
    gender = np.where(rng.random(n) < 0.55, "M", "F")
    occ = np.full(n, OCCUPATIONS.index("K-12 student"), dtype=np.int64)
    student, retired = OCCUPATIONS.index("college/grad student"), OCCUPATIONS.index("retired")
    young, old = _OCC_ADULT_WEIGHT.copy(), _OCC_ADULT_WEIGHT.copy()
    young[student] *= 6  # up to 25
    old[retired] = 40  # from 62
    for band, w in (((age >= 18) & (age <= 25), young), ((age > 25) & (age < 62), _OCC_ADULT_WEIGHT),
                    (age >= 62, old)):
        occ[band] = rng.choice(len(w), size=int(band.sum()), p=w / w.sum())
    base = rng.dirichlet(np.full(n_clusters, 2.0), size=3)
    group = np.where(age < 18, 0, np.where(age < 40, 1, 2))
    cluster = (rng.random(n)[:, None] > base.cumsum(axis=1)[group]).sum(axis=1).clip(0, n_clusters - 1)
    users = pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64), "age": age, "gender": gender.astype(str),
        "occupation": pd.Categorical.from_codes(occ, categories=OCCUPATIONS),
    })
    return users, cluster, minor


def _mean_true_rating(world: World, sample: np.ndarray, block: int = 200) -> np.ndarray:
    """Per movie, the mean true rating over the ``sample`` users (a ``block`` users × movies product at a time)."""
    users, movies = world._pair_vectors
    total = np.zeros(len(world.movies))
    for lo in range(0, len(sample), block):
        rows = sample[lo:lo + block]
        z = (world.mu + world.user_bias[rows, None] + world.movie_quality[None, :]).astype(np.float32)
        z += users[rows] @ movies.T
        total += (1.0 + 4.0 / (1.0 + np.exp(-z))).sum(axis=0, dtype=np.float64)
    return total / max(len(sample), 1)


# ---------------------------------------------------------------------- history, chunk by chunk


class _Proposal:
    """Draws movies for users of G groups from G fixed distributions: inverse CDF with a guide table.

    Exactly ``searchsorted(cdf_g, u, side="right")``, but a bucket table (``buckets`` per group) gives
    the answer or a start a step or two before it, so a draw costs a few array lookups instead of a
    binary search through a cache-unfriendly array.
    """

    def __init__(self, log_weights: np.ndarray, buckets: int = 4) -> None:
        n_groups, self.n_movies = log_weights.shape
        w = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
        cdf = np.cumsum(w, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = np.inf  # every u < 1 lands inside its group
        self.cdf = cdf.reshape(-1)
        self.k = buckets * self.n_movies
        starts = np.arange(self.k) / self.k
        self.guide = np.concatenate([
            np.searchsorted(cdf[g], starts, side="right") + g * self.n_movies for g in range(n_groups)
        ]).astype(np.int64)

    def draw(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Movie rows drawn for users of ``groups`` from uniforms ``u`` in [0, 1)."""
        j = self.guide[groups * self.k + (u * self.k).astype(np.int64)]
        base = groups * self.n_movies
        pending = np.flatnonzero(self.cdf[j] <= u)
        while len(pending):
            j[pending] += 1
            pending = pending[self.cdf[j[pending]] <= u[pending]]
        return j - base


@dataclass(frozen=True)
class HistoryPlan:
    """Everything a chunk needs besides the world: decided once for all users, so chunks are independent.

    What users watch is proposed per group (taste group × minor): ``popularity^alpha · exp(gamma ·
    group-mean taste)``, adult titles weightless for minors; each user's own taste then re-weights
    the proposals by ``exp(gamma · (taste − group-mean taste))``.
    """

    seed: int
    n_watch: np.ndarray  # (U,) movies each user watched
    n_rate: np.ndarray  # (U,) of which rated
    joined: np.ndarray  # (U,) seconds after start_time the user joined
    group: np.ndarray  # (U,) proposal group: 2 · taste group + minor
    group_taste: np.ndarray  # (G, M) group-mean taste of each movie
    adult: np.ndarray  # (M,) adult titles, which minors (odd groups) never watch
    proposal: _Proposal
    oversample: float


def plan_history(world: World, n_ratings: int, seed: int = 0, watch_share: float = 0.5,
                 oversample: float = 4.0) -> HistoryPlan:
    """Watches and ratings per user (long-tailed activity, as ``World.history``), join times, proposals."""
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, int(seed), _HISTORY_TAG]))
    minor = world.users["age"].to_numpy() < 18
    adult = world.movies["adult"].to_numpy(dtype=bool)
    n_users, n_movies = len(world.users), len(world.movies)
    eligible = np.where(minor, n_movies - int(adult.sum()), n_movies)
    n_watch = _allocate(rng, round(n_ratings * (1.0 + watch_share)), eligible, n_users)
    n_rate = _allocate_rated(rng, n_ratings, n_watch)
    joined = rng.uniform(0.0, 0.7 * world.period_days * 86_400, n_users)

    group = 2 * np.asarray(world.user_cluster, dtype=np.int64) + minor
    n_groups = int(group.max()) + 1
    user_vec, movie_vec = world._pair_vectors
    size = np.bincount(group, minlength=n_groups).astype(np.float64)
    mean = np.stack([np.bincount(group, weights=user_vec[:, c], minlength=n_groups)
                     for c in range(user_vec.shape[1])], axis=1) / np.maximum(size, 1.0)[:, None]
    group_taste = (mean @ movie_vec.T.astype(np.float64)).astype(np.float32)
    log_w = world.alpha * world.log_popularity[None, :] + world.gamma * group_taste
    log_w[np.ix_(np.arange(n_groups) % 2 == 1, adult)] = -np.inf
    return HistoryPlan(int(seed), n_watch, n_rate, joined, group, group_taste, adult, _Proposal(log_w),
                       float(oversample))


@dataclass(frozen=True)
class Chunk:
    """One chunk of users' history: row positions plus values, sorted by (user, movie) as the tables are."""

    watch_user: np.ndarray
    watch_movie: np.ndarray
    minutes: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    rated: np.ndarray  # bool over the watches
    rating: np.ndarray  # over the rated watches
    timestamp: np.ndarray


def history_chunk(world: World, plan: HistoryPlan, lo: int, hi: int) -> Chunk:
    """The history of users ``lo..hi-1`` (row positions); depends only on the world, the plan and ``lo``."""
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, plan.seed, _CHUNK_TAG, lo]))
    need = plan.n_watch[lo:hi]
    group = plan.group[lo:hi]
    rows, cols, times, exact = _candidates(rng, plan, need, group)
    taste = world.taste_at(rows + lo, cols)
    # Gumbel top-k over the distinct proposals: a movie proposed n times carries log n (the best of n
    # Gumbel draws), the user's own taste re-weights the group's; as oversample grows this tends to
    # World.history's draw. A whole-catalogue row weighs by popularity and taste itself (that draw).
    key = world.gamma * taste + rng.gumbel(size=len(rows))
    whole = exact[rows]
    key[~whole] += np.log(times[~whole]) - world.gamma * plan.group_taste[group[rows[~whole]], cols[~whole]]
    key[whole] += world.alpha * world.log_popularity[cols[whole]]
    keep = _top_per_row(rows, key, need)
    rows, cols, taste = rows[keep], cols[keep], taste[keep]  # still sorted by (user, movie)
    rated = _top_per_row(rows, rng.random(len(rows)), plan.n_rate[lo:hi])  # a random n_rate of each user's

    users = rows + lo
    true = world.true_ratings_at(users, cols, taste=taste)
    minutes = world._minutes(true, world.movies["runtime"].to_numpy(dtype=float)[cols], rng)
    period = world.period_days * 86_400
    joined = plan.joined[users]
    first = (world.start_time + joined + rng.random(len(users)) * (period - joined - 4 * 3600)).astype(np.int64)
    last = first + minutes * 60 + rng.integers(0, 1800, len(users))
    rating = world._ratings(true[rated], rng)
    timestamp = last[rated] + rng.integers(5, 600, int(rated.sum()))
    return Chunk(users, cols, minutes, first, last, rated, rating, timestamp)


def _candidates(rng: np.random.Generator, plan: HistoryPlan, need: np.ndarray,
                group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, movie) candidates sorted by row then movie, at least ``need`` per row, and how
    many times each was proposed.

    Rows whose proposals stay short after three rounds (heavy users: popular titles come twice) take
    the whole catalogue they may watch and are flagged ``exact``.
    """
    n_movies = plan.proposal.n_movies
    draws = np.ceil(plan.oversample * need).astype(np.int64) + 8
    pending = np.arange(len(need))
    found, times = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    for _ in range(3):
        rows = np.repeat(pending, draws[pending])
        cols = plan.proposal.draw(group[rows], rng.random(len(rows)))
        ok = ~(plan.adult[cols] & (group[rows] % 2 == 1))  # weightless already; rounding must not sneak one in
        found, times = _distinct(np.concatenate([found, rows[ok] * n_movies + cols[ok]]),
                                 np.concatenate([times, np.ones(int(ok.sum()), dtype=np.int64)]))
        pending = np.flatnonzero(np.bincount(found // n_movies, minlength=len(need)) < need)
        if not len(pending):
            break
        draws = draws * 2
    exact = np.zeros(len(need), dtype=bool)
    if len(pending):
        exact[pending] = True
        r, c = np.nonzero(~((group[pending] % 2 == 1)[:, None] & plan.adult[None, :]))
        mine = ~exact[found // n_movies]
        found, times = _distinct(np.concatenate([found[mine], pending[r] * n_movies + c]),
                                 np.concatenate([times[mine], np.ones(len(r), dtype=np.int64)]))
    return found // n_movies, found % n_movies, times, exact


def _distinct(keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys with the summed ``times`` of each (``np.unique`` is slow here: it hashes)."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.empty(0, np.int64)
    return keys[first], np.add.reduceat(times[order], first) if len(first) else times[:0]


def _top_per_row(rows: np.ndarray, key: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Mask of the ``k[row]`` largest keys of each row (``rows`` ascending, ``key`` finite); order is kept.

    One float sort: ``row - squash(key)`` orders by row, then by key descending (squash maps onto (0, 1)).
    """
    order = np.argsort(rows - 0.5 * (1.0 + np.tanh(key / 8.0)) * 0.999, kind="stable")
    starts = np.searchsorted(rows, np.arange(len(k)))
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows)) - starts[rows[order]]
    return rank < k[rows]


# ---------------------------------------------------------------------- CSV bytes without per-row Python


class _Tokens:
    """A vocabulary (movie ids, genders, occupations) as a padded byte matrix, for ``_csv``."""

    def __init__(self, words: list[str]) -> None:
        raw = [w.encode() for w in words]
        if any(b"," in w or b'"' in w or b"\n" in w or b"\0" in w for w in raw):
            raise ValueError("a token would need CSV quoting")
        self.matrix = np.zeros((len(raw), max((len(w) for w in raw), default=1)), dtype=np.uint8)
        for i, w in enumerate(raw):
            self.matrix[i, :len(w)] = np.frombuffer(w, dtype=np.uint8)

    def field(self, idx: np.ndarray) -> np.ndarray:
        return self.matrix[idx]


_LIMBS = np.array([list(f"{i:04d}".encode()) for i in range(10_000)], dtype=np.uint8)  # 0..9999 as 4 digits


def _digits(values: np.ndarray) -> np.ndarray:
    """Non-negative integers as right-aligned ASCII digits, padded with NUL bytes (dropped by ``_csv``)."""
    v = np.asarray(values, dtype=np.int64)
    if len(v) and v.min() < 0:
        raise ValueError("negative values are not written by the world generator")
    width = len(str(int(v.max()))) if len(v) else 1
    limbs, rest = [], v.copy()
    for _ in range(-(-width // 4)):  # base 10,000 limbs, least significant first
        limbs.append(rest % 10_000)
        rest //= 10_000
    out = np.take(_LIMBS, np.stack(limbs[::-1], axis=1), axis=0).reshape(len(v), -1)[:, 4 * len(limbs) - width:]
    n_digits = np.searchsorted(10 ** np.arange(1, width, dtype=np.int64), v, side="right") + 1
    out[np.arange(width)[None, :] < (width - n_digits)[:, None]] = 0  # leading zeros
    return np.ascontiguousarray(out)


def _csv(fields: list[np.ndarray]) -> bytes:
    """Rows of comma-separated fields (each an (n, width) NUL-padded byte matrix) as CSV bytes.

    pandas' ``to_csv`` writes the same text for these columns (plain ints, unquoted tokens) but
    formats row by row; this lays every row out fixed-width and drops the padding in one pass.
    """
    n = fields[0].shape[0]
    sep = np.full((n, 1), ord(","), dtype=np.uint8)
    parts: list[np.ndarray] = []
    for f in fields:
        parts += [f, sep]
    parts[-1] = np.full((n, 1), ord("\n"), dtype=np.uint8)
    grid = np.concatenate(parts, axis=1)
    return grid[grid != 0].tobytes()


def _header(columns: list[str]) -> bytes:
    return (",".join(columns) + "\n").encode()


# ---------------------------------------------------------------------- writing a world


@dataclass
class WriteSummary:
    users: int
    movies: int
    ratings: int
    watches: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


# the world and plan of the running write, inherited by forked workers instead of pickled per chunk
_SHARED: dict[str, object] = {}


def _encode_chunk(lo: int) -> tuple[bytes, bytes, int, int, int]:
    """(ratings CSV bytes, watches CSV bytes, users, ratings, watches) of the chunk starting at user row ``lo``."""
    world, plan, tokens = _SHARED["world"], _SHARED["plan"], _SHARED["movie_tokens"]
    assert isinstance(world, World) and isinstance(plan, HistoryPlan) and isinstance(tokens, _Tokens)
    hi = min(lo + CHUNK_USERS, len(world.users))
    c = history_chunk(world, plan, lo, hi)
    user_id = world.users["user_id"].to_numpy()[c.watch_user]
    watches = _csv([_digits(user_id), tokens.field(c.watch_movie), _digits(c.minutes), _digits(c.first_seen),
                    _digits(c.last_seen)])
    # ratings are whole stars, which save_tables' float_format "%.6g" writes without a decimal point
    ratings = _csv([_digits(user_id[c.rated]), tokens.field(c.watch_movie[c.rated]), _digits(c.rating),
                    _digits(c.timestamp)])
    return ratings, watches, hi - lo, int(c.rated.sum()), len(c.watch_user)


def write_world(out_dir: Path | str, n_users: int, n_movies: int, n_ratings: int, seed: int = 0,
                watch_share: float = 0.5, oversample: float = 4.0, workers: int = 1,
                progress: bool | None = None) -> WriteSummary:
    """Generate a world and write it with a history of ``n_ratings`` ratings as the four tables.

    Users and movies first, then ratings and watches one chunk of users at a time (nothing users ×
    movies, nothing history-sized in memory); files are written under temporary names and renamed at
    the end, then ``world.json``. ``workers`` > 1 generates chunks in forked processes: same bytes
    (each chunk has its own seed; they are written in order). ``progress``: a tqdm bar, None = on a
    terminal only.
    """
    started = time.perf_counter()
    world_args = {"seed": int(seed), "n_users": int(n_users), "n_movies": int(n_movies)}
    world = generate_world(**world_args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_history(world, n_ratings, seed=seed, watch_share=watch_share, oversample=oversample)
    movie_ids = world.movies["movie_id"].astype(str).tolist()
    tmp = {name: out / (filename + ".tmp") for name, filename in FILES.items()}

    users = world.users
    gender = pd.Categorical(users["gender"], categories=["F", "M"])
    occupation = pd.Categorical(users["occupation"], categories=OCCUPATIONS)
    if (gender.codes < 0).any() or (occupation.codes < 0).any():
        raise ValueError("a gender or occupation outside the world's vocabulary")
    tmp["users"].write_bytes(_header(USERS) + _csv([
        _digits(users["user_id"].to_numpy()), _digits(users["age"].to_numpy()),
        _Tokens(["F", "M"]).field(gender.codes), _Tokens(OCCUPATIONS).field(occupation.codes),
    ]))
    world.movies[MOVIES].to_csv(tmp["movies"], index=False, float_format="%.6g")  # save_tables' format

    _SHARED.update(world=world, plan=plan, movie_tokens=_Tokens(movie_ids))
    n_rated = n_watched = 0
    bar = tqdm(total=len(users), unit="user", unit_scale=True, desc="world", mininterval=1.0,
               disable=None if progress is None else not progress)
    try:
        with tmp["ratings"].open("wb") as rf, tmp["watches"].open("wb") as wf:
            rf.write(_header(RATINGS))
            wf.write(_header(WATCHES))
            for r_bytes, w_bytes, n_chunk_users, nr, nw in _chunks(range(0, len(users), CHUNK_USERS), workers):
                rf.write(r_bytes)
                wf.write(w_bytes)
                n_rated, n_watched = n_rated + nr, n_watched + nw
                bar.update(n_chunk_users)
    finally:
        _SHARED.clear()
        bar.close()
    for name, filename in FILES.items():
        tmp[name].replace(out / filename)
    manifest = {
        "format": FORMAT, "generator": "simulator.world_scale", "world": world_args, "ratings": n_rated,
        "watches": n_watched, "watch_share": watch_share, "oversample": oversample,
        "movie_ids_sha256": _ids_digest(movie_ids),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    summary = WriteSummary(len(users), len(world.movies), n_rated, n_watched,
                           round(time.perf_counter() - started, 3))
    log.info("large world written", extra=kv(path=out, **summary.as_dict()))
    return summary


def _chunks(starts: range, workers: int):
    """Encoded chunks in order; with ``workers`` > 1 from forked processes, a bounded number in flight."""
    if workers <= 1:
        for lo in starts:
            yield _encode_chunk(lo)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = []
        it = iter(starts)
        for lo in it:
            pending.append(pool.submit(_encode_chunk, lo))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def _ids_digest(movie_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(movie_ids).encode()).hexdigest()


def load_world(directory: Path | str) -> World:
    """The ``World`` behind a directory written by ``write_world``: regenerated from ``world.json``.

    Users, movies and tastes only (no history): a few seconds for a million users. Refuses a directory
    whose movies the current code would not regenerate (a generator change since it was written).
    """
    manifest = json.loads((Path(directory) / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory}: world format {manifest.get('format')} (this code writes {FORMAT})")
    args = manifest["world"]
    world = generate_world(**args)
    if _ids_digest(world.movies["movie_id"].astype(str).tolist()) != manifest["movie_ids_sha256"]:
        raise ValueError(f"{directory}: its movies are not the ones this code generates from {args}")
    return world


# ---------------------------------------------------------------------- CLI (`python -m simulator world`)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``world`` subcommand of ``python -m simulator``."""
    sp = sub.add_parser("world", help="write the tables of a generated world of any size",
                        description="write ratings, watches, users and movies (design section 4) of a "
                                    "generated world, chunk by chunk, plus world.json to replay it")
    sp.add_argument("--users", type=int, default=1_000_000, help="number of users (default: the real 1M)")
    sp.add_argument("--movies", type=int, default=27_000, help="number of movies (default: the real 27k)")
    sp.add_argument("--ratings", type=int, default=20_000_000, help="ratings in the history (default 20M)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the world and its history")
    sp.add_argument("--out", type=Path, required=True, help="directory to write the tables to")
    sp.add_argument("--watch-share", type=float, default=0.5, help="unrated watches per rating (default 0.5)")
    sp.add_argument("--workers", type=int, default=1,
                    help="processes generating chunks (default 1; 2 pays only on an idle machine); "
                         "the bytes do not depend on it")


def run(args: argparse.Namespace) -> int:
    """``python -m simulator world``: generate and write; the summary goes to stdout as JSON."""
    setup_logging()
    summary = write_world(args.out, args.users, args.movies, args.ratings, seed=args.seed,
                          watch_share=args.watch_share, workers=args.workers)
    print(json.dumps(summary.as_dict()))
    return 0
