"""Online evaluation: how users actually reacted to the lists each model version served.

Each `recommendation request` line is joined with the same user's later watch and rate lines:

* score (the reference design's): for a movie the user watched after the list, the rank score of
  the movie in the list (top 5 → 10, 6-10 → 8, 11-15 → 5, 16-20 → 3, absent → 0.01) times the
  share watched (0-20 % → 1/5, 20-50 % → 3/5, 50-70 % → 4/5, 70-100 % → 5/5), plus the rank score
  times the rating given / 5. A list scores its best such movie, or 0 when the user watched nothing
  within the window. The version's score is the mean over its lists.
* hit rate: share of lists from which the user watched a listed movie within the window.
* average rating the users gave to recommended movies they watched.

Which version and slot served a list is not in the log line; it is in the provenance table
(`reccom`): a list is attributed to the row of the same user with the same movies served within a
few seconds. Without MySQL, lists are grouped by the `<server>` field of the line.

A list is evaluated only once it is `settle_s` old: its provenance row is written in a batch a
moment after the answer, and its user has not had time to react yet. Counting it earlier would
report it as unattributed and unwatched. "Old" is measured against the newest event of the log,
and for a live log against the clock too: the simulator writes a session's watch lines at once,
stamped with the minutes to come, so a live log's newest event lies in the future.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from app import store
from app.clock import duration_arg
from app.contracts.events import MalformedLine, RateEvent, RecommendationEvent, WatchEvent, parse_line
from app.logs import kv
from app.settings import MySQL, Paths

log = logging.getLogger(__name__)

WINDOW_S = 15 * 60.0  # a watch counts for a list when it starts within this long after the list
DEFAULT_RUNTIME_MIN = 100.0
SETTLE_S = 10.0  # lists younger than this (against the newest event in the log) wait for the next refresh


def rank_score(position: int | None) -> float:
    """Reference rank score of a 0-based position in the list (None = not in the list)."""
    if position is None or position >= 20:
        return 0.01
    if position < 5:
        return 10.0
    if position < 10:
        return 8.0
    if position < 15:
        return 5.0
    return 3.0


def watched_score(share: float) -> float:
    """Reference score of the share of the movie watched (0..1)."""
    if share < 0.2:
        return 1 / 5
    if share < 0.5:
        return 3 / 5
    if share < 0.7:
        return 4 / 5
    return 5 / 5


def movie_score(position: int | None, share: float, rating: int | None) -> float:
    """(rank × watched) + (rank × rating/5); no rating adds nothing."""
    rank = rank_score(position)
    return rank * watched_score(share) + (rank * rating / 5 if rating else 0.0)


@dataclass
class Viewing:
    """What one user did with one movie: when they started, distinct minutes, latest rating."""

    start: float
    minutes: set[int] = field(default_factory=set)
    rating: int | None = None
    rated_at: float = -math.inf


@dataclass
class ListOutcome:
    score: float
    hit: bool
    ratings: list[int]


class Attributor(Protocol):
    def attribute(self, recs: list[RecommendationEvent]) -> list[tuple[str, str]]: ...


class ServerAttributor:
    """Fallback: group lists by the `<server>` field of the line."""

    def attribute(self, recs: list[RecommendationEvent]) -> list[tuple[str, str]]:
        return [("unknown", r.server) for r in recs]


class ProvenanceAttributor:
    """Find the `reccom` row that served each list: same user, same movies, served within `slack_s`."""

    def __init__(self, settings: MySQL, slack_s: float = 5.0) -> None:
        self.settings = settings
        self.slack_ms = int(slack_s * 1000)

    def attribute(self, recs: list[RecommendationEvent]) -> list[tuple[str, str]]:
        if not recs:
            return []
        times = [int(r.time.timestamp() * 1000) for r in recs]
        rows: dict[tuple[int, str], list[tuple[int, str, str]]] = defaultdict(list)
        served = store.served_lists(self.settings, [r.user_id for r in recs],
                                    min(times) - self.slack_ms, max(times) + self.slack_ms)
        for user, movies, served_ms, version, slot in served:
            rows[(user, movies)].append((served_ms, version, slot))
        out = []
        for rec, t in zip(recs, times, strict=True):
            candidates = rows.get((rec.user_id, ",".join(rec.movies)), [])
            best = min(candidates, key=lambda c: abs(c[0] - t), default=None)
            if best is not None and abs(best[0] - t) <= self.slack_ms:
                out.append((best[1], best[2]))
            else:
                out.append(("unattributed", rec.server))
        return out


def read_events(lines: Iterable[str]) -> Iterator[RecommendationEvent | WatchEvent | RateEvent]:
    """Parsed events; malformed lines are skipped (ingestion counts them, not this report)."""
    for line in lines:
        try:
            yield parse_line(line)
        except MalformedLine:
            continue


def evaluate_lists(
    events: Iterable[RecommendationEvent | WatchEvent | RateEvent],
    runtimes: dict[str, float] | None = None,
    window_s: float = WINDOW_S,
    settle_s: float = SETTLE_S,
    now: float | None = None,
) -> tuple[list[RecommendationEvent], list[ListOutcome]]:
    """Join every settled list with the same user's later viewings; one outcome per list."""
    recs: list[RecommendationEvent] = []
    viewings: dict[int, dict[str, Viewing]] = defaultdict(dict)
    newest = -math.inf
    for event in events:
        ts = _ts(event.time)
        newest = max(newest, ts)
        if isinstance(event, RecommendationEvent):
            if event.status == 200 and event.movies:
                recs.append(event)
        elif isinstance(event, WatchEvent):
            v = viewings[event.user_id].setdefault(event.movie_id, Viewing(start=ts))
            v.start = min(v.start, ts)
            v.minutes.add(event.minute)
        elif isinstance(event, RateEvent):
            v = viewings[event.user_id].setdefault(event.movie_id, Viewing(start=ts))
            if ts >= v.rated_at:  # the latest rating wins, as in the cleaned tables
                v.rating, v.rated_at = event.rating, ts
    runtimes = runtimes or {}
    reference = newest if now is None else min(newest, now)
    recs = [r for r in recs if _ts(r.time) <= reference - settle_s]
    outcomes = []
    for rec in recs:
        t = _ts(rec.time)
        positions = {m: i for i, m in enumerate(rec.movies)}
        best, hit, rated = 0.0, False, []
        for movie, v in viewings.get(rec.user_id, {}).items():
            if not v.minutes or not (t <= v.start <= t + window_s):  # a rating alone is not a viewing
                continue
            pos = positions.get(movie)
            runtime = runtimes.get(movie) or max(DEFAULT_RUNTIME_MIN, len(v.minutes))
            share = min(1.0, len(v.minutes) / runtime)
            best = max(best, movie_score(pos, share, v.rating))
            if pos is not None:
                hit = True
                if v.rating is not None:
                    rated.append(v.rating)
        outcomes.append(ListOutcome(best, hit, rated))
    return recs, outcomes


