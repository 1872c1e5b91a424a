"""`python -m auto_deployment prepare`: the event store → the cleaned tables of `data/` (design section 4).

- ratings: the latest rating per (user, movie), by event time; at equal times the higher rating wins,
  so the result does not depend on the order of files or lines. ``timestamp`` is epoch seconds.
- watches: per (user, movie), the number of *distinct* minutes watched (a minute seen again, in the
  same batch or in a re-delivered one, counts once), with ``first_seen``/``last_seen`` in epoch seconds.
- users and movies come from the catalogue (world generator, MovieLens importer) and are kept as is.

The tables are a pure function of the event store and of the tables already in `data/`: events are
re-aggregated from the whole store, then merged with what is there (newer rating wins, at an equal
second the one from the events; watches keep the larger count and the wider seen-interval). So a
second run over the same events writes the same bytes, and an event delivered twice changes nothing.

Memory is bounded by the number of distinct (user, movie) pairs, never by the number of lines: event
files are read in chunks and folded into per-pair numpy arrays as they come. Minutes are kept as bit
sets (32 minutes per int64 word), so a pair costs a few words, not one entry per minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.contracts.tables import (
    RATINGS,
    WATCHES,
    Tables,
    data_checksum,
    load_tables,
    save_tables,
    write_rejected_counts,
)
from app.logs import kv
from app.settings import Paths
from auto_deployment.data.ingest import STORE_FILES, committed_files, read_manifests

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 100_000
_WORD_BITS = 32  # minutes per bit-set word; int64 words keep every operation in signed numpy ints
_US_PER_S = 1_000_000


@dataclass
class PrepareReport:
    """What prepare produced; the pipeline's data checks read these numbers."""

    data_dir: str
    events_dir: str
    batches: int = 0
    lines: int = 0
    events: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    ratings: int = 0
    watches: int = 0
    ratings_from_events: int = 0
    watches_from_events: int = 0
    new_ratings: int = 0
    changed_ratings: int = 0
    new_watches: int = 0
    ratings_unknown_users: int = 0
    ratings_unknown_movies: int = 0
    checksum: str = ""
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def rejected_ratio(self) -> float:
        return self.rejected_total / self.lines if self.lines else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rejected_total"] = self.rejected_total
        out["rejected_ratio"] = round(self.rejected_ratio, 6)
        out["seconds"] = round(self.seconds, 3)
        return out


# --- reading the store -----------------------------------------------------------------------------


