"""The provenance writer against a real MariaDB: every row once, in order, through outages and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from app import store
from app.provenance import GAUGES, ROW_OUTCOMES, ProvenanceWriter
from app.settings import ROOT, MySQL
from tests.fixtures.mariadb import MariaDB, free_port, settings_env

pytestmark = pytest.mark.services


class Events:
    """Thread-safe tally of the writer's on_event calls: row outcomes, failures by kind, last gauge values."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, value: float) -> None:
        with self._lock:
            if name in ROW_OUTCOMES:
                self.counts[name] += int(value)
            elif name.startswith("failure."):
                self.failures[name.removeprefix("failure.")] += int(value)
            else:
                assert name in GAUGES, name
                self.gauges[name] = value


def make_row(tag: str, seq: int, user_id: int = 1, version: int = 1) -> dict:
    return {
        "request_id": f"{tag}{seq:08d}{uuid.uuid4().hex[:8]}",
        "served_at_ms": 1_790_000_000_000 + seq,
        "user_id": user_id,
        "version_number": version,
        "slot": "stable",
        "host": f"host-{tag}",
        "latency_ms": 1.5,
        "movies": ",".join(f"m{seq % 7}-{i}" for i in range(20)),
    }


def stored(settings: MySQL) -> list[tuple[str, str]]:
    """(request_id, host) of every reccom row in insertion order (admin account)."""
    conn = store.connect(settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, host FROM reccom ORDER BY id")
            return list(cur.fetchall())
    finally:
        conn.close()


def spool_files(settings: MySQL) -> list[Path]:
    spool = Path(settings.spool_dir)
    return sorted(spool.glob("*.jsonl")) if spool.exists() else []


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_writer_stores_every_submitted_row_exactly_once(mysql_settings: MySQL) -> None:
    events = Events()
    rows = [make_row("a", i, user_id=i % 13) for i in range(1000)]
    with ProvenanceWriter(mysql_settings, on_event=events) as writer:
        for row in rows:
            writer.submit(row)
    got = stored(mysql_settings)
    assert [r for r, _ in got] == [r["request_id"] for r in rows]
    assert events.counts["written"] == len(rows)
    assert events.counts["spooled"] == 0 and events.counts["dropped"] == 0
    assert spool_files(mysql_settings) == []


def test_rows_reach_mysql_within_the_flush_interval_without_closing(mysql_settings: MySQL) -> None:
    writer = ProvenanceWriter(mysql_settings).start()
    try:
        writer.submit(make_row("f", 1))  # far below a batch: only the flush interval can send it
        wait_for(lambda: len(stored(mysql_settings)) == 1, timeout=10, what="the flushed row")
    finally:
        writer.close()


def test_rows_missing_fields_are_dead_lettered_and_counted_not_written(mysql_settings: MySQL) -> None:
    events = Events()
    good = [make_row("g", i) for i in range(3)]
    broken = {k: v for k, v in make_row("b", 9).items() if k != "user_id"}
    with ProvenanceWriter(mysql_settings, on_event=events) as writer:
        writer.submit(good[0])
        writer.submit(broken)
        writer.submit({**good[1], "movies": ["x", "y"]})  # a list is joined, not refused
        writer.submit(good[2])
    assert [r for r, _ in stored(mysql_settings)] == [g["request_id"] for g in good]
    assert events.counts == Counter(written=3, dead_lettered=1)


def test_writer_survives_mariadb_stopped_and_restarted_mid_stream(mariadb: MariaDB, mysql_settings: MySQL) -> None:
    """Two writers submit steadily while ops/mariadb.sh stops and restarts the server under them."""
    pace_s = 0.002
    events = Events()
    writers = {tag: ProvenanceWriter(mysql_settings, on_event=events, max_backoff_s=0.5).start() for tag in "pq"}
    submitted: dict[str, list[str]] = {tag: [] for tag in writers}
    slowest: dict[str, float] = {}
    done = threading.Event()

    def produce(tag: str) -> None:
        worst, i = 0.0, 0
        while not done.is_set():
            row = make_row(tag, i, user_id=i % 50)
            t0 = time.perf_counter()
            writers[tag].submit(row)
            worst = max(worst, time.perf_counter() - t0)
            submitted[tag].append(row["request_id"])
            i += 1
            time.sleep(pace_s)
        slowest[tag] = worst

    threads = [threading.Thread(target=produce, args=(tag,)) for tag in writers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: events.counts["written"] >= 200, what="rows written before the outage")
        mariadb.stop()
        wait_for(lambda: events.counts["spooled"] >= 100, what="rows spooled during the outage")
        mariadb.start()
        after = events.counts["written"]
        wait_for(lambda: events.counts["written"] >= after + 200, what="rows written after the restart")
    finally:
        done.set()
        for t in threads:
            t.join()
        mariadb.start()
    for writer in writers.values():
        writer.close(timeout=20)

    got = stored(mysql_settings)
    total = sum(len(ids) for ids in submitted.values())
    assert len(got) == len({r for r, _ in got}) == total  # none lost, none twice
    for tag, ids in submitted.items():
        assert [r for r, host in got if host == f"host-{tag}"] == ids  # in submission order per writer
    assert events.counts["spooled"] >= 100
    assert events.counts["written"] >= total
    assert events.counts["dropped"] == 0
    assert spool_files(mysql_settings) == []
    assert max(slowest.values()) < 0.05, slowest  # submit() never waited for MySQL or the disk


def test_a_hung_mysql_costs_callers_nothing_and_rows_still_arrive_exactly_once(
    mariadb: MariaDB, mysql_settings: MySQL
) -> None:
    """SIGSTOP freezes the server: inserts time out (maybe after MySQL got them), rows spool, then replay."""
    events = Events()
    writer = ProvenanceWriter(mysql_settings, on_event=events, max_backoff_s=0.5).start()
    rows = [make_row("h", i) for i in range(2000)]
    worst = 0.0

    def submit(row: dict) -> None:
        nonlocal worst
        t0 = time.perf_counter()
        writer.submit(row)
        worst = max(worst, time.perf_counter() - t0)

    for row in rows[:100]:
        submit(row)
    wait_for(lambda: events.counts["written"] >= 100, what="rows written before the freeze")
    pid = mariadb.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        for i, row in enumerate(rows[100:1900]):
            submit(row)
            if i % 10 == 0:
                time.sleep(0.01)
        wait_for(lambda: events.counts["spooled"] > 0, what="rows spooled while MySQL hangs")
    finally:
        os.kill(pid, signal.SIGCONT)
    for row in rows[1900:]:
        submit(row)
    writer.close(timeout=20)

    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows]
    assert events.counts["spooled"] > 0 and events.counts["dropped"] == 0
    assert spool_files(mysql_settings) == []
    assert worst < 0.05, worst


