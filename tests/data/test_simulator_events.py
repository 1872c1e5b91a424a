"""The simulator's event lines are exactly the formats the platform parses (design section 3)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from app.contracts.events import RateEvent, RecommendationEvent, WatchEvent, parse_line
from simulator.load import Outcome, ensure_loopback
from simulator.population import Population, session_lines
from simulator.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World.generate(seed=3, n_users=200, n_movies=300)


def test_a_served_session_round_trips_through_parse_line(world):
    population = Population(world, seed=1)
    user = int(world.users.user_id.iloc[5])
    movies = tuple(world.movies.movie_id.iloc[:20])
    reaction = population.react(0, user, movies)
    when = datetime(2026, 11, 24, 8, 0, 0, 123456, tzinfo=UTC)
    lines = session_lines(when, "127.0.0.1:8082", Outcome(user, 200, 12.5, movies=movies), reaction)
    events = [parse_line(line) for line in lines]
    assert isinstance(events[0], RecommendationEvent)
    assert events[0].movies == movies and events[0].status == 200 and events[0].user_id == user
    assert events[0].time == when and events[0].response_ms == pytest.approx(12.5)
    movie, minutes, rating, _ = reaction
    watches = [e for e in events if isinstance(e, WatchEvent)]
    assert [w.minute for w in watches] == list(range(minutes))
    assert {w.movie_id for w in watches} == {movie}
    rates = [e for e in events if isinstance(e, RateEvent)]
    assert [r.rating for r in rates] == ([rating] if rating is not None else [])
    assert all(a.time <= b.time for a, b in itertools.pairwise(events))


def test_a_timed_out_request_writes_the_status_0_line(world):
    when = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    lines = session_lines(when, "127.0.0.1:8082", Outcome(7, 0, 815.0, error="timeout"), None)
    assert len(lines) == 1
    event = parse_line(lines[0])
    assert event.status == 0 and event.movies == ()
    assert "TimeoutException" in event.error and "800 ms" in event.error
    assert event.response_ms == pytest.approx(815.0)


def test_reactions_are_deterministic_given_the_seed(world):
    user = int(world.users.user_id.iloc[9])
    movies = tuple(world.movies.movie_id.iloc[40:60])
    first = [Population(world, seed=4).react(s, user, movies) for s in range(5)]
    again = [Population(world, seed=4).react(s, user, movies) for s in range(5)]
    other = [Population(world, seed=5).react(s, user, movies) for s in range(5)]
    assert first == again
    assert first != other


def test_users_accept_lists_they_like_more_often(world):
    """A list of the user's truly best movies is accepted far more often than their worst."""
    import numpy as np

    population = Population(world, seed=0)
    accepted = {"best": 0, "worst": 0}
    ids = world.movies.movie_id.to_numpy()
    for n, user in enumerate(world.users.user_id.iloc[:60]):
        true = world.true_ratings(np.full(len(ids), int(user)), ids)
        order = np.argsort(true)
        for name, pick in (("best", order[-20:]), ("worst", order[:20])):
            result = Population(world, seed=n).react(n, int(user), tuple(ids[pick]))
            accepted[name] += bool(result and result[3])
    assert accepted["best"] > 2 * max(1, accepted["worst"])
    assert population.user_for(1) == Population(world, seed=0).user_for(1)


def test_the_simulator_refuses_non_loopback_targets():
    ensure_loopback("http://127.0.0.1:8082")
    ensure_loopback("http://localhost:8082")
    with pytest.raises(ValueError, match="loopback"):
        ensure_loopback("http://192.0.2.10:8082")
    ensure_loopback("http://192.0.2.10:8082", allow_remote=True)
