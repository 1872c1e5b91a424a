"""parse_line / format_line: the three simulator formats, every rejection reason, and totality over str."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contracts.events import (
    REASONS,
    MalformedLine,
    RateEvent,
    RecommendationEvent,
    WatchEvent,
    format_line,
    format_time,
    parse_line,
)

T = "2024-03-01T12:34:56"
WHEN = datetime(2024, 3, 1, 12, 34, 56, tzinfo=UTC)
MANGLED = [
    "the+lord+of+the+rings+the+return+of+the+king+2003",
    "monsters_+inc.+2001",
    "walle+2008",
    "louis+c.k.+oh+my+god+2013",
    "the+hunger+games+mockingjay+-+part+1+2014",
]
WATCH = f"{T},12345,GET /data/m/the+lord+of+the+rings+the+return+of+the+king+2003/42.mpg"
RATE = f"{T}.123456789,12345,GET /rate/monsters_+inc.+2001=4"
RECO = (f"{T}.5,777,recommendation request 17645-team21.isri.cmu.edu:8082, status 200, "
        "result: walle+2008, louis+c.k.+oh+my+god+2013, the+hunger+games+mockingjay+-+part+1+2014, 123 ms")
TIMEOUT = (f"{T},777,recommendation request 17645-team21.isri.cmu.edu:8082, status 0, "
           "result: java.util.concurrent.TimeoutException: Request timed out after 800 ms, 815 ms")
VALID_LINES = [WATCH, RATE, RECO, TIMEOUT]


# --- the formats -----------------------------------------------------------------------------------


def test_watch_line_gives_user_movie_and_minute() -> None:
    event = parse_line(WATCH)
    assert event == WatchEvent(WHEN, 12345, "the+lord+of+the+rings+the+return+of+the+king+2003", 42)
    assert event.kind == "watch"


def test_rate_line_gives_rating_and_truncates_nanoseconds_to_microseconds() -> None:
    event = parse_line(RATE)
    assert isinstance(event, RateEvent)
    assert event.kind == "rate"
    assert (event.user_id, event.movie_id, event.rating) == (12345, "monsters_+inc.+2001", 4)
    assert event.time == WHEN.replace(microsecond=123456)


def test_recommendation_line_gives_the_served_list_in_order() -> None:
    event = parse_line(RECO)
    assert isinstance(event, RecommendationEvent)
    assert event.kind == "recommendation"
    assert event.server == "17645-team21.isri.cmu.edu:8082"
    assert event.status == 200
    assert event.movies == ("walle+2008", "louis+c.k.+oh+my+god+2013", "the+hunger+games+mockingjay+-+part+1+2014")
    assert event.response_ms == 123.0
    assert event.error is None
    assert event.time == WHEN.replace(microsecond=500000)


def test_recommendation_timeout_keeps_the_error_and_has_no_movies() -> None:
    event = parse_line(TIMEOUT)
    assert isinstance(event, RecommendationEvent)
    assert event.status == 0
    assert event.movies == ()
    assert event.error == "java.util.concurrent.TimeoutException: Request timed out after 800 ms"
    assert event.response_ms == 815.0


def test_recommendation_list_without_spaces_is_accepted_like_the_api_writes_it() -> None:
    line = f"{T},1,recommendation request h:8082, status 200, result: a+2001,b+2002, 12.5 ms"
    event = parse_line(line)
    assert event.movies == ("a+2001", "b+2002")
    assert event.response_ms == 12.5


def test_events_are_frozen() -> None:
    event = parse_line(WATCH)
    with pytest.raises(AttributeError):
        event.minute = 3  # type: ignore[misc]


@pytest.mark.parametrize("movie", [*MANGLED, "amélie+2001", "it's+a+wonderful+life+1946", 'say+"cheese"+1999'])
def test_mangled_movie_ids_are_accepted_in_every_format(movie: str) -> None:
    assert parse_line(f"{T},1,GET /data/m/{movie}/0.mpg").movie_id == movie
    assert parse_line(f"{T},1,GET /rate/{movie}=5").movie_id == movie
    assert parse_line(f"{T},1,recommendation request h:1, status 200, result: {movie}, 1 ms").movies == (movie,)


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-03-01T12:34:56", WHEN),
    ("2024-03-01T12:34:56.1", WHEN.replace(microsecond=100000)),
    ("2024-03-01T12:34:56.123", WHEN.replace(microsecond=123000)),
    ("2024-03-01T12:34:56.123456", WHEN.replace(microsecond=123456)),
    ("2024-03-01T12:34:56.123456999", WHEN.replace(microsecond=123456)),  # truncated, not rounded
    ("2024-03-01T12:34:56Z", WHEN),
    ("2024-03-01T12:34:56.25Z", WHEN.replace(microsecond=250000)),
    ("2024-03-01T12:34:56z", WHEN),
    ("2024-03-01T14:34:56+02:00", WHEN),
    ("2024-03-01T07:34:56-0500", WHEN),
    ("2024-03-01 12:34:56", WHEN),
])
def test_times_become_aware_utc(text: str, expected: datetime) -> None:
    event = parse_line(f"{text},1,GET /rate/m=3")
    assert event.time == expected
    assert event.time.utcoffset() == timedelta(0)


def test_surrounding_whitespace_and_crlf_are_ignored() -> None:
    assert parse_line(f"  {WATCH}\r\n") == parse_line(WATCH)


def test_user_id_of_18_digits_is_accepted() -> None:
    assert parse_line(f"{T},{'9' * 18},GET /rate/m=3").user_id == 10**18 - 1


# --- every rejection reason ------------------------------------------------------------------------

REJECTED = [
    ("empty", ""),
    ("empty", "   \t \r\n"),
    ("garbage", "hello world"),
    ("garbage", "{\"user\": 1, \"movie\": 2}"),
    ("garbage", "\x00\x01\x02"),
    ("garbage", f"{T},1,hello there"),
    ("garbage", "yesterday,bob,watched a movie"),
    ("truncated", "2024-03-01T12:3"),
    ("truncated", f"{T},12"),
    ("truncated", f"{T},12,GET /da"),
    ("truncated", f"{T},12,GET /data/m/walle+2008"),
    ("truncated", f"{T},12,GET /data/m/walle+2008/4"),
    ("truncated", f"{T},12,GET /data/m/walle+2008/4.mp"),
    ("truncated", f"{T},12,GET /rate/walle+2008"),
    ("truncated", f"{T},12,GET /rate/walle+2008="),
    ("truncated", f"{T},12,recommendation request h:8082"),
    ("truncated", f"{T},12,recommendation request h:8082, status 200"),
    ("truncated", f"{T},12,recommendation request h:8082, status 200, result: a+1, b+2"),
    ("truncated", f"{T},12,recommendation request h:8082, status 200, result: a+1, 12"),
    ("bad_time", "2024-13-01T12:34:56,1,GET /rate/m=3"),
    ("bad_time", "2024-02-30T12:34:56,1,GET /rate/m=3"),
    ("bad_time", "2024-03-01T25:00:00,1,GET /rate/m=3"),
    ("bad_time", "yesterday,1,GET /rate/m=3"),
    ("bad_time", "1709296496,1,GET /rate/m=3"),
    ("bad_time", "2024-03-01T12:34:56.1234567890,1,GET /rate/m=3"),
    ("bad_time", ",1,GET /data/m/m/1.mpg"),
    ("bad_user", f"{T},abc,GET /rate/m=3"),
    ("bad_user", f"{T},-5,GET /rate/m=3"),
    ("bad_user", f"{T},1.5,GET /rate/m=3"),
    ("bad_user", f"{T},,GET /rate/m=3"),
    ("bad_user", f"{T},{'1' * 19},GET /rate/m=3"),
    ("bad_user", f"{T},١٢٣,GET /rate/m=3"),  # non-ASCII digits are not a user id
    ("bad_user", f"{T},abc,hello"),
    ("unknown_request", f"{T},1,GET /data/x/m/1.mpg"),
    ("unknown_request", f"{T},1,POST /rate/m=3"),
    ("unknown_request", f"{T},1,GET /data/m/walle+2008/3.avi"),
    ("unknown_request", f"{T},1,recommendation response h, status 200"),
    ("bad_movie", f"{T},1,GET /rate/=3"),
    ("bad_movie", f"{T},1,GET /rate/two words=3"),
    ("bad_movie", f"{T},1,GET /rate/a=b=3"),
    ("bad_movie", f"{T},1,GET /rate/a/b=3"),
    ("bad_movie", f"{T},1,GET /data/m//3.mpg"),
    ("bad_movie", f"{T},1,GET /data/m/a\tb/3.mpg"),
    ("bad_movie", f"{T},1,GET /data/m/{'x' * 301}/3.mpg"),
    ("bad_movie", f"{T},1,recommendation request h, status 200, result: a, , b, 3 ms"),
    ("bad_movie", f"{T},1,recommendation request h, status 200, result: not a list, 3 ms"),
    ("bad_minute", f"{T},1,GET /data/m/m/x.mpg"),
    ("bad_minute", f"{T},1,GET /data/m/m/-1.mpg"),
    ("bad_minute", f"{T},1,GET /data/m/m/.mpg"),
    ("bad_minute", f"{T},1,GET /data/m/m/1234567.mpg"),
    ("bad_rating", f"{T},1,GET /rate/m=x"),
    ("bad_rating", f"{T},1,GET /rate/m=4.5"),
    ("bad_rating", f"{T},1,GET /rate/m=4 stars"),
    ("rating_out_of_range", f"{T},1,GET /rate/m=0"),
    ("rating_out_of_range", f"{T},1,GET /rate/m=6"),
    ("rating_out_of_range", f"{T},1,GET /rate/m=-1"),
    ("rating_out_of_range", f"{T},1,GET /rate/m=99"),
    ("bad_server", f"{T},1,recommendation request , status 200, result: a, 3 ms"),
    ("bad_server", f"{T},1,recommendation request two hosts, status 200, result: a, 3 ms"),
    ("bad_status", f"{T},1,recommendation request h, status OK, result: a, 3 ms"),
    ("bad_status", f"{T},1,recommendation request h, status 2000, result: a, 3 ms"),
    ("bad_status", f"{T},1,recommendation request h, status -1, result: a, 3 ms"),
    ("bad_response_time", f"{T},1,recommendation request h, status 200, result: a, fast ms"),
    ("bad_response_time", f"{T},1,recommendation request h, status 200, result: a, -3 ms"),
    ("bad_response_time", f"{T},1,recommendation request h, status 0, result: boom, 1e3 ms"),
]


@pytest.mark.parametrize(("reason", "line"), REJECTED)
def test_bad_line_is_rejected_with_its_reason(reason: str, line: str) -> None:
    with pytest.raises(MalformedLine) as caught:
        parse_line(line)
    assert caught.value.reason == reason
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_every_documented_reason_is_exercised_above() -> None:
    assert {reason for reason, _ in REJECTED} == set(REASONS)


@pytest.mark.parametrize("line", VALID_LINES)
def test_every_cut_of_a_valid_line_is_truncated_not_misread(line: str) -> None:
    for end in range(1, len(line)):
        prefix = line[:end]
        if not prefix.strip():
            continue
        with pytest.raises(MalformedLine) as caught:
            parse_line(prefix)
        assert caught.value.reason == "truncated", prefix


def test_message_stays_short_for_huge_lines() -> None:
    with pytest.raises(MalformedLine) as caught:
        parse_line("x" * 100_000)
    assert len(str(caught.value)) < 200


# --- format_line -----------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [WATCH, f"{T}.123456,12345,GET /rate/monsters_+inc.+2001=4", TIMEOUT])
def test_format_line_writes_the_simulator_format(line: str) -> None:
    assert format_line(parse_line(line)) == line


def test_format_time_writes_utc_without_offset() -> None:
    moment = datetime(2024, 3, 1, 14, 34, 56, 7, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2024-03-01T12:34:56.000007"


_no_space = st.characters(
    blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters=",/=",
).filter(lambda c: not c.isspace())
_movies = st.text(_no_space, min_size=1, max_size=40)
_times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
_users = st.integers(0, 10**18 - 1)
_millis = st.integers(0, 10**9 - 1).map(lambda k: k / 1000)
_events = st.one_of(
    st.builds(WatchEvent, _times, _users, _movies, st.integers(0, 999_999)),
    st.builds(RateEvent, _times, _users, _movies, st.integers(1, 5)),
    st.builds(RecommendationEvent, _times, _users, _movies, st.just(200),
              st.lists(_movies, max_size=20).map(tuple), _millis, st.none()),
    st.builds(RecommendationEvent, _times, _users, _movies, st.integers(0, 999).filter(lambda s: s != 200),
              st.just(()), _millis, st.none() | st.text(min_size=1, max_size=80)),
)


@given(_events)
@settings(max_examples=400, deadline=None)
def test_format_then_parse_gives_the_same_event(event) -> None:
    assert parse_line(format_line(event)) == event


# --- totality: nothing but MalformedLine, ever -----------------------------------------------------


def _parse_or_reason(line: str):
    try:
        return parse_line(line)
    except MalformedLine as exc:
        assert exc.reason in REASONS
        return None


@given(st.text(max_size=300))
@settings(max_examples=1500, deadline=None)
def test_random_text_never_raises_anything_but_malformed_line(text: str) -> None:
    _parse_or_reason(text)


_line_alphabet = st.sampled_from([*"0123456789,-:.T /=+ms\x00\n\r\t\"é", "\ud800", "\ufffd", "GET /", "ms", ", "])


@given(st.sampled_from(VALID_LINES), st.data())
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_valid_lines_parse_or_are_rejected_and_reparse_stably(line: str, data) -> None:
    chars = list(line)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(chars)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(_line_alphabet)
        if action == "insert":
            chars.insert(position, piece)
        elif position < len(chars):
            if action == "delete":
                del chars[position]
            else:
                chars[position] = piece
    event = _parse_or_reason("".join(chars))
    if event is not None:
        # Whatever was accepted is a well-formed event: writing it out and reading it back is stable.
        assert parse_line(format_line(event)) == event