def test_rows_spool_while_mysql_is_unreachable_and_replay_when_it_is_back(mysql_settings: MySQL) -> None:
    down = replace(mysql_settings, port=free_port())
    events = Events()
    rows = [make_row("s", i) for i in range(250)]
    writer = ProvenanceWriter(down, on_event=events).start()
    for row in rows:
        writer.submit(row)
    writer.close(timeout=5)
    assert events.counts == Counter(spooled=len(rows))
    assert len(spool_files(mysql_settings)) == 1
    assert stored(mysql_settings) == []

    later = [make_row("t", i) for i in range(10)]
    with ProvenanceWriter(mysql_settings, on_event=events) as second:
        for row in later:
            second.submit(row)
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows + later]  # spool first
    assert spool_files(mysql_settings) == []


def test_a_queue_beyond_the_spill_mark_goes_to_disk_without_loss_or_reordering(mysql_settings: MySQL) -> None:
    events = Events()
    settings = replace(mysql_settings, batch_size=20)
    writer = ProvenanceWriter(settings, on_event=events, spill_rows=50)
    rows = [make_row("o", i) for i in range(600)]
    for row in rows:
        writer.submit(row)  # not started yet: the queue is far past the spill mark
    writer.start()
    writer.close(timeout=10)
    assert events.counts["spooled"] > 0
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows]
    assert spool_files(mysql_settings) == []


def test_a_row_submitted_after_close_is_kept_in_the_spool_for_the_next_writer(mysql_settings: MySQL) -> None:
    writer = ProvenanceWriter(mysql_settings).start()
    writer.close()
    late = make_row("l", 1)
    writer.submit(late)
    assert len(spool_files(mysql_settings)) == 1
    ProvenanceWriter(mysql_settings).start().close()
    assert [r for r, _ in stored(mysql_settings)] == [late["request_id"]]