def summarise(groups: list[tuple[str, str]], outcomes: list[ListOutcome]) -> dict[tuple[str, str], dict]:
    """Per (version, slot): lists, mean score, hit rate, average rating of watched recommended movies."""
    acc: dict[tuple[str, str], list[ListOutcome]] = defaultdict(list)
    for group, outcome in zip(groups, outcomes, strict=True):
        acc[group].append(outcome)
    out = {}
    for group, items in sorted(acc.items()):
        ratings = [r for o in items for r in o.ratings]
        out[group] = {
            "lists": len(items),
            "score": sum(o.score for o in items) / len(items),
            "hit_rate": sum(o.hit for o in items) / len(items),
            "avg_rating": sum(ratings) / len(ratings) if ratings else float("nan"),
            "rated": len(ratings),
        }
    return out


def report(lines: Iterable[str], attributor: Attributor, runtimes: dict[str, float] | None = None,
           window_s: float = WINDOW_S, settle_s: float = SETTLE_S,
           now: float | None = None) -> dict[tuple[str, str], dict]:
    """Per (version, slot) figures of the settled lists (`now`: the clock, for a live log)."""
    recs, outcomes = evaluate_lists(read_events(lines), runtimes, window_s, settle_s, now)
    return summarise(attributor.attribute(recs), outcomes)


def format_table(summary: dict[tuple[str, str], dict]) -> str:
    head = f"{'version':<12}{'slot':<14}{'lists':>8}{'score':>9}{'hit rate':>10}{'avg rating':>12}"
    rows = [head, "-" * len(head)]
    for (version, slot), m in summary.items():
        rows.append(f"{version:<12}{slot:<14}{m['lists']:>8}{m['score']:>9.3f}{m['hit_rate']:>10.3f}"
                    f"{m['avg_rating']:>12.2f}")
    return "\n".join(rows)


def load_runtimes(data_dir: Path) -> dict[str, float]:
    path = Path(data_dir) / "movies.csv"
    if not path.exists():
        return {}
    import pandas as pd

    movies = pd.read_csv(path, usecols=["movie_id", "runtime"], dtype={"movie_id": str})
    return {m: float(r) for m, r in zip(movies.movie_id, movies.runtime, strict=True) if r == r and r > 0}


def _ts(when: datetime) -> float:
    return when.timestamp()


