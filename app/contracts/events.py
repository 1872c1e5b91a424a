"""One line of the simulator's event log (design section 3) → a typed event, and back.

Three line formats exist::

    <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg
    <time>,<userid>,GET /rate/<movieid>=<rating>
    <time>,<userid>,recommendation request <server>, status <code>, result: <id>, <id>, ..., <N> ms

Real streams also carry garbage, truncated lines and out-of-range values, so ``parse_line`` is total
over ``str``: it returns an event or raises ``MalformedLine`` with a short ``reason`` that ingestion
counts (never any other exception). It sits on the hot path of ingestion (millions of lines per
window), so it splits on fixed prefixes and uses precompiled, anchored regexes only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "REASONS",
    "Event",
    "MalformedLine",
    "RateEvent",
    "RecommendationEvent",
    "WatchEvent",
    "format_line",
    "format_time",
    "parse_line",
]

# Why a line was set aside. Ingestion counts lines by these names, the data checks read the counts.
REASONS = (
    "empty",  # nothing but whitespace
    "garbage",  # no recognisable structure at all
    "truncated",  # the start of a valid line, cut short
    "bad_time",  # first field is not an ISO-8601 time
    "bad_user",  # user id is not a non-negative integer of at most 18 digits
    "unknown_request",  # a request we do not know (other path, other verb)
    "bad_movie",  # empty or over 300 characters, or holding whitespace, control characters, U+FFFD, ',', '/' or '='
    "bad_minute",  # minute of a watch is not a non-negative integer of at most 6 digits
    "bad_rating",  # rating is not an integer
    "rating_out_of_range",  # rating is an integer outside 1..5
    "bad_server",  # server of a recommendation request is empty or holds whitespace
    "bad_status",  # status of a recommendation request is not a 1-3 digit integer
    "bad_response_time",  # the trailing '<N> ms' of a recommendation request is not a number
)


class MalformedLine(ValueError):
    """A log line that is not a valid event; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, line: str = "", detail: str = "") -> None:
        self.reason = reason
        excerpt = line if len(line) <= 80 else line[:77] + "..."
        message = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{message} in line {excerpt!r}")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One minute of a movie streamed to a user (one line per minute watched)."""

    kind: str = field(default="watch", init=False)
    time: datetime
    user_id: int
    movie_id: str
    minute: int


@dataclass(frozen=True, slots=True)
class RateEvent:
    """A user's rating of a movie, 1..5."""

    kind: str = field(default="rate", init=False)
    time: datetime
    user_id: int
    movie_id: str
    rating: int


@dataclass(frozen=True, slots=True)
class RecommendationEvent:
    """The client's view of one `/recommend` call: what came back, how fast, or why it failed."""

    kind: str = field(default="recommendation", init=False)
    time: datetime
    user_id: int
    server: str
    status: int
    movies: tuple[str, ...]
    response_ms: float
    error: str | None = None


Event = WatchEvent | RateEvent | RecommendationEvent

# --- pieces of a line --------------------------------------------------------------------------

_WATCH = "GET /data/m/"
_RATE = "GET /rate/"
_RECO = "recommendation request "
_PREFIXES = (_WATCH, _RATE, _RECO)

_TIME_NAIVE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?", re.ASCII)
_TIME_ZONED = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)",
    re.ASCII,
)
# A first field that could be the beginning of a time: used to tell "truncated" from "garbage".
_TIMEISH = re.compile(r"[0-9][0-9T:.+Zz -]*", re.ASCII)
_USER = re.compile(r"[0-9]{1,18}", re.ASCII)
# Movie ids are mangled titles; anything printable without separators of the line format is accepted.
_MOVIE_CHARS = r"[^\s,/=\x00-\x1f\x7f\ud800-\udfff\ufffd]{1,300}"
_MOVIE = re.compile(_MOVIE_CHARS)
# A served list: ids separated by ", " (the simulator's log) or "," (the API's answer), nothing else.
_MOVIE_LIST = re.compile(f"{_MOVIE_CHARS}(?:, ?{_MOVIE_CHARS})*")
_SERVER = re.compile(r"[^\s,\x00-\x1f\x7f\ud800-\udfff\ufffd]{1,300}")
_MINUTE = re.compile(r"[0-9]{1,6}", re.ASCII)
_PARTIAL_MINUTE = re.compile(r"[0-9]{0,6}(?:\.(?:m(?:p)?)?)?", re.ASCII)
_INTEGER = re.compile(r"-?[0-9]{1,9}", re.ASCII)
_STATUS = re.compile(r"[0-9]{1,3}", re.ASCII)
_MILLIS = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?", re.ASCII)
_REQUESTISH = re.compile(r"(?:[A-Z]{3,7} /|recommendation)", re.ASCII)


def _parse_time(text: str, line: str) -> datetime:
    """ISO-8601 → aware UTC datetime; fractions beyond microseconds are truncated, no offset means UTC."""
    try:
        # fromisoformat (3.11) keeps the first 6 fraction digits and drops the rest; "+00:00" makes it
        # return timezone.utc directly, much cheaper than a replace(tzinfo=...) afterwards.
        if _TIME_NAIVE.fullmatch(text) is not None:
            return datetime.fromisoformat(text + "+00:00")
        if _TIME_ZONED.fullmatch(text) is not None:
            value = datetime.fromisoformat(text[:-1] + "Z" if text[-1] == "z" else text)
            return value.astimezone(UTC) if value.tzinfo is not UTC else value
    except (ValueError, OverflowError) as exc:
        raise MalformedLine("bad_time", line, str(exc)) from None
    raise MalformedLine("bad_time", line)


def _parse_user(text: str, line: str) -> int:
    if _USER.fullmatch(text) is None:
        raise MalformedLine("bad_user", line)
    return int(text)


