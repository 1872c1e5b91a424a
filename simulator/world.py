"""A deterministic synthetic movie world: users, movies, their hidden tastes, and a viewing history.

Why a world of our own: the course's real stream is not reachable from here, and MovieLens has no
ground truth. A world whose tastes we know lets tests ask "did the model learn something real?" and
lets the simulator emit a stream that behaves like the real one (popular movies watched most,
tastes shared within groups of users, minors kept away from adult titles).

How tastes are made (all from one seed, numpy only):

* users belong to one of ``n_clusters`` taste groups; each group has a centre in a small latent
  space and its own genre affinities, a user is the centre plus personal noise (and a nudge by age:
  children lean to animation and family films);
* movies have latent factors, 1–3 genres, a quality and a long-tailed popularity;
* ``true_rating(u, m) = 1 + 4·sigmoid(mu + user bias + quality + taste)``, where taste is the
  factor dot product plus the user's affinity to the movie's genres;
* which movies a user watches is drawn without replacement with weight
  ``popularity^alpha · exp(gamma · taste)`` (Gumbel top-k), so history is skewed to popular titles
  and yet informative: users of one taste group watch and like the same niche titles, which is what
  user-based collaborative filtering exploits and a popularity ranking cannot.

Default sizes: 2,000 users × 1,500 movies × 150,000 ratings (density 5 %, 75 ratings per user on
average). That is the density of MovieLens-100k (6.3 %), so models and thresholds tuned on one
transfer to the other, while the user × user similarity matrix of the served model stays small
(2,000² float64 = 32 MB) and training takes seconds on two cores.

``generate`` and ``history`` hold users × movies arrays (fine up to tens of thousands of users); the
real service's 1M users × 27k movies are built by ``simulator.world_scale`` into this same class, whose
``taste_at`` / ``true_ratings_at`` answer true tastes of any pairs by factor dot products.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from app.logs import kv
from simulator.ids import course_movie_id
from simulator.movielens import movielens_100k

log = logging.getLogger(__name__)

GENRES = [
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy",
    "History", "Horror", "Music", "Mystery", "Romance", "Science Fiction", "Thriller", "War", "Western",
]
# share of movies carrying each genre (roughly TMDB's catalogue)
_GENRE_WEIGHT = np.array([
    0.18, 0.12, 0.05, 0.30, 0.12, 0.04, 0.45, 0.08, 0.07, 0.04, 0.10, 0.04, 0.07, 0.15, 0.08, 0.20, 0.03, 0.02,
])
_KIDS_GENRES = {"Animation": 1.2, "Family": 1.2, "Adventure": 0.6, "Comedy": 0.4, "Fantasy": 0.5,
                "War": -1.0, "History": -1.0, "Documentary": -0.8, "Horror": -0.8, "Crime": -0.6, "Romance": -0.5}

OCCUPATIONS = [
    "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "other or not specified", "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]
_OCC_ADULT_WEIGHT = np.array([6, 3, 4, 8, 3, 4, 8, 1, 2, 0, 2, 9, 6, 0, 6, 3, 4, 8, 2, 2, 3], dtype=float)

_ADJECTIVES = [
    "silent", "dark", "golden", "broken", "hidden", "last", "lost", "little", "secret", "wild", "bright", "cold",
    "crimson", "distant", "endless", "eternal", "fallen", "forgotten", "frozen", "gentle", "hollow", "iron",
    "lonely", "midnight", "quiet", "restless", "scarlet", "shattered", "silver", "sleeping", "stolen", "strange",
    "sweet", "twisted", "burning", "blue", "black", "white", "green", "red", "final", "first", "deadly", "electric",
    "empty", "fading", "fearless", "fragile", "furious", "glass", "grand", "haunted", "holy", "honest", "hungry",
    "invisible", "lucky", "magic", "mighty", "naked", "northern", "open", "pale", "perfect", "phantom", "private",
    "proud", "rising", "royal", "savage", "shining", "sinister", "southern", "steel", "stormy", "sudden", "tender",
    "thin", "velvet", "wandering", "wicked", "wooden", "young",
]
_NOUNS = [
    "harbor", "river", "city", "garden", "kingdom", "mirror", "shadow", "summer", "winter", "storm", "island",
    "road", "bridge", "house", "heart", "dream", "night", "morning", "promise", "secret", "journey", "voyage",
    "empire", "legacy", "frontier", "horizon", "ocean", "mountain", "forest", "desert", "valley", "station",
    "train", "letter", "song", "dance", "game", "hunter", "thief", "soldier", "doctor", "stranger", "witness",
    "detective", "queen", "king", "prince", "princess", "angel", "devil", "ghost", "wolf", "tiger", "dragon",
    "falcon", "raven", "fox", "bear", "horse", "circus", "carnival", "castle", "tower", "machine", "signal", "code",
    "engine", "planet", "moon", "star", "comet", "galaxy", "orbit", "rebel", "outlaw", "sheriff", "ranger", "pilot",
    "captain", "sailor", "painter", "poet", "widow", "orphan", "family", "brother", "sister", "daughter", "son",
    "father", "mother", "lover", "wedding", "funeral", "holiday", "party", "crown", "sword", "shield", "arrow",
    "fire", "ice", "rain", "wind", "thunder", "echo", "silence", "memory", "truth", "lie", "fortune", "chance",
    "destiny", "revenge", "escape", "return",
]
_NAMES = [
    "anna", "ben", "clara", "daniel", "eva", "frank", "grace", "henry", "iris", "jack", "kate", "leo", "maya",
    "nora", "oscar", "paul", "rosa", "sam", "tom", "vera", "walter", "zoe", "max", "lily", "hugo",
]
_PLACES = [
    "paris", "berlin", "tokyo", "cairo", "chicago", "memphis", "vienna", "lisbon", "dublin", "havana", "boston",
    "denver", "rome", "madrid", "oslo",
]


@dataclass(frozen=True)
class Watch:
    """What one user did with one movie: minutes watched and the rating given, if any."""

    minutes: int
    rating: int | None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _topk_per_row(keys: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the k[i] largest keys of each row i (ordered by key, largest first)."""
    order = np.argsort(-keys, axis=1, kind="stable")
    rank = np.arange(keys.shape[1])[None, :]
    rows, ranks = np.nonzero(rank < k[:, None])
    return rows, order[rows, ranks]


