"""ingest (log → event store) and prepare (event store → cleaned tables), on real files and processes."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from app.clock import parse_duration
from app.contracts.events import RateEvent, WatchEvent, format_line
from app.contracts.tables import MODEL_TABLES, RATINGS, USERS, WATCHES, Tables, load_tables, save_tables
from auto_deployment.data.ingest import (
    FileSource,
    LineSource,
    SourceError,
    StdinSource,
    ingest,
    make_source,
    read_manifests,
)
from auto_deployment.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def watch(seconds: float, user: int, movie: str, minute: int) -> str:
    return format_line(WatchEvent(at(seconds), user, movie, minute))


def rate(seconds: float, user: int, movie: str, rating: int) -> str:
    return format_line(RateEvent(at(seconds), user, movie, rating))


def epoch(seconds: float) -> int:
    return int(at(seconds).timestamp() // 1)


def write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def ingest_lines(lines: list[str], events_dir: Path, tmp_path: Path, chunk_lines: int = 3):
    log = write_log(tmp_path / f"log-{len(list(tmp_path.iterdir()))}.txt", lines)
    return ingest(FileSource(log, chunk_lines=chunk_lines), events_dir)


def run_cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "auto_deployment", *args], input=stdin, capture_output=True,
                          env=full_env, cwd=ROOT, timeout=300, check=False)


MIXED = [
    watch(0, 1, "walle+2008", 0),
    watch(60, 1, "walle+2008", 1),
    rate(120, 1, "walle+2008", 5),
    "2024-03-01T12:03:00,2,recommendation request h:8082, status 200, result: walle+2008, say+\"cheese\"+1999, 42 ms",
    "2024-03-01T12:03:01,2,recommendation request h:8082, status 0, result: "
    "java.util.concurrent.TimeoutException: Request timed out after 800 ms, 815 ms",
    watch(180, 2, 'say+"cheese"+1999', 7),
    "garbage here",
    "2024-03-01T12:04:00,3,GET /rate/walle+2008=9",
    "2024-03-01T12:04:00,abc,GET /rate/walle+2008=3",
    "",
]


# --- ingest ----------------------------------------------------------------------------------------


def test_ingest_file_writes_events_per_kind_and_rejected_lines_with_reason(tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    report = ingest_lines(MIXED, events_dir, tmp_path)

    assert report.complete
    assert report.lines == len(MIXED)
    assert report.events == {"rate": 1, "recommendation": 2, "watch": 3}
    assert report.rejected == {"bad_user": 1, "empty": 1, "garbage": 1, "rating_out_of_range": 1}
    batch = report.batch_id
    watches = pd.read_csv(events_dir / f"watches-{batch}.csv", dtype={"movie_id": "str"})
    assert list(watches["movie_id"]) == ["walle+2008", "walle+2008", 'say+"cheese"+1999']
    assert list(watches["minute"]) == [0, 1, 7]
    assert pd.to_datetime(watches["time"], format="ISO8601").iloc[1] == at(60)
    recos = pd.read_csv(events_dir / f"recommendations-{batch}.csv", keep_default_na=False)
    assert recos["movies"].iloc[0].split(",") == ["walle+2008", 'say+"cheese"+1999']
    assert recos["error"].iloc[1].startswith("java.util.concurrent.TimeoutException")
    with (events_dir / f"rejected-{batch}.csv").open(newline="", encoding="utf-8") as fh:
        rejected = list(csv.DictReader(fh))
    assert [(r["reason"], r["line"]) for r in rejected] == [
        ("garbage", "garbage here"),
        ("rating_out_of_range", MIXED[7]),
        ("bad_user", MIXED[8]),
        ("empty", ""),
    ]


def test_manifest_marks_the_batch_complete_with_committed_lengths_of_every_file(tmp_path: Path) -> None:
    report = ingest_lines(MIXED, tmp_path / "events", tmp_path)
    [manifest] = read_manifests(tmp_path / "events")
    assert manifest["state"] == "complete"
    assert manifest["batch"] == report.batch_id
    assert manifest["lines"] == len(MIXED)
    assert sorted(manifest["files"]) == report.files
    for name, info in manifest["files"].items():
        assert (tmp_path / "events" / name).stat().st_size == info["bytes"]


class RecordingSource:
    """A real LineSource that, at each commit, records what the event store holds on disk."""

    name = "recording"

    def __init__(self, chunks: list[list[str]], events_dir: Path, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.events_dir = events_dir
        self.fail_after = fail_after
        self.at_commit: list[tuple[int, int]] = []  # (lines in manifest, watch rows on disk)
        self.closed = False

    def batches(self) -> Iterator[list[str]]:
        for number, chunk in enumerate(self.chunks):
            if self.fail_after is not None and number == self.fail_after:
                raise ConnectionError("broker went away")
            yield chunk

    def commit(self) -> None:
        [manifest] = read_manifests(self.events_dir)
        rows = 0
        for name in manifest["files"]:
            if name.startswith("watches-"):
                rows = len(pd.read_csv(self.events_dir / name))
        self.at_commit.append((manifest["lines"], rows))

    def close(self) -> None:
        self.closed = True


def test_source_is_committed_only_after_its_lines_are_on_disk(tmp_path: Path) -> None:
    chunks = [[watch(i * 10 + j, 1, "m", i * 10 + j) for j in range(n)] for i, n in enumerate([3, 1, 4])]
    source = RecordingSource(chunks, tmp_path / "events")
    assert isinstance(source, LineSource)
    ingest(source, tmp_path / "events")
    assert source.at_commit == [(3, 3), (4, 4), (8, 8)]
    assert source.closed


def test_failed_source_leaves_an_open_batch_whose_committed_part_prepare_uses(tmp_path: Path) -> None:
    chunks = [[rate(1, 1, "a", 4)], [rate(2, 2, "b", 3)], [rate(3, 3, "c", 1)]]
    source = RecordingSource(chunks, tmp_path / "events", fail_after=2)
    with pytest.raises(ConnectionError):
        ingest(source, tmp_path / "events")
    assert source.closed
    [manifest] = read_manifests(tmp_path / "events")
    assert manifest["state"] == "open"
    assert manifest["lines"] == 2
    prepare(tmp_path / "events", tmp_path / "data")
    assert sorted(load_tables(tmp_path / "data").ratings["movie_id"]) == ["a", "b"]


def test_prepare_ignores_a_torn_tail_past_the_committed_length(tmp_path: Path) -> None:
    report = ingest_lines([rate(1, 1, "a", 4), watch(2, 1, "a", 0)], tmp_path / "events", tmp_path)
    # What a crash between two checkpoints leaves: bytes on disk the manifest does not cover.
    with (tmp_path / "events" / f"ratings-{report.batch_id}.csv").open("a") as fh:
        fh.write("2024-03-01T13:00:00+00:00,9,zzz,5\n2024-03-01T13:0")
    with (tmp_path / "events" / f"watches-{report.batch_id}.csv").open("a") as fh:
        fh.write("2024-03-01T13:00:00+00:00,9,zzz,1")
    prepare(tmp_path / "events", tmp_path / "data")
    tables = load_tables(tmp_path / "data")
    assert list(tables.ratings["movie_id"]) == ["a"]
    assert list(tables.watches["movie_id"]) == ["a"]


def test_model_tables_leave_the_watches_unread_but_shaped(tmp_path: Path) -> None:
    """Training and evaluation read ratings, users and movies only: the watches (the largest table) stay on disk."""
    ingest_lines([rate(1, 1, "a", 4), watch(2, 1, "b", 0)], tmp_path / "events", tmp_path)
    prepare(tmp_path / "events", tmp_path / "data")
    assert list(load_tables(tmp_path / "data").watches["movie_id"]) == ["b"]
    tables = load_tables(tmp_path / "data", MODEL_TABLES)
    assert list(tables.ratings["movie_id"]) == ["a"]
    assert tables.watches.empty and list(tables.watches.columns) == WATCHES
    with pytest.raises(ValueError, match="no such table"):
        load_tables(tmp_path / "data", ("rating",))  # a typo must not read as an empty table


def test_undecodable_bytes_nul_and_overlong_lines_are_rejected_without_stopping(tmp_path: Path) -> None:
    log = tmp_path / "dirty.log"
    log.write_bytes(
        b"\xff\xfe\x00garbage\n"
        + b"x" * 200_000 + b"\n"
        + rate(1, 1, "a", 4).encode() + b"\n"
        + b"2024-03-01T12:00:00,1,GET /rate/caf\xe9=3\n"
        + watch(2, 1, "a", 3).encode()  # last line without a newline
    )
    report = ingest(FileSource(log, chunk_lines=2), tmp_path / "events")
    assert report.lines == 5
    assert report.events == {"rate": 1, "watch": 1}
    assert report.rejected == {"bad_movie": 1, "garbage": 2}  # bad_movie: an undecodable byte in the id
    with (tmp_path / "events" / f"rejected-{report.batch_id}.csv").open(newline="", encoding="utf-8") as fh:
        lines = [row["line"] for row in csv.DictReader(fh)]
    assert len(lines[1]) < 100_000  # the overlong line was cut, not held whole


class ListSource:
    """A LineSource over lists in memory, as a Kafka consumer decoding with surrogateescape would yield."""

    name = "list"

    def __init__(self, chunks: list[list[str]]) -> None:
        self.chunks = chunks

    def batches(self) -> Iterator[list[str]]:
        yield from self.chunks

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_lone_surrogates_from_a_source_are_stored_not_fatal(tmp_path: Path) -> None:
    bad_bytes = b"caf\xe9".decode("utf-8", "surrogateescape")
    timeout = f"2024-03-01T12:00:00,1,recommendation request h, status 0, result: {bad_bytes} broke, 800 ms"
    report = ingest(ListSource([[f"2024-03-01T12:00:00,1,GET /rate/{bad_bytes}=3", timeout]]), tmp_path)
    assert report.complete
    assert report.rejected == {"bad_movie": 1}
    assert report.events == {"recommendation": 1}
    recos = pd.read_csv(tmp_path / f"recommendations-{report.batch_id}.csv")
    assert recos["error"].iloc[0] == "caf\\udce9 broke"


def test_ingest_cli_reads_stdin_and_prints_its_report(tmp_path: Path) -> None:
    data = "".join(line + "\n" for line in MIXED).encode()
    result = run_cli("ingest", "--source", "-", "--events-dir", str(tmp_path / "events"), stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["lines"] == len(MIXED)
    assert report["events"] == {"rate": 1, "recommendation": 2, "watch": 3}
    assert report["rejected"]["garbage"] == 1
    assert b"ingest finished" in result.stderr
    assert len(read_manifests(tmp_path / "events")) == 1


def test_ingest_cli_reads_a_file_into_the_data_dir_event_store_by_default(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.log", MIXED)
    env = {"MOVIEREC_DATA_DIR": str(tmp_path / "data")}
    result = run_cli("ingest", "--source", f"file:{log}", "--chunk-lines", "2", "--progress-every", "2", env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["events_dir"] == str(tmp_path / "data" / "events")
    assert result.stderr.count(b"ingest progress") >= 2
    result = run_cli("prepare", env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["ratings"] == 1
    assert (tmp_path / "data" / "ratings.csv").exists()


def test_ingest_cli_reports_a_missing_file_clearly(tmp_path: Path) -> None:
    result = run_cli("ingest", "--source", f"file:{tmp_path / 'nope.log'}", "--events-dir", str(tmp_path))
    assert result.returncode == 2
    assert b"cannot read" in result.stderr


def test_kafka_source_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "auto_deployment.data.kafka_source", None)  # as if the module were absent
    with pytest.raises(SourceError, match="kafka"):
        make_source("kafka", topic="movielog", duration_s=1.0)


def test_make_source_understands_stdin_files_and_rejects_unknown_specs(tmp_path: Path) -> None:
    log = write_log(tmp_path / "a.log", [watch(0, 1, "m", 0)])
    assert isinstance(make_source("-"), StdinSource)
    assert isinstance(make_source("stdin"), StdinSource)
    for spec in (f"file:{log}", str(log)):
        source = make_source(spec)
        assert isinstance(source, FileSource)
        assert [line.strip() for chunk in source.batches() for line in chunk] == [watch(0, 1, "m", 0)]
        source.close()
    with pytest.raises(SourceError):
        make_source("ftp://somewhere")


@pytest.mark.parametrize(("text", "seconds"), [
    ("15m", 900.0), ("30s", 30.0), ("2d", 172800.0), ("6h", 21600.0), ("500ms", 0.5), ("1.5h", 5400.0),
    ("45", 45.0), (" 10 m ", 600.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15 minutes", "-5s", "1y", "5m30s"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- prepare ---------------------------------------------------------------------------------------


def test_latest_rating_wins_whatever_the_order_of_lines(tmp_path: Path) -> None:
    lines = [rate(300, 1, "a", 2), rate(100, 1, "a", 5), rate(200, 1, "a", 4), rate(50, 2, "a", 1)]
    ingest_lines(lines, tmp_path / "events", tmp_path)
    report = prepare(tmp_path / "events", tmp_path / "data")
    ratings = load_tables(tmp_path / "data").ratings.set_index("user_id")
    assert ratings.loc[1, "rating"] == 2
    assert ratings.loc[1, "timestamp"] == epoch(300)
    assert ratings.loc[2, "rating"] == 1
    assert report.ratings == report.new_ratings == 2


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_ratings_at_the_same_instant_are_resolved_the_same_way_in_any_order(tmp_path: Path, order) -> None:
    same = [rate(10.25, 1, "a", 3), rate(10.25, 1, "a", 4)]
    ingest_lines([same[i] for i in order], tmp_path / "events", tmp_path)
    prepare(tmp_path / "events", tmp_path / "data")
    assert list(load_tables(tmp_path / "data").ratings["rating"]) == [4]


def test_sub_second_order_decides_the_latest_rating(tmp_path: Path) -> None:
    ingest_lines([rate(10.9, 1, "a", 1), rate(10.1, 1, "a", 5)], tmp_path / "events", tmp_path)
    prepare(tmp_path / "events", tmp_path / "data")
    ratings = load_tables(tmp_path / "data").ratings
    assert list(ratings["rating"]) == [1]
    assert list(ratings["timestamp"]) == [epoch(10)]


def test_watches_count_distinct_minutes_and_ignore_duplicates(tmp_path: Path) -> None:
    lines = [watch(0, 1, "a", 0), watch(60, 1, "a", 1), watch(61, 1, "a", 1), watch(120, 1, "a", 2),
             watch(3000, 1, "a", 1), watch(5, 2, "a", 40), watch(5, 2, "a", 40), watch(7, 1, "b", 100)]
    ingest_lines(lines, tmp_path / "events", tmp_path)
    # The same minutes delivered again in a second batch (a re-delivered Kafka batch) count once too.
    ingest_lines(lines[:3], tmp_path / "events", tmp_path)
    prepare(tmp_path / "events", tmp_path / "data")
    watches = load_tables(tmp_path / "data").watches.set_index(["user_id", "movie_id"])
    assert watches.loc[(1, "a"), "minutes"] == 3
    assert watches.loc[(1, "a"), "first_seen"] == epoch(0)
    assert watches.loc[(1, "a"), "last_seen"] == epoch(3000)
    assert watches.loc[(2, "a"), "minutes"] == 1
    assert watches.loc[(1, "b"), "minutes"] == 1
    assert len(watches) == 3


def test_rejected_counts_are_written_beside_the_tables_for_the_whole_store(tmp_path: Path) -> None:
    ingest_lines(MIXED, tmp_path / "events", tmp_path)
    ingest_lines(["junk", f"{START.isoformat()},1,GET /rate/a=0"], tmp_path / "events", tmp_path)
    report = prepare(tmp_path / "events", tmp_path / "data")
    counts = json.loads((tmp_path / "data" / "rejected_counts.json").read_text())
    assert counts == {"bad_user": 1, "empty": 1, "garbage": 2, "rating_out_of_range": 2}
    assert report.rejected == counts
    assert report.lines == len(MIXED) + 2


def test_prepare_twice_over_the_same_events_writes_identical_bytes(tmp_path: Path) -> None:
    lines = MIXED + [rate(i, i % 7, f"m+{i % 5}", 1 + i % 5) for i in range(50)] + [
        watch(i * 1.5, i % 3, f"m+{i % 4}", i % 9) for i in range(80)]
    ingest_lines(lines, tmp_path / "events", tmp_path)
    first = prepare(tmp_path / "events", tmp_path / "data")
    snapshot = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir() if p.is_file()}
    second = prepare(tmp_path / "events", tmp_path / "data")
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir() if p.is_file()} == snapshot
    assert first.checksum == second.checksum
    assert (second.new_ratings, second.changed_ratings, second.new_watches) == (0, 0, 0)


def test_new_events_merge_into_existing_tables_newer_rating_wins(tmp_path: Path) -> None:
    ingest_lines([rate(100, 1, "a", 2), rate(100, 2, "a", 3), watch(0, 1, "a", 0)], tmp_path / "events", tmp_path)
    prepare(tmp_path / "events", tmp_path / "data")
    ingest_lines([rate(200, 1, "a", 5), rate(50, 2, "a", 1), rate(10, 3, "b", 4), watch(60, 1, "a", 1)],
                 tmp_path / "events", tmp_path)
    report = prepare(tmp_path / "events", tmp_path / "data")
    tables = load_tables(tmp_path / "data")
    ratings = tables.ratings.set_index(["user_id", "movie_id"])
    assert ratings.loc[(1, "a"), "rating"] == 5  # newer event replaces the older rating
    assert ratings.loc[(2, "a"), "rating"] == 3  # an older event does not
    assert ratings.loc[(3, "b"), "rating"] == 4
    assert (report.new_ratings, report.changed_ratings) == (1, 1)
    assert tables.watches.set_index(["user_id", "movie_id"]).loc[(1, "a"), "minutes"] == 2


def test_catalogue_tables_are_kept_and_old_ratings_merge_with_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    users = pd.DataFrame({"user_id": [1, 2], "age": [34, 51], "gender": ["F", "M"], "occupation": ["x", "y"]})
    movies = pd.DataFrame({"movie_id": ["a", "b"], "title": ["A", "B"], "year": [2001, 2002], "genres": ["g", "g"],
                           "adult": [False, False], "vote_average": [7.5, 6.0], "vote_count": [10, 20],
                           "popularity": [1.5, 2.5], "runtime": [90, 100]})
    old_ratings = pd.DataFrame({"user_id": [1, 2], "movie_id": ["a", "b"], "rating": [3.0, 4.0],
                                "timestamp": [epoch(-86400), epoch(10**6)]})
    save_tables(Tables(ratings=old_ratings[RATINGS], watches=Tables.empty().watches, users=users[USERS],
                       movies=movies), data)
    users_before, movies_before = (data / "users.csv").read_bytes(), (data / "movies.csv").read_bytes()

    ingest_lines([rate(0, 1, "a", 1), rate(0, 2, "b", 1), rate(0, 9, "zzz", 2)], tmp_path / "events", tmp_path)
    report = prepare(tmp_path / "events", data)

    assert (data / "users.csv").read_bytes() == users_before
    assert (data / "movies.csv").read_bytes() == movies_before
    ratings = load_tables(data).ratings.set_index(["user_id", "movie_id"])
    assert ratings.loc[(1, "a"), "rating"] == 1  # event newer than the catalogue's rating
    assert ratings.loc[(2, "b"), "rating"] == 4  # catalogue rating newer than the event
    assert (report.ratings_unknown_users, report.ratings_unknown_movies) == (1, 1)


def test_prepare_matches_a_naive_count_on_a_random_log_read_in_tiny_chunks(tmp_path: Path) -> None:
    rnd = random.Random(7)
    lines, truth_minutes, truth_seen, truth_rating = [], defaultdict(set), {}, {}
    for i in range(3000):
        user, movie, when = rnd.randrange(30), f"m+{rnd.randrange(12)}", rnd.randrange(0, 10**6) / 7
        if rnd.random() < 0.8:
            minute = rnd.choice([rnd.randrange(40), rnd.randrange(300)])
            lines.append(watch(when, user, movie, minute))
            truth_minutes[(user, movie)].add(minute)
            lo, hi = truth_seen.get((user, movie), (when, when))
            truth_seen[(user, movie)] = (min(lo, when), max(hi, when))
        else:
            value = rnd.randint(1, 5)
            lines.append(rate(when, user, movie, value))
            truth_rating[(user, movie)] = max(truth_rating.get((user, movie), (when, value)), (when, value))
        if i % 500 == 0:
            lines.append("noise")
    half = len(lines) // 2
    ingest_lines(lines[:half], tmp_path / "events", tmp_path, chunk_lines=97)
    ingest_lines(lines[half:], tmp_path / "events", tmp_path, chunk_lines=1000)
    prepare(tmp_path / "events", tmp_path / "data", chunk_rows=37)
    tables = load_tables(tmp_path / "data")
    got_watches = {(r.user_id, r.movie_id): (r.minutes, r.first_seen, r.last_seen)
                   for r in tables.watches.itertuples()}
    assert got_watches == {key: (len(mins), epoch(truth_seen[key][0]), epoch(truth_seen[key][1]))
                           for key, mins in truth_minutes.items()}
    got_ratings = {(r.user_id, r.movie_id): (r.rating, r.timestamp) for r in tables.ratings.itertuples()}
    assert got_ratings == {key: (value, epoch(when)) for key, (when, value) in truth_rating.items()}


def test_prepare_without_an_event_store_keeps_the_tables(tmp_path: Path) -> None:
    report = prepare(tmp_path / "no-events", tmp_path / "data")
    assert (report.batches, report.ratings, report.watches) == (0, 0, 0)
    assert json.loads((tmp_path / "data" / "rejected_counts.json").read_text()) == {}


# --- constant memory -------------------------------------------------------------------------------

_PEAK_RSS = """
import resource, runpy, sys
sys.argv = ["auto_deployment", *sys.argv[1:]]
try:
    runpy.run_module("auto_deployment", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _peak_rss_kb(*args: str) -> tuple[int, dict]:
    """Peak resident set size of `python -m auto_deployment <args>` in its own process, and its report."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *args],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    peak = int(result.stderr.decode().rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return peak, json.loads(result.stdout)


@pytest.mark.slow
def test_ingest_and_prepare_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    n = 1_000_000
    rnd = random.Random(3)
    movies = [f"the+movie+number+{i}+{1950 + i % 70}" for i in range(400)]
    big = tmp_path / "big.log"
    sample = []
    with big.open("w", encoding="utf-8") as fh:
        for i in range(n):
            stamp = f"2024-03-01T{i // 360000 % 24:02d}:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{i:09d}"
            user, movie = rnd.randrange(50), movies[i % 400]  # at most 20,000 (user, movie) pairs
            line = (f"{stamp},{user},GET /rate/{movie}={1 + i % 6}" if i % 20 == 0
                    else f"{stamp},{user},GET /data/m/{movie}/{i % 120}.mpg")
            if i < 1000:
                sample.append(line)
            fh.write(line + "\n")
    small = write_log(tmp_path / "small.log", sample[:20])
    held_kb = sum(sys.getsizeof(line) for line in sample) * (n // len(sample)) // 1024  # the lines alone, as str
    bound_kb = 50 * 1024
    assert held_kb > 2 * bound_kb, "the bound must be far below what holding the log would take"

    small_events, big_events = tmp_path / "events-small", tmp_path / "events-big"
    baseline_kb, _ = _peak_rss_kb("ingest", "--source", f"file:{small}", "--events-dir", str(small_events))
    peak_kb, report = _peak_rss_kb("ingest", "--source", f"file:{big}", "--events-dir", str(big_events))
    assert report["lines"] == n
    assert sum(report["events"].values()) + sum(report["rejected"].values()) == n
    assert peak_kb - baseline_kb < bound_kb, f"ingest peak {peak_kb} kB vs baseline {baseline_kb} kB"

    baseline_kb, _ = _peak_rss_kb("prepare", "--events-dir", str(small_events), "--data-dir", str(tmp_path / "d1"))
    peak_kb, report = _peak_rss_kb("prepare", "--events-dir", str(big_events), "--data-dir", str(tmp_path / "d2"))
    assert 0 < report["watches"] <= 20_000
    assert peak_kb - baseline_kb < bound_kb, f"prepare peak {peak_kb} kB vs baseline {baseline_kb} kB"