def _movie(text: str, line: str) -> str:
    if _MOVIE.fullmatch(text) is None:
        raise MalformedLine("bad_movie", line)
    return text


def _parse_watch(when: datetime, user: int, rest: str, line: str) -> WatchEvent:
    body = rest[len(_WATCH):]
    slash = body.rfind("/")
    if slash < 0:
        raise MalformedLine("truncated", line, "no minute")
    tail = body[slash + 1:]
    if not tail.endswith(".mpg"):
        if _PARTIAL_MINUTE.fullmatch(tail):
            raise MalformedLine("truncated", line, "no .mpg")
        raise MalformedLine("unknown_request", line, "not a .mpg")
    movie = _movie(body[:slash], line)
    minute = tail[:-4]
    if _MINUTE.fullmatch(minute) is None:
        raise MalformedLine("bad_minute", line)
    return WatchEvent(when, user, movie, int(minute))


def _parse_rate(when: datetime, user: int, rest: str, line: str) -> RateEvent:
    body = rest[len(_RATE):]
    eq = body.rfind("=")
    if eq < 0 or eq == len(body) - 1:
        raise MalformedLine("truncated", line, "no rating")
    movie = _movie(body[:eq], line)
    text = body[eq + 1:]
    if _INTEGER.fullmatch(text) is None:
        raise MalformedLine("bad_rating", line)
    rating = int(text)
    if not 1 <= rating <= 5:
        raise MalformedLine("rating_out_of_range", line, f"rating {rating}")
    return RateEvent(when, user, movie, rating)


def _parse_recommendation(when: datetime, user: int, rest: str, line: str) -> RecommendationEvent:
    status_at = rest.find(", status ", len(_RECO))
    if status_at < 0:
        raise MalformedLine("truncated", line, "no status")
    result_at = rest.find(", result: ", status_at + 9)
    if result_at < 0:
        raise MalformedLine("truncated", line, "no result")
    server = rest[len(_RECO):status_at]
    if _SERVER.fullmatch(server) is None:
        raise MalformedLine("bad_server", line)
    status_text = rest[status_at + 9:result_at]
    if _STATUS.fullmatch(status_text) is None:
        raise MalformedLine("bad_status", line)
    result = rest[result_at + 10:]
    last = result.rfind(", ")
    if last < 0 or not result.endswith("ms"):
        raise MalformedLine("truncated", line, "no response time")
    millis = result[last + 2:-2].rstrip(" ")
    if _MILLIS.fullmatch(millis) is None:
        raise MalformedLine("bad_response_time", line)
    body = result[:last]
    status = int(status_text)
    if status == 200:
        if not body:
            movies: tuple[str, ...] = ()
        elif _MOVIE_LIST.fullmatch(body) is not None:
            movies = tuple(body.replace(" ", "").split(","))  # ids hold no spaces: only separators go
        else:
            raise MalformedLine("bad_movie", line)
        return RecommendationEvent(when, user, server, status, movies, float(millis), None)
    return RecommendationEvent(when, user, server, status, (), float(millis), body or None)


def parse_line(line: str) -> WatchEvent | RateEvent | RecommendationEvent:
    """Parse one log line (surrounding whitespace and the newline are ignored).

    Raises ``MalformedLine`` (and nothing else) for any line that is not a valid event; checks run
    in the order of the fields, so the reason names the first thing wrong.
    """
    text = line.strip()
    if not text:
        raise MalformedLine("empty", line)
    parts = text.split(",", 2)
    if len(parts) < 3:
        raise MalformedLine("truncated" if _TIMEISH.fullmatch(parts[0]) else "garbage", line)
    time_text, user_text, rest = parts
    if rest.startswith(_WATCH):
        parser = _parse_watch
    elif rest.startswith(_RATE):
        parser = _parse_rate
    elif rest.startswith(_RECO):
        parser = _parse_recommendation
    else:
        # Unrecognised request: tell a cut-off or unknown request from plain garbage.
        if _TIME_NAIVE.fullmatch(time_text) is None and _TIME_ZONED.fullmatch(time_text) is None:
            raise MalformedLine("garbage", line)
        _parse_time(time_text, line)
        _parse_user(user_text, line)
        if any(prefix.startswith(rest) for prefix in _PREFIXES):
            raise MalformedLine("truncated", line)
        raise MalformedLine("unknown_request" if _REQUESTISH.match(rest) else "garbage", line)
    return parser(_parse_time(time_text, line), _parse_user(user_text, line), rest, line)


def format_time(when: datetime) -> str:
    """UTC ISO-8601 without offset (the simulator's form), fraction only when there is one."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat()


def _format_millis(value: float) -> str:
    # nine decimals: everything the parser accepts is written back unchanged (0.0815 stays 0.0815)
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def format_line(event: WatchEvent | RateEvent | RecommendationEvent) -> str:
    """The log line of an event (no newline): ``parse_line(format_line(e)) == e`` for valid events.

    Response times are written with up to nine decimals, the precision the parser reads.
    """
    head = f"{format_time(event.time)},{event.user_id},"
    if isinstance(event, WatchEvent):
        return f"{head}{_WATCH}{event.movie_id}/{event.minute}.mpg"
    if isinstance(event, RateEvent):
        return f"{head}{_RATE}{event.movie_id}={event.rating}"
    if isinstance(event, RecommendationEvent):
        result = ", ".join(event.movies) if event.status == 200 else (event.error or "")
        return (
            f"{head}{_RECO}{event.server}, status {event.status}, result: {result}, "
            f"{_format_millis(event.response_ms)} ms"
        )
    raise TypeError(f"not an event: {type(event).__name__}")