@dataclass(eq=False)
class World:
    """Users, movies and the hidden tastes that decide what users watch and how they rate it."""

    seed: int
    users: pd.DataFrame
    movies: pd.DataFrame
    user_cluster: np.ndarray  # (U,) taste group of each user
    user_factors: np.ndarray  # (U, d)
    movie_factors: np.ndarray  # (M, d)
    user_genre: np.ndarray  # (U, G) genre affinities
    movie_genre: np.ndarray  # (M, G) genre membership, rows sum to 1
    user_bias: np.ndarray  # (U,)
    movie_quality: np.ndarray  # (M,)
    log_popularity: np.ndarray  # (M,)
    mu: float = -0.6
    taste_scale: float = 1.0
    alpha: float = 1.1  # weight of popularity in what users watch
    gamma: float = 1.3  # weight of taste in what users watch
    rating_noise: float = 0.55
    rate_probability: float = 0.4
    start_time: int = 1_672_531_200  # 2023-01-01T00:00:00Z
    period_days: int = 365
    _uidx: pd.Index = field(init=False, repr=False)
    _midx: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # hash indexes, not dicts: a million-user world (simulator.world_scale) looks ids up in bulk
        self._uidx = pd.Index(self.users["user_id"].to_numpy(dtype=np.int64))
        self._midx = pd.Index(self.movies["movie_id"].astype(str).to_numpy(dtype=object))
        self._minor = self.users["age"].to_numpy() < 18
        self._adult = self.movies["adult"].to_numpy(dtype=bool)
        self._runtime = self.movies["runtime"].to_numpy(dtype=float)

    # ------------------------------------------------------------------ generation

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        n_users: int = 2000,
        n_movies: int = 1500,
        n_clusters: int = 12,
        n_factors: int = 8,
        adult_share: float = 0.03,
        minor_share: float = 0.12,
        **knobs: float,
    ) -> World:
        """Build a world from ``seed``; equal arguments give identical users, movies and tastes.

        ``knobs`` override the behaviour constants (``mu``, ``taste_scale``, ``alpha``, ``gamma``,
        ``rating_noise``, ``rate_probability``, ``start_time``, ``period_days``).
        """
        started = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6D6F76]))
        users, cluster, minor = _make_users(rng, n_users, n_clusters, minor_share)
        genre_sets, movie_genre = _make_genres(rng, n_movies)
        n_genres = len(GENRES)

        # taste groups: centres in factor space plus genre affinities; users scatter around them
        centres = rng.normal(0.0, 1.0, (n_clusters, n_factors))
        group_genre = rng.normal(0.0, 0.9, (n_clusters, n_genres))
        user_factors = centres[cluster] + rng.normal(0.0, 0.45, (n_users, n_factors))
        user_genre = group_genre[cluster] + rng.normal(0.0, 0.35, (n_users, n_genres))
        kids = np.array([_KIDS_GENRES.get(g, 0.0) for g in GENRES])
        user_genre[minor] += kids
        user_bias = rng.normal(0.0, 0.35, n_users)

        movie_factors = rng.normal(0.0, 1.0, (n_movies, n_factors))
        movie_quality = rng.normal(0.0, 0.55, n_movies)
        # long tail: log-normal popularity, a little correlated with quality
        log_pop = 1.0 + 1.4 * rng.normal(0.0, 1.0, n_movies) + 1.2 * movie_quality

        movies = _make_movies(rng, n_movies, genre_sets, log_pop, adult_share)
        world = cls(
            seed=int(seed), users=users, movies=movies, user_cluster=cluster, user_factors=user_factors,
            movie_factors=movie_factors, user_genre=user_genre, movie_genre=movie_genre, user_bias=user_bias,
            movie_quality=movie_quality, log_popularity=log_pop, **knobs,
        )
        # what the catalogue shows (TMDB-like): average of everyone's taste, votes follow popularity
        mean_true = world.true_rating_matrix().mean(axis=0)
        vote_average = np.clip(2.0 * mean_true + rng.normal(0.0, 0.3, n_movies), 0.0, 10.0).round(1)
        vote_count = rng.poisson(np.exp(log_pop) * 40.0).astype("int64")
        world.movies["vote_average"] = vote_average
        world.movies["vote_count"] = vote_count
        log.info("world generated", extra=kv(seed=seed, users=n_users, movies=n_movies,
                                             seconds=round(time.perf_counter() - started, 3)))
        return world

    @classmethod
    def fit(
        cls,
        users: pd.DataFrame,
        movies: pd.DataFrame,
        ratings: pd.DataFrame,
        seed: int = 0,
        n_factors: int = 8,
        reg: float = 3.0,
        epochs: int = 15,
        **knobs: float,
    ) -> World:
        """A world whose hidden tastes are fitted to real ratings (MovieLens), so the simulator can play its users.

        Real data has no ground truth, so the fitted model stands in for it: ratings are mapped to
        the logit scale of ``true_rating`` and a biased matrix factorisation is fitted by
        alternating least squares (``epochs`` rounds, ridge ``reg``). Users and movies keep their
        ids and attributes; popularity is the number of ratings; a missing runtime is drawn around
        110 minutes; ``rating_noise`` is the fit's residual, so simulated ratings are as noisy as the
        real ones. Deterministic given the tables and ``seed``.
        """
        started = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x666974]))
        users = users.reset_index(drop=True).copy()
        movies = movies.reset_index(drop=True).copy()
        uidx = {int(u): i for i, u in enumerate(users["user_id"].to_numpy())}
        midx = {str(m): j for j, m in enumerate(movies["movie_id"].astype(str).to_numpy())}
        ui = ratings["user_id"].astype("int64").map(uidx)
        mj = ratings["movie_id"].astype(str).map(midx)
        known = ui.notna() & mj.notna()
        ui, mj = ui[known].to_numpy(np.int64), mj[known].to_numpy(np.int64)
        r = ratings["rating"].to_numpy(float)[known.to_numpy()]
        if len(r) == 0:
            raise ValueError("no rating of a known user and movie to fit tastes to")
        p = np.clip((r - 1.0) / 4.0, 0.06, 0.94)
        y = np.log(p / (1.0 - p))
        n_users, n_movies, d = len(users), len(movies), n_factors
        mu = float(y.mean())
        user_f = rng.normal(0.0, 0.1, (n_users, d))
        movie_f = rng.normal(0.0, 0.1, (n_movies, d))
        bu, bi = np.zeros(n_users), np.zeros(n_movies)
        for _ in range(epochs):
            user_f, bu = _ridge_rows(ui, movie_f[mj], y - mu - bi[mj], n_users, reg)
            movie_f, bi = _ridge_rows(mj, user_f[ui], y - mu - bu[ui], n_movies, reg)
        # World computes taste as user·movie / sqrt(d): store the factors scaled so the product is the fit's
        scale = d ** 0.25
        z = mu + bu[ui] + bi[mj] + np.einsum("ij,ij->i", user_f[ui], movie_f[mj])
        residual = float(np.sqrt(np.mean((r - (1.0 + 4.0 / (1.0 + np.exp(-z)))) ** 2)))
        drawn = pd.Series(np.clip(np.rint(rng.normal(110.0, 20.0, n_movies)), 60, 200), index=movies.index)
        movies["runtime"] = movies.get("runtime", pd.Series(np.nan, index=movies.index)).fillna(drawn).astype(float)
        if "adult" not in movies:
            movies["adult"] = False
        n_genres = len(GENRES)
        knobs = {"mu": mu, "rating_noise": residual, **knobs}
        world = cls(
            seed=int(seed), users=users, movies=movies, user_cluster=np.zeros(n_users, np.int64),
            user_factors=user_f * scale, movie_factors=movie_f * scale,
            user_genre=np.zeros((n_users, n_genres)), movie_genre=np.zeros((n_movies, n_genres)),
            user_bias=bu, movie_quality=bi, log_popularity=np.log1p(np.bincount(mj, minlength=n_movies)),
            **knobs,
        )
        log.info("world fitted to ratings", extra=kv(users=n_users, movies=n_movies, ratings=len(r),
                                                     residual_rmse=round(residual, 3),
                                                     seconds=round(time.perf_counter() - started, 3)))
        return world

    # ------------------------------------------------------------------ hidden tastes

    def _taste(self, ui: np.ndarray, mj: np.ndarray) -> np.ndarray:
        d = self.user_factors.shape[1]
        dot = np.einsum("...k,...k->...", self.user_factors[ui], self.movie_factors[mj]) / np.sqrt(d)
        genre = np.einsum("...k,...k->...", self.user_genre[ui], self.movie_genre[mj])
        return self.taste_scale * (dot + genre)

    def _true(self, ui: np.ndarray, mj: np.ndarray) -> np.ndarray:
        z = self.mu + self.user_bias[ui] + self.movie_quality[mj] + self._taste(ui, mj)
        return 1.0 + 4.0 * _sigmoid(z)

    def true_rating_matrix(self) -> np.ndarray:
        """(U, M) true ratings of every user for every movie, in the order of ``users``/``movies``."""
        d = self.user_factors.shape[1]
        taste = self.taste_scale * (self.user_factors @ self.movie_factors.T / np.sqrt(d)
                                    + self.user_genre @ self.movie_genre.T)
        z = self.mu + self.user_bias[:, None] + self.movie_quality[None, :] + taste
        return 1.0 + 4.0 * _sigmoid(z)

    def user_index(self, user_ids: np.ndarray | list[int] | int) -> np.ndarray:
        """Row of each user id in ``users`` (KeyError for an unknown id)."""
        if np.ndim(user_ids) == 0:  # the traffic's per-session lookup: a hash probe, not a new array index
            return np.array([_position(self._uidx, int(user_ids))], dtype=np.int64)
        return _positions(self._uidx, np.atleast_1d(np.asarray(user_ids)).astype(np.int64))

    def movie_index(self, movie_ids: np.ndarray | list[str] | str) -> np.ndarray:
        """Row of each movie id in ``movies`` (KeyError for an unknown id)."""
        if np.ndim(movie_ids) == 0:
            return np.array([_position(self._midx, str(movie_ids))], dtype=np.int64)
        ids = np.atleast_1d(np.asarray(movie_ids, dtype=object)).astype(str).astype(object)
        return _positions(self._midx, ids)

    @cached_property
    def _pair_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Users' and movies' taste as one float32 vector each: ``[factors/√d, genres]·[factors, genres]``."""
        d = self.user_factors.shape[1]
        users = np.hstack([self.user_factors / np.sqrt(d), self.user_genre]) * self.taste_scale
        return users.astype(np.float32), np.hstack([self.movie_factors, self.movie_genre]).astype(np.float32)

    def taste_at(self, ui: np.ndarray, mj: np.ndarray, block: int = 1 << 18) -> np.ndarray:
        """Hidden taste of aligned (user row, movie row) pairs: one dot product of factors each, no matrix.

        The fast form of the taste in ``true_ratings`` (float32 vectors, equal within 1e-5): costs
        O(pairs × (factors + genres)) and holds at most ``block`` pairs' vectors at once, so tens of
        millions of pairs of a million-user world take seconds. ``simulator.world_scale`` generates
        histories from it; the feedback loop and ``bench scale`` score lists against it. Rows are
        positions in ``users``/``movies`` (see ``user_index``); returns float64.
        """
        users, movies = self._pair_vectors
        ui, mj = np.asarray(ui, dtype=np.int64), np.asarray(mj, dtype=np.int64)
        out = np.empty(ui.shape, dtype=np.float64)
        flat_u, flat_m, flat_o = ui.reshape(-1), mj.reshape(-1), out.reshape(-1)
        for lo in range(0, flat_u.size, block):
            sl = slice(lo, lo + block)
            flat_o[sl] = np.einsum("ij,ij->i", np.take(users, flat_u[sl], axis=0), np.take(movies, flat_m[sl], axis=0))
        return out

    def true_ratings_at(self, ui: np.ndarray, mj: np.ndarray, taste: np.ndarray | None = None) -> np.ndarray:
        """``true_ratings`` by row positions, the fast way: ``1 + 4·sigmoid(mu + biases + taste_at)``.

        ``taste``: the pairs' ``taste_at`` when the caller already has it.
        """
        ui, mj = np.asarray(ui, dtype=np.int64), np.asarray(mj, dtype=np.int64)
        taste = self.taste_at(ui, mj) if taste is None else taste
        return 1.0 + 4.0 * _sigmoid(self.mu + self.user_bias[ui] + self.movie_quality[mj] + taste)

    def true_rating(self, user_id: int, movie_id: str) -> float:
        """The rating (1..5, float) this user would give this movie if asked without noise."""
        return float(self._true(self.user_index(user_id), self.movie_index(movie_id))[0])

    def true_ratings(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """Vectorised ``true_rating`` over aligned arrays of user and movie ids."""
        return self._true(self.user_index(user_ids), self.movie_index(movie_ids))

    def watch_weights(self, user_id: int) -> np.ndarray:
        """Relative chance that this user picks each movie next (popularity × taste; 0 for adult if minor)."""
        ui = self.user_index(user_id)[0]
        return np.exp(self._log_weights(np.array([ui]))[0])

    def _log_weights(self, ui: np.ndarray) -> np.ndarray:
        d = self.user_factors.shape[1]
        taste = self.taste_scale * (self.user_factors[ui] @ self.movie_factors.T / np.sqrt(d)
                                    + self.user_genre[ui] @ self.movie_genre.T)
        logw = self.alpha * self.log_popularity[None, :] + self.gamma * taste
        logw[np.ix_(self._minor[ui], self._adult)] = -np.inf
        return logw

    # ------------------------------------------------------------------ behaviour

    def sample_movies(self, user_id: int, n: int, rng: np.random.Generator,
                      exclude: set[str] | None = None) -> list[str]:
        """The next ``n`` distinct movies this user chooses to watch (popularity and taste), skipping ``exclude``."""
        logw = self._log_weights(self.user_index(user_id))[0]
        if exclude:
            idx = self._midx.get_indexer(np.array(sorted(exclude), dtype=object))
            logw[idx[idx >= 0]] = -np.inf
        keys = logw + rng.gumbel(size=logw.shape)
        order = np.argsort(-keys, kind="stable")
        order = order[np.isfinite(keys[order])][:n]
        return self.movies["movie_id"].to_numpy()[order].tolist()

    def _minutes(self, true: np.ndarray, runtime: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        liked = _sigmoid(1.8 * (true - 2.6))
        finished = rng.random(true.shape) < 0.85 * liked
        frac = np.clip(liked * rng.beta(2.0, 1.5, true.shape) + 0.03, 0.01, 1.0)
        frac = np.where(finished, 1.0, frac)
        return np.clip(np.rint(frac * runtime), 1, runtime).astype(np.int64)

    def _ratings(self, true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(np.rint(true + rng.normal(0.0, self.rating_noise, true.shape)), 1, 5).astype(np.int64)

    def sample_watch(self, user_id: int, movie_id: str, rng: np.random.Generator) -> Watch:
        """Minutes this user watches of this movie and, with ``rate_probability``, the rating given."""
        ui, mj = self.user_index(user_id), self.movie_index(movie_id)
        true = self._true(ui, mj)
        minutes = int(self._minutes(true, self._runtime[mj], rng)[0])
        rating = int(self._ratings(true, rng)[0]) if rng.random() < self.rate_probability else None
        return Watch(minutes=minutes, rating=rating)

    def history(self, n_ratings: int = 150_000, seed: int = 0,
                extra_watch_share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
        """A past of ``n_ratings`` ratings (one per user and movie) and the watches behind them.

        Every rated movie was watched; ``extra_watch_share`` more watches carry no rating. Ratings
        are the true taste plus noise, rounded to 1..5; minutes follow runtime and taste; times
        spread over ``period_days`` after each user joined, and the rating frame is time-ordered.
        """
        started = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(seed), 0x68697374]))
        n_users, n_movies = len(self.users), len(self.movies)
        eligible = np.where(self._minor, n_movies - int(self._adult.sum()), n_movies)
        n_watch = _allocate(rng, round(n_ratings * (1.0 + extra_watch_share)), eligible, n_users)
        n_rate = _allocate_rated(rng, n_ratings, n_watch)

        rows_all, cols_all, rated_all = [], [], []
        chunk = max(1, 4_000_000 // max(n_movies, 1))
        for lo in range(0, n_users, chunk):
            ui = np.arange(lo, min(lo + chunk, n_users))
            keys = self._log_weights(ui) + rng.gumbel(size=(len(ui), n_movies))
            rows, cols = _topk_per_row(keys, n_watch[ui])
            # which watches got a rating: a random n_rate of each user's watches
            pick = rng.random(len(rows))
            order = np.lexsort((pick, rows))
            rows, cols = rows[order], cols[order]
            starts = np.searchsorted(rows, np.arange(len(ui)))
            rank = np.arange(len(rows)) - starts[rows]
            rated_all.append(rank < n_rate[ui][rows])
            rows_all.append(ui[rows])
            cols_all.append(cols)
        uu = np.concatenate(rows_all)
        mm = np.concatenate(cols_all)
        rated = np.concatenate(rated_all)

        true = self._true(uu, mm)
        minutes = self._minutes(true, self._runtime[mm], rng)
        period = self.period_days * 86_400
        joined = rng.uniform(0.0, 0.7 * period, n_users)
        first = self.start_time + joined[uu] + rng.random(len(uu)) * (period - joined[uu] - 4 * 3600)
        first = first.astype(np.int64)
        last = first + minutes * 60 + rng.integers(0, 1800, len(uu))
        user_ids = self.users["user_id"].to_numpy()[uu]
        movie_ids = self.movies["movie_id"].to_numpy()[mm]

        watches = pd.DataFrame({
            "user_id": user_ids.astype("int64"), "movie_id": movie_ids.astype(str), "minutes": minutes,
            "first_seen": first, "last_seen": last,
        }).sort_values(["first_seen", "user_id", "movie_id"], kind="mergesort", ignore_index=True)
        r = np.flatnonzero(rated)
        ratings = pd.DataFrame({
            "user_id": user_ids[r].astype("int64"), "movie_id": movie_ids[r].astype(str),
            "rating": self._ratings(true[r], rng).astype("float64"),
            "timestamp": last[r] + rng.integers(5, 600, len(r)),
        }).sort_values(["timestamp", "user_id", "movie_id"], kind="mergesort", ignore_index=True)
        log.info("history generated", extra=kv(seed=seed, ratings=len(ratings), watches=len(watches),
                                               seconds=round(time.perf_counter() - started, 3)))
        return ratings, watches


def _position(index: pd.Index, key: int | str) -> int:
    """Position of one id in a unique ``index`` (KeyError when absent)."""
    pos = index.get_loc(key)
    if not isinstance(pos, int):  # a slice or mask only for a non-unique index, which ours never is
        raise KeyError(key)
    return pos


def _positions(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in a unique ``index``; an id it does not hold is a KeyError, as with a dict."""
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        raise KeyError(ids[pos < 0][0])
    return pos.astype(np.int64, copy=False)


