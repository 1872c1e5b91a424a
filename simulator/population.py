"""Traffic mode: a population of users that asks for recommendations and then watches and rates.

A session: a user arrives, asks `GET /recommend/<uid>` (800 ms timeout), writes the
`recommendation request` line (or the `status 0` timeout line), then picks a movie — one of the
recommended ones with a probability that grows with how much the user truly likes the best of
them, otherwise something else they like — watches it (one line per minute watched) and sometimes
rates it. Lines are exactly the formats of design section 3, built by `app.contracts.events`.

Every choice comes from `numpy.random.default_rng([seed, session])`, so a seed replays the same
users and the same decisions given the same answers. Event times: the request line carries the
wall clock; the watch and rate lines of a session follow it minute by minute (simulated time), the
way a real viewing would unfold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import numpy as np

from app.contracts.events import RateEvent, RecommendationEvent, WatchEvent, format_line
from simulator.load import CLIENT_TIMEOUT_S, LoadSummary, Outcome, fetch
from simulator.world import World

Emit = Callable[[str], None]


@dataclass
class Population:
    """Who arrives and how they react to a list."""

    world: World
    seed: int = 0
    new_user_share: float = 0.05  # users the platform has never seen (cold start)
    pick_sharpness: float = 3.0  # how strongly taste decides acceptance of a recommended movie
    accept_at: float = 4.2  # true rating at which a looked-at movie is taken half of the time
    examine_decay: float = 0.85  # chance to look at position p is examine_decay ** p
    _watched: dict[int, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._users = set(self.world.users["user_id"].astype(int).tolist())
        self._movies = set(self.world.movies["movie_id"].astype(str).tolist())

    def user_for(self, session: int) -> int:
        rng = np.random.default_rng([self.seed, session, 1])
        ids = self.world.users["user_id"].to_numpy()
        if rng.random() < self.new_user_share:
            return int(ids.max() + 1 + rng.integers(0, 10_000))
        return int(rng.choice(ids))

    def react(self, session: int, user_id: int, movies: tuple[str, ...]) -> tuple[str, int, int | None, bool] | None:
        """(movie, minutes, rating or None, was_recommended) the user watches after this list."""
        rng = np.random.default_rng([self.seed, session, 2])
        if user_id not in self._users:  # a stranger: watches a recommended movie or nothing
            if not movies:
                return None
            return movies[int(rng.integers(0, min(5, len(movies))))], int(rng.integers(5, 90)), None, True
        with self._lock:
            seen = set(self._watched.setdefault(user_id, set()))
        candidates = [m for m in movies if m in self._movies and m not in seen]
        chosen, recommended = None, False
        if candidates:
            # cascade model: the user reads the list top-down, looks at each position with a
            # decaying probability and takes a movie with a chance that grows with true taste
            true = self.world.true_ratings(np.full(len(candidates), user_id), np.array(candidates, dtype=object))
            looked = rng.random(len(candidates)) < self.examine_decay ** np.arange(len(candidates))
            accept = 1.0 / (1.0 + np.exp(-self.pick_sharpness * (true - self.accept_at)))
            taken = np.flatnonzero(looked & (rng.random(len(candidates)) < accept))
            if len(taken):
                chosen, recommended = candidates[int(taken[0])], True
        if chosen is None:
            picks = self.world.sample_movies(user_id, 1, rng, exclude=seen)
            if not picks:
                return None
            chosen = picks[0]
        watch = self.world.sample_watch(user_id, chosen, rng)
        with self._lock:
            self._watched[user_id].add(chosen)
        return chosen, watch.minutes, watch.rating, recommended


def session_lines(
    when: datetime, server: str, outcome: Outcome, reaction: tuple[str, int, int | None, bool] | None
) -> list[str]:
    """The log lines of one session, in time order."""
    if outcome.status == 200:
        reco = RecommendationEvent(when, outcome.user_id, server, 200, outcome.movies, outcome.latency_ms)
    else:
        error = (
            f"java.util.concurrent.TimeoutException: No response after {int(CLIENT_TIMEOUT_S * 1000)} ms"
            if outcome.error == "timeout"
            else f"java.io.IOException: {outcome.error or outcome.status}"
        )
        reco = RecommendationEvent(when, outcome.user_id, server, 0, (), outcome.latency_ms, error)
    lines = [format_line(reco)]
    if reaction is None:
        return lines
    movie, minutes, rating, _ = reaction
    start = when + timedelta(seconds=5)
    for minute in range(minutes):
        lines.append(format_line(WatchEvent(start + timedelta(minutes=minute), outcome.user_id, movie, minute)))
    if rating is not None:
        lines.append(format_line(RateEvent(start + timedelta(minutes=minutes), outcome.user_id, movie, rating)))
    return lines


def run_traffic(
    base_url: str,
    population: Population,
    emit: Emit,
    rate: float,
    duration_s: float,
    max_sessions: int | None = None,
    concurrency: int = 16,
    progress: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> LoadSummary:
    """Sessions at `rate` per second for `duration_s` (bounded by `max_sessions`); lines go to `emit`."""
    server = urlsplit(base_url).netloc
    total = int(rate * duration_s)
    if max_sessions is not None:
        total = min(total, max_sessions)
    summary = LoadSummary()
    lock = threading.Lock()
    start = time.perf_counter()

    def session(n: int) -> None:
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        user = population.user_for(n)
        when = datetime.now(UTC)
        outcome = fetch(base_url, user)
        reaction = population.react(n, user, outcome.movies) if outcome.status == 200 else None
        lines = session_lines(when, server, outcome, reaction)
        with lock:
            summary.outcomes.append(outcome)
            for line in lines:
                emit(line)

    last = start
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for n in range(total):
            if stop is not None and stop.is_set():
                break
            ahead = start + n / rate - time.perf_counter() - 1.0
            if ahead > 0:
                time.sleep(ahead)
            pool.submit(session, n)
            now = time.perf_counter()
            if progress and now - last >= 1.0:
                last = now
                with lock:
                    progress(f"[{now - start:6.1f}s] sessions {summary.requests}/{total}  ok {summary.ok}  "
                             f"timeouts {summary.timeouts}  p99 {summary.percentile(99):.1f} ms")
    summary.seconds = time.perf_counter() - start
    return summary