def _chunks(events_dir: Path, kind: str, value: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """(time, user_id, movie_id, <value>) chunks of every committed file of one kind."""
    columns = ["time", "user_id", "movie_id", value]
    assert tuple(columns) == STORE_FILES[kind][1], "event store columns changed"
    for name, stream in committed_files(events_dir, kind):
        with stream:
            reader = pd.read_csv(
                stream, usecols=columns, chunksize=chunk_rows, encoding="utf-8",
                dtype={"time": "str", "user_id": "int64", "movie_id": "str", value: "int64"},
                keep_default_na=False, na_filter=False,
            )
            rows = 0
            for chunk in reader:
                rows += len(chunk)
                yield chunk
            log.debug("read event file", extra=kv(file=name, rows=rows))


def _epoch_us(times: pd.Series) -> np.ndarray:
    return pd.to_datetime(times, format="ISO8601", utc=True).dt.as_unit("us").astype("int64").to_numpy()


class _MovieCodes:
    """Movie id ↔ dense int code, so that per-pair state is plain int64 arrays."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}

    def encode(self, movies: pd.Series) -> np.ndarray:
        codes, uniques = pd.factorize(movies)
        known = self._codes
        mapping = np.fromiter((known.setdefault(m, len(known)) for m in uniques), dtype=np.int64,
                              count=len(uniques))
        return mapping[codes]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        names = np.array(list(self._codes), dtype=object)
        return names[codes] if len(codes) else np.array([], dtype=object)


def _group_starts(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort order by ``keys`` (first key most significant) and the start index of each key group."""
    order = np.lexsort(keys[::-1])
    n = len(order)
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for key in keys:
            sorted_key = key[order]
            change[1:] |= sorted_key[1:] != sorted_key[:-1]
    return order, np.flatnonzero(change)


class _LatestRatings:
    """Per (user, movie): the rating with the greatest (time, rating)."""

    def __init__(self) -> None:
        self.user = np.empty(0, np.int64)
        self.movie = np.empty(0, np.int64)
        self.time = np.empty(0, np.int64)
        self.rating = np.empty(0, np.int64)

    def add(self, user: np.ndarray, movie: np.ndarray, when: np.ndarray, rating: np.ndarray) -> None:
        user = np.concatenate([self.user, user])
        movie = np.concatenate([self.movie, movie])
        when = np.concatenate([self.time, when])
        rating = np.concatenate([self.rating, rating])
        order = np.lexsort((rating, when, movie, user))
        user, movie = user[order], movie[order]
        last = np.ones(len(order), dtype=bool)  # last row of each (user, movie) run in sorted order
        last[:-1] = (user[1:] != user[:-1]) | (movie[1:] != movie[:-1])
        self.user, self.movie = user[last], movie[last]
        self.time, self.rating = when[order][last], rating[order][last]


class _DistinctMinutes:
    """Per (user, movie, word of 32 minutes): the set of minutes seen, first and last time seen."""

    def __init__(self) -> None:
        self.user = np.empty(0, np.int64)
        self.movie = np.empty(0, np.int64)
        self.word = np.empty(0, np.int64)
        self.bits = np.empty(0, np.int64)
        self.first = np.empty(0, np.int64)
        self.last = np.empty(0, np.int64)

    def add(self, user: np.ndarray, movie: np.ndarray, when: np.ndarray, minute: np.ndarray) -> None:
        user = np.concatenate([self.user, user])
        movie = np.concatenate([self.movie, movie])
        word = np.concatenate([self.word, minute // _WORD_BITS])
        bits = np.concatenate([self.bits, np.left_shift(np.int64(1), minute % _WORD_BITS)])
        first = np.concatenate([self.first, when])
        last = np.concatenate([self.last, when])
        order, starts = _group_starts(user, movie, word)
        self.user, self.movie, self.word = user[order][starts], movie[order][starts], word[order][starts]
        # OR over a group is the union of its minutes: duplicates of a minute fold into one bit.
        self.bits = np.bitwise_or.reduceat(bits[order], starts) if len(starts) else bits[:0]
        self.first = np.minimum.reduceat(first[order], starts) if len(starts) else first[:0]
        self.last = np.maximum.reduceat(last[order], starts) if len(starts) else last[:0]

    def per_pair(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user, movie, distinct minutes, first seen µs, last seen µs) per pair."""
        _, starts = _group_starts(self.user, self.movie)  # already sorted: order is the identity
        if not len(starts):
            empty = np.empty(0, np.int64)
            return empty, empty, empty, empty, empty
        minutes = np.add.reduceat(np.bitwise_count(self.bits).astype(np.int64), starts)
        return (self.user[starts], self.movie[starts], minutes,
                np.minimum.reduceat(self.first, starts), np.maximum.reduceat(self.last, starts))


def aggregate_events(events_dir: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                     total: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The event store's ratings and watches tables (columns of data.RATINGS / data.WATCHES).

    `total` (rate + watch events, from the manifests) sizes the progress bar shown on a terminal.
    """
    from tqdm import tqdm

    codes = _MovieCodes()
    latest = _LatestRatings()
    with tqdm(total=total, desc="prepare", unit="event", unit_scale=True, disable=None, leave=False) as bar:
        for chunk in _chunks(events_dir, "rate", "rating", chunk_rows):
            latest.add(chunk["user_id"].to_numpy(np.int64), codes.encode(chunk["movie_id"]),
                       _epoch_us(chunk["time"]), chunk["rating"].to_numpy(np.int64))
            bar.update(len(chunk))
        minutes = _DistinctMinutes()
        for chunk in _chunks(events_dir, "watch", "minute", chunk_rows):
            minutes.add(chunk["user_id"].to_numpy(np.int64), codes.encode(chunk["movie_id"]),
                        _epoch_us(chunk["time"]), chunk["minute"].to_numpy(np.int64))
            bar.update(len(chunk))
    ratings = pd.DataFrame({
        "user_id": latest.user, "movie_id": pd.Series(codes.decode(latest.movie), dtype="str"),
        "rating": latest.rating.astype("float64"), "timestamp": latest.time // _US_PER_S,
    }, columns=RATINGS)
    user, movie, count, first, last = minutes.per_pair()
    watches = pd.DataFrame({
        "user_id": user, "movie_id": pd.Series(codes.decode(movie), dtype="str"), "minutes": count,
        "first_seen": first // _US_PER_S, "last_seen": last // _US_PER_S,
    }, columns=WATCHES)
    return ratings, watches


# --- merging with data/ ----------------------------------------------------------------------------


def merge_ratings(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Newer rating wins, at an equal second the event's; returns (table, new keys, changed keys)."""
    old = old[RATINGS].astype({"user_id": "int64", "movie_id": "str", "rating": "float64", "timestamp": "int64"})
    new = new[RATINGS].astype(old.dtypes.to_dict())
    both = pd.concat([old.assign(_from_events=0), new.assign(_from_events=1)], ignore_index=True)
    both = both.sort_values(["user_id", "movie_id", "timestamp", "_from_events"], kind="mergesort")
    merged = both.drop_duplicates(["user_id", "movie_id"], keep="last")
    taken = merged[merged["_from_events"] == 1]
    compared = taken.merge(old, on=["user_id", "movie_id"], how="left", suffixes=("", "_old"))
    was_new = compared["rating_old"].isna()
    changed = ~was_new & ((compared["rating"] != compared["rating_old"])
                          | (compared["timestamp"] != compared["timestamp_old"]))
    table = merged[RATINGS].reset_index(drop=True)
    return table, int(was_new.sum()), int(changed.sum())


def merge_watches(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Per pair: the larger minute count, the earliest first_seen, the latest last_seen.

    Taking the maximum (not the sum) keeps prepare idempotent: the events are re-counted whole each
    run, so their count already includes what an earlier run over the same events wrote.
    """
    old = old[WATCHES]
    both = pd.concat([old, new[WATCHES]], ignore_index=True)
    for column in ("minutes", "first_seen", "last_seen"):
        both[column] = pd.to_numeric(both[column], errors="coerce")
    both = both.astype({"user_id": "int64", "movie_id": "str"})
    table = both.groupby(["user_id", "movie_id"], sort=True, as_index=False).agg(
        minutes=("minutes", "max"), first_seen=("first_seen", "min"), last_seen=("last_seen", "max"),
    )
    table["minutes"] = table["minutes"].fillna(0).round().astype("int64")
    for column in ("first_seen", "last_seen"):  # epoch seconds must never be written as floats
        table[column] = table[column].round().astype("Int64")
    old_keys = pd.MultiIndex.from_frame(old[["user_id", "movie_id"]].astype({"user_id": "int64", "movie_id": "str"}))
    new_keys = pd.MultiIndex.from_frame(new[["user_id", "movie_id"]])
    return table[WATCHES], int((~new_keys.isin(old_keys)).sum())


def prepare(events_dir: Path, data_dir: Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> PrepareReport:
    """Aggregate the event store, merge it into the tables of ``data_dir``, write them back."""
    started = time.monotonic()
    events_dir, data_dir = Path(events_dir), Path(data_dir)
    report = PrepareReport(data_dir=str(data_dir), events_dir=str(events_dir))
    if not events_dir.is_dir():
        log.warning("no event store: tables are rewritten unchanged", extra=kv(events_dir=events_dir))
    manifests = read_manifests(events_dir) if events_dir.is_dir() else []
    events: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for manifest in manifests:
        report.lines += int(manifest.get("lines", 0))
        events.update({k: int(v) for k, v in manifest.get("events", {}).items()})
        rejected.update({k: int(v) for k, v in manifest.get("rejected", {}).items()})
    report.batches = len(manifests)
    report.events = dict(sorted(events.items()))
    report.rejected = dict(sorted(rejected.items()))

    new_ratings, new_watches = (aggregate_events(events_dir, chunk_rows, events.get("rate", 0) + events.get("watch", 0))
                                if manifests
                                else (pd.DataFrame(columns=RATINGS), pd.DataFrame(columns=WATCHES)))
    tables = load_tables(data_dir)
    ratings, report.new_ratings, report.changed_ratings = merge_ratings(tables.ratings, new_ratings)
    watches, report.new_watches = merge_watches(tables.watches, new_watches)
    save_tables(Tables(ratings=ratings, watches=watches, users=tables.users, movies=tables.movies), data_dir)
    write_rejected_counts(report.rejected, data_dir)

    report.ratings, report.watches = len(ratings), len(watches)
    report.ratings_from_events, report.watches_from_events = len(new_ratings), len(new_watches)
    if len(tables.users):
        report.ratings_unknown_users = int((~ratings["user_id"].isin(tables.users["user_id"])).sum())
    if len(tables.movies):
        report.ratings_unknown_movies = int((~ratings["movie_id"].isin(tables.movies["movie_id"])).sum())
    report.checksum = data_checksum(data_dir)
    report.seconds = time.monotonic() - started
    log.info("prepare finished", extra=kv(
        batches=report.batches, lines=report.lines, ratings=report.ratings, watches=report.watches,
        new_ratings=report.new_ratings, changed_ratings=report.changed_ratings, new_watches=report.new_watches,
        rejected=report.rejected_total, seconds=round(report.seconds, 2), checksum=report.checksum[:12],
    ))
    return report


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events-dir", type=Path, default=None,
                        help="event store written by ingest (default <data dir>/events)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="cleaned tables to merge into (default MOVIEREC_DATA_DIR)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows of an event file read at a time (bounds memory)")


def main(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Paths.from_env().data_dir
    events_dir = args.events_dir or Path(data_dir) / "events"
    report = prepare(events_dir, data_dir, chunk_rows=max(1, args.chunk_rows))
    json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