def movielens_world(cache_dir: str | None = None, seed: int = 0) -> World:
    """MovieLens-100k's users and movies (course-style ids) with tastes fitted to its ratings."""
    tables = movielens_100k(cache_dir)
    return World.fit(tables.users, tables.movies, tables.ratings, seed=seed)


def _ridge_rows(rows: np.ndarray, x: np.ndarray, t: np.ndarray, n: int, reg: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row id, the ridge solution of t ≈ x·f + b (one batched solve): the factors f and the bias b."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    k = xa.shape[1]
    outer = (xa[:, :, None] * xa[:, None, :]).reshape(len(xa), k * k)
    gram = np.stack([np.bincount(rows, weights=outer[:, c], minlength=n) for c in range(k * k)], axis=1)
    gram = gram.reshape(n, k, k) + reg * np.eye(k)
    rhs = np.stack([np.bincount(rows, weights=xa[:, c] * t, minlength=n) for c in range(k)], axis=1)
    sol = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    return sol[:, :-1], sol[:, -1]


# ---------------------------------------------------------------------- helpers of generate()


def _allocate(rng: np.random.Generator, total: int, cap: np.ndarray, n_users: int) -> np.ndarray:
    """Split ``total`` watches over users with long-tailed activity, at least 5 each, at most ``cap`` each."""
    cap = np.minimum(cap, np.maximum(5, (0.8 * cap).astype(np.int64)))
    if total > int(cap.sum()):
        raise ValueError(f"{total} watches do not fit {n_users} users (at most {int(cap.sum())})")
    activity = rng.lognormal(0.0, 0.9, n_users)
    floor = min(5, total // max(n_users, 1))
    counts = np.minimum(np.full(n_users, floor), cap)
    rest = total - int(counts.sum())
    while rest > 0:
        room = cap - counts
        share = np.where(room > 0, activity, 0.0)
        add = rng.multinomial(rest, share / share.sum())
        counts += np.minimum(add, room)
        rest = total - int(counts.sum())
    return counts


def _allocate_rated(rng: np.random.Generator, total: int, n_watch: np.ndarray) -> np.ndarray:
    """How many of each user's watches carry a rating: ``total`` in all, proportional to watches."""
    rated = np.floor(n_watch * (total / max(int(n_watch.sum()), 1))).astype(np.int64)
    rated = np.minimum(rated, n_watch)
    short = total - int(rated.sum())
    if short > 0:
        room = n_watch - rated
        extra = rng.choice(np.repeat(np.arange(len(n_watch)), room), size=short, replace=False)
        np.add.at(rated, extra, 1)
    return rated


def _make_users(rng: np.random.Generator, n: int, n_clusters: int,
                minor_share: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    minor = rng.random(n) < minor_share
    adult_age = np.clip(np.rint(18 + rng.gamma(2.2, 9.0, n)), 18, 85)
    age = np.where(minor, rng.integers(8, 18, n), adult_age).astype(np.int64)
    gender = np.where(rng.random(n) < 0.55, "M", "F")
    occ = np.empty(n, dtype=object)
    names = np.array(OCCUPATIONS, dtype=object)
    for i in range(n):  # n is a few thousand: a plain loop reads best
        if age[i] < 18:
            occ[i] = "K-12 student"
            continue
        w = _OCC_ADULT_WEIGHT.copy()
        if age[i] <= 25:
            w[OCCUPATIONS.index("college/grad student")] *= 6
        if age[i] >= 62:
            w[OCCUPATIONS.index("retired")] = 40
        occ[i] = names[rng.choice(len(w), p=w / w.sum())]
    # taste groups: a mild pull by age so that demographics carry a little signal for cold start
    base = rng.dirichlet(np.full(n_clusters, 2.0), size=3)
    band = np.where(age < 18, 0, np.where(age < 40, 1, 2))
    cum = base.cumsum(axis=1)[band]
    cluster = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, n_clusters - 1)
    users = pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64), "age": age, "gender": gender.astype(str),
        "occupation": occ.astype(str),
    })
    return users, cluster, minor