SPOOLER = """
import os, sys, time
from app.provenance import ProvenanceWriter
from app.settings import MySQL
tag, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spooled = []
writer = ProvenanceWriter(MySQL.from_env(), on_event=lambda o, k: spooled.append(k) if o == "spooled" else None)
writer.start()
for i in range(n):
    writer.submit({"request_id": f"{tag}{i:06d}", "served_at_ms": i, "user_id": 5, "version_number": 1,
                   "slot": "canary", "host": tag, "latency_ms": 2.0, "movies": "a,b"})
while sum(spooled) < n:
    time.sleep(0.01)
print("spooled", flush=True)
if mode == "die":
    os.kill(os.getpid(), 9)   # a hard kill: the spool file stays, unlocked, for someone else
sys.stdin.read()              # "hold": stay alive (holding the spool's lock) until told to go
os._exit(0)
"""


def spooler(settings: MySQL, tag: str, n: int, mode: str) -> subprocess.Popen:
    """A separate process whose writer cannot reach MySQL, so it spools `n` rows, then dies or holds on."""
    env = {**os.environ, **settings_env(replace(settings, port=free_port()))}
    proc = subprocess.Popen([sys.executable, "-c", SPOOLER, tag, str(n), mode], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    return proc


def test_a_new_writer_replays_spool_left_by_a_dead_process_but_not_a_live_ones(mysql_settings: MySQL) -> None:
    dead = spooler(mysql_settings, "dead", 300, "die")
    assert dead.wait(timeout=10) == -9
    live = spooler(mysql_settings, "live", 40, "hold")
    try:
        assert len(spool_files(mysql_settings)) == 2
        # The dead process was killed mid-append: a torn last line must be skipped, not stop the replay.
        dead_file = next(p for p in spool_files(mysql_settings) if f"-{dead.pid}-" in p.name)
        with dead_file.open("ab") as fh:
            fh.write(b'{"request_id": "torn')

        events = Events()
        fresh = [make_row("n", i) for i in range(5)]
        with ProvenanceWriter(mysql_settings, on_event=events) as writer:
            for row in fresh:
                writer.submit(row)
        got = [r for r, _ in stored(mysql_settings)]
        assert got == [f"dead{i:06d}" for i in range(300)] + [r["request_id"] for r in fresh]
        assert events.counts["dead_lettered"] == 1 and events.counts["dropped"] == 0  # the torn line
        assert [p for p in spool_files(mysql_settings) if f"-{live.pid}-" in p.name]  # still the live one's
    finally:
        live.communicate("", timeout=10)

    # Once its owner is gone, the next writer takes that file too.
    ProvenanceWriter(mysql_settings).start().close()
    got = [r for r, _ in stored(mysql_settings)]
    assert got[-40:] == [f"live{i:06d}" for i in range(40)] and len(got) == len(set(got)) == 345
    assert spool_files(mysql_settings) == []


def test_two_writers_starting_on_one_spool_replay_each_file_once(mysql_settings: MySQL) -> None:
    for tag in ("x", "y", "z"):
        assert spooler(mysql_settings, tag, 200, "die").wait(timeout=10) == -9
    events = Events()
    writers = [ProvenanceWriter(mysql_settings, on_event=events) for _ in range(2)]
    threads = [threading.Thread(target=lambda w=w: w.start().close()) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r for r, _ in stored(mysql_settings)]
    assert sorted(got) == sorted(f"{tag}{i:06d}" for tag in "xyz" for i in range(200))
    assert events.counts["written"] == 600  # a file replayed by both would count twice
    assert spool_files(mysql_settings) == []


def test_a_replayed_spool_keeps_each_answer_once_even_under_one_request_id(mysql_settings: MySQL) -> None:
    # two answers share a client's request id (two rows), and the spool holding them is replayed twice
    # (a crash between the insert and the file's deletion): the row id keeps each answer exactly once
    rows = [{**make_row("r", i), "request_id": "client-id-1", "row_id": uuid.uuid4().hex} for i in range(2)]
    rows.append(make_row("legacy", 3))  # a spool line written before rows had a row id
    spool = Path(mysql_settings.spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r) + "\n" for r in rows)
    for attempt in range(2):
        (spool / f"{time.time_ns()}-gone-999999-t{attempt}.jsonl").write_text(payload)
        ProvenanceWriter(mysql_settings).start().close()
        assert spool_files(mysql_settings) == []
        assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows]