# ---------------------------------------------------------------------- CLI (`report online`)
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", type=Path, required=True, help="event log file to evaluate")
    parser.add_argument("--data-dir", type=Path, default=None, help="movies table for runtimes (default data/)")
    parser.add_argument("--no-provenance", action="store_true", help="group by server field, not by version")
    parser.add_argument("--window", type=duration_arg, default=WINDOW_S,
                        help="how long after a list a watch counts (30m, 1800, ...)")
    parser.add_argument("--settle", type=duration_arg, default=SETTLE_S,
                        help="seconds the log must move past a list before it is evaluated")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--serve", type=int, default=None, metavar="PORT",
                        help="keep running: expose gauges on this port for Prometheus, refreshed every --every s")
    parser.add_argument("--every", type=duration_arg, default=30.0, help="refresh period with --serve (30s, 1m, ...)")
    parser.add_argument("--tail-mb", type=float, default=64.0,
                        help="evaluate only the last this-many MB of the log (a live log keeps growing)")
    parser.add_argument("--textfiles", type=Path, default=None,
                        help="with --serve, also expose the *.prom gauge files of this folder, re-read at each "
                             "scrape (default <run>/metrics: the pipeline's drift gauges)")


def _compute(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    attributor: Attributor = ServerAttributor() if args.no_provenance else ProvenanceAttributor(MySQL.from_env())
    runtimes = load_runtimes(args.data_dir or Paths.from_env().data_dir)
    with open_tail(args.log, args.tail_mb) as fh:
        try:
            return report(fh, attributor, runtimes, args.window, args.settle, now=time.time())
        except Exception as exc:  # MySQL unreachable: say so, fall back to the server field
            if isinstance(attributor, ServerAttributor):
                raise
            log.warning("provenance unreachable; grouping by server", extra=kv(error=exc))
    with open_tail(args.log, args.tail_mb) as fh:
        return report(fh, ServerAttributor(), runtimes, args.window, args.settle, now=time.time())


def _log_refresh(summary: dict[tuple[str, str], dict]) -> None:
    """One line per evaluation: how many lists, and how many the provenance join could not place."""
    lists = sum(m["lists"] for m in summary.values())
    unplaced = sum(m["lists"] for (version, _), m in summary.items() if version in ("unattributed", "unknown"))
    log.info("online evaluation refreshed", extra=kv(
        lists=lists, attributed=lists - unplaced, unattributed=unplaced,
        groups=";".join(f"{v}/{s}={m['lists']}" for (v, s), m in summary.items())))


def open_tail(path: Path, megabytes: float):
    """The log from `megabytes` before its end, starting at a whole line."""
    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (returned as a context manager)
    size = path.stat().st_size
    start = max(0, size - int(megabytes * 1024 * 1024))
    if start:
        fh.seek(start)
        fh.readline()
    return fh


class TextfileCollector:
    """Exposes the gauges of every `*.prom` file in a folder, re-read at each scrape.

    The pipeline is a short-lived job: it writes its gauges (drift) to a text file, and this long-running
    exporter, which Prometheus already scrapes, serves them (node-exporter's textfile idea, without a second
    exporter). A file that does not parse is skipped and logged, never fatal to the scrape.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[object]:
        from prometheus_client.parser import text_string_to_metric_families

        for path in sorted(self.folder.glob("*.prom")) if self.folder.is_dir() else []:
            try:
                families = list(text_string_to_metric_families(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                log.warning("gauge file skipped", extra=kv(file=path, error=str(exc)))
                continue
            yield from families


def main(args: argparse.Namespace) -> int:
    if not args.log.exists():
        print(f"report online: no log at {args.log}", file=sys.stderr)
        return 2
    summary = _compute(args)
    _log_refresh(summary)
    if args.serve is None:
        if args.json:
            print(json.dumps({f"{v}/{s}": m for (v, s), m in summary.items()}, indent=2))
        else:
            print(format_table(summary))
        return 0
    from prometheus_client import Gauge, start_http_server

    gauges = {
        "score": Gauge("online_eval_score", "mean reference score of served lists", ["version", "slot"]),
        "hit_rate": Gauge("online_eval_hit_rate", "share of lists followed by a watch", ["version", "slot"]),
        "avg_rating": Gauge("online_eval_avg_rating", "mean rating of watched recommended movies",
                            ["version", "slot"]),
        "lists": Gauge("online_eval_lists", "served lists evaluated", ["version", "slot"]),
    }
    from prometheus_client import REGISTRY

    REGISTRY.register(TextfileCollector(args.textfiles or Paths.from_env().run_dir / "metrics"))
    start_http_server(args.serve, addr="127.0.0.1")
    log.info("serving online evaluation gauges", extra=kv(port=args.serve, every_s=args.every))
    while True:
        for gauge in gauges.values():
            gauge.clear()  # a (version, slot) no longer in the log window leaves no stale series
        for (version, slot), m in summary.items():
            for name, gauge in gauges.items():
                gauge.labels(version=version, slot=slot).set(m[name])
        time.sleep(args.every)
        try:
            summary = _compute(args)
            _log_refresh(summary)
        except Exception:  # a rotated log, a bad line of code: keep the last figures and try again
            log.exception("online evaluation refresh failed; keeping the last figures")