def _make_genres(rng: np.random.Generator, n: int) -> tuple[list[list[str]], np.ndarray]:
    count = rng.choice([1, 2, 3], size=n, p=[0.35, 0.4, 0.25])
    keys = np.log(_GENRE_WEIGHT)[None, :] + rng.gumbel(size=(n, len(GENRES)))
    rows, cols = _topk_per_row(keys, count)
    member = np.zeros((n, len(GENRES)))
    member[rows, cols] = 1.0
    sets = [[GENRES[g] for g in np.flatnonzero(member[i])] for i in range(n)]
    return sets, member / member.sum(axis=1, keepdims=True)


def _make_movies(rng: np.random.Generator, n: int, genre_sets: list[list[str]], log_pop: np.ndarray,
                 adult_share: float) -> pd.DataFrame:
    year = np.clip(2024 - np.floor(rng.exponential(14.0, n)), 1925, 2024).astype(np.int64)
    is_kids = np.array([bool({"Animation", "Family"} & set(g)) for g in genre_sets])
    runtime = np.clip(np.rint(rng.normal(108.0, 18.0, n) - 15.0 * is_kids), 62, 210).astype(np.int64)
    adult = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero(~is_kids)
    n_adult = min(len(candidates), round(adult_share * n))
    adult[rng.choice(candidates, size=n_adult, replace=False)] = True
    titles, ids = [], []
    seen: set[str] = set()
    for i in range(n):
        while True:
            title = _title(rng)
            movie_id = course_movie_id(title, year[i])
            if movie_id not in seen:
                break
        seen.add(movie_id)
        titles.append(title)
        ids.append(movie_id)
    return pd.DataFrame({
        "movie_id": ids, "title": titles, "year": year, "genres": ["|".join(g) for g in genre_sets],
        "adult": adult, "vote_average": np.nan, "vote_count": 0,
        "popularity": np.round(np.exp(log_pop), 3), "runtime": runtime,
    })


def _title(rng: np.random.Generator) -> str:
    """One title from word lists; about 4 % carry the punctuation the real stream mangles."""
    def pick(words: list[str]) -> str:
        return words[int(rng.integers(len(words)))]

    adj, noun, noun2 = pick(_ADJECTIVES).title(), pick(_NOUNS).title(), pick(_NOUNS).title()
    name, place = pick(_NAMES).title(), pick(_PLACES).title()
    u = rng.random()
    if u < 0.04:  # mangled punctuation, like `monsters_+inc.+2001` or `... mockingjay+-+part+1`
        style = int(rng.integers(5))
        return [
            f"{noun}s, Inc.",
            f"The {adj} {noun}: {noun2} - Part {int(rng.integers(1, 4))}",
            f"Mr. {name}'s {noun}",
            f"{name} {pick(_NAMES)[0].upper()}.{pick(_NAMES)[0].upper()}.: {adj} {noun}",
            f"{noun} & {noun2}",
        ][style]
    if u < 0.30:
        return f"The {adj} {noun}"
    if u < 0.48:
        return f"{adj} {noun}"
    if u < 0.62:
        return f"The {noun} of {place if rng.random() < 0.5 else noun2}"
    if u < 0.72:
        return f"{name}'s {noun}"
    if u < 0.80:
        return f"{noun} and {noun2}"
    if u < 0.88:
        return f"The {noun}"
    if u < 0.94:
        return f"{adj} {noun} {int(rng.integers(2, 4))}"
    return f"{place} {noun}"
