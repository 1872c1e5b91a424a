"""Provenance that cannot wedge and a spool that is bounded (issue 12, findings 1 and 3), on a real MariaDB.

Finding 1: one bad spool line, file or directory stopped every writer cycle, so not even the live queue
reached MySQL (0 of 300 rows), and nothing counted it. Finding 3: the spool had no cap, and on a full disk
rows were lost uncounted or counted dropped and then written. Each test here failed before the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import store
from app.provenance import MAX_LINE, ProvenanceWriter, _parse, _read_lines, normalise
from app.settings import ROOT, MySQL
from tests.app.test_provenance import Events, make_row, spool_files, stored
from tests.fixtures.mariadb import free_port, reccom_count, settings_env

pytestmark = pytest.mark.services


def dead_letters(settings: MySQL) -> list[dict]:
    """Every dead-letter entry of the writer(s) on `settings`."""
    directory = Path(settings.dead_letter_dir or f"{settings.spool_dir}.dead-letter")
    return [json.loads(line) for p in sorted(directory.glob("*.jsonl")) for line in p.read_text().splitlines()]


def foreign_spool(settings: MySQL, lines: list[bytes], name: str = "gone") -> Path:
    """A spool file left by a dead process: `lines` as they are (each gets a newline)."""
    spool = Path(settings.spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f"{time.time_ns():020d}-{name}-999999-dead.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def line_of(row: dict) -> bytes:
    return json.dumps(row).encode()


GOOD = make_row("x", 0)
POISON = {
    "served_at_ms 1e400": line_of(GOOD)[:-1] + b', "served_at_ms": 1e400}',
    "100,000 [": b"[" * 100_000,
    "random bytes": bytes(range(256)).replace(b"\n", b"") * 3,
    "line over MAX_LINE": b'{"request_id": "' + b"a" * (MAX_LINE + 10) + b'"}',
    "NaN latency": line_of({**GOOD, "latency_ms": float("nan")}),
    "40-char slot": line_of({**GOOD, "slot": "s" * 40}),
    "user 10^20": line_of({**GOOD, "user_id": 10**20}),
    "lone surrogate": line_of(GOOD).replace(b'"stable"', b'"\\ud800"'),
    "not an object": b'["a", 1]',
}


# ------------------------------------------------------------------------------- finding 1: no wedge
@pytest.mark.parametrize("poison", list(POISON), ids=list(POISON))
def test_a_poison_spool_line_is_dead_lettered_and_everything_else_reaches_mysql(
    mysql_settings: MySQL, poison: str
) -> None:
    before = [make_row("b", i) for i in range(5)]
    after = [make_row("c", i) for i in range(5)]
    foreign_spool(mysql_settings, [line_of(r) for r in before] + [POISON[poison]] + [line_of(r) for r in after])
    live = [make_row("l", i) for i in range(300)]
    events = Events()
    with ProvenanceWriter(mysql_settings, on_event=events) as writer:
        for row in live:
            writer.submit(row)

    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in before + after + live]
    assert events.counts == Counter(written=310, dead_lettered=1)
    assert spool_files(mysql_settings) == []
    (entry,) = dead_letters(mysql_settings)
    assert entry["line"] == 6 and entry["reason"] and entry["source"].endswith(".jsonl")
    assert "raw" in entry  # what was refused is kept for a person to look at


def test_the_live_queue_is_written_while_the_spool_directory_cannot_be_listed(
    mysql_settings: MySQL, tmp_path: Path
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # listdir fails with ELOOP, even for root (chmod 000 would not stop root)
    settings = replace(mysql_settings, spool_dir=str(loop))
    events = Events()
    rows = [make_row("u", i) for i in range(500)]
    with ProvenanceWriter(settings, on_event=events, scan_interval_s=0.05) as writer:
        for row in rows:
            writer.submit(row)
        time.sleep(0.3)  # several scans: the failure is counted each time, noted in the dead letters once
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows]
    assert events.counts == Counter(written=500)
    assert events.failures["spool_list"] >= 2
    notes = dead_letters(settings)
    assert len(notes) == 1 and "cannot list the spool directory" in notes[0]["reason"]


def test_a_spool_file_that_cannot_be_read_is_moved_to_the_dead_letters(mysql_settings: MySQL) -> None:
    spool = Path(mysql_settings.spool_dir)
    bad = spool / f"{time.time_ns():020d}-gone-1-dir.jsonl"
    bad.mkdir(parents=True)  # opening it fails (IsADirectoryError) every time it is tried
    good = [make_row("g", i) for i in range(3)]
    foreign_spool(mysql_settings, [line_of(r) for r in good])
    events = Events()
    live = [make_row("l", i) for i in range(50)]
    with ProvenanceWriter(mysql_settings, on_event=events) as writer:
        for row in live:
            writer.submit(row)
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in good + live]
    assert not bad.exists() and spool_files(mysql_settings) == []
    (note,) = dead_letters(mysql_settings)
    assert "IsADirectoryError" in note["reason"] and Path(note["moved_to"]).is_dir()
    assert events.failures["spool_file"] == 1 and events.counts["dropped"] == 0


def test_values_that_do_not_fit_a_column_are_refused_never_truncated(mysql_settings: MySQL) -> None:
    good = make_row("v", 1)
    too_big = [
        {**make_row("v", 2), "slot": "s" * 40},  # VARCHAR(32): INSERT IGNORE stored 32 chars
        {**make_row("v", 3), "user_id": 10**20},  # BIGINT: INSERT IGNORE stored 2^63-1
        {**make_row("v", 4), "version_number": 2**32},  # INT UNSIGNED
        {**make_row("v", 5), "served_at_ms": 2.5},  # not a whole number of ms: int() would floor it
        {**make_row("v", 6), "movies": "é" * 40_000},  # 80,000 bytes: more than a TEXT holds
    ]
    events = Events()
    with ProvenanceWriter(mysql_settings, on_event=events) as writer:
        writer.submit(good)
        for row in too_big:
            writer.submit(row)
    assert [r for r, _ in stored(mysql_settings)] == [good["request_id"]]
    assert events.counts == Counter(written=1, dead_lettered=len(too_big))
    reasons = [e["reason"] for e in dead_letters(mysql_settings)]
    assert len(reasons) == len(too_big) and all(reasons), reasons
    assert store.reccom_problem({**good, "row_id": good["request_id"]}) is None


# ------------------------------------------------------------------------- finding 3: bounded spool
def test_the_spool_cap_keeps_the_oldest_rows_and_counts_every_row_it_cannot_keep(mysql_settings: MySQL) -> None:
    rows = [make_row("k", i) for i in range(100)]
    line = len(json.dumps(normalise(rows[0]), separators=(",", ":"))) + 1
    cap = 30 * line + line // 2
    down = replace(mysql_settings, port=free_port(), spool_max_bytes=cap, batch_size=7)
    events = Events()
    writer = ProvenanceWriter(down, on_event=events).start()
    t0 = time.perf_counter()
    for row in rows:
        writer.submit(row)
    assert time.perf_counter() - t0 < 0.5  # serving never waits on the full spool
    writer.close(timeout=3)
    assert events.counts == Counter(spooled=30, dropped=70)
    assert events.failures["spool_full"] >= 1
    assert sum(p.stat().st_size for p in spool_files(mysql_settings)) <= cap

    replay = Events()
    ProvenanceWriter(mysql_settings, on_event=replay).start().close()
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows[:30]]  # the oldest are kept
    assert replay.counts == Counter(written=30)


FULL_DISK = """
import json, resource, signal, sys, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # the write fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from app.provenance import ProvenanceWriter, ROW_OUTCOMES
from app.settings import MySQL
counts = dict.fromkeys([*ROW_OUTCOMES, "failure.spool_write"], 0)
def on_event(name, value):
    if name in counts:
        counts[name] += int(value)
writer = ProvenanceWriter(MySQL.from_env(), on_event=on_event).start()
for i in range(int(sys.argv[2])):
    writer.submit({"request_id": f"full{i:06d}", "row_id": f"full{i:06d}", "served_at_ms": i, "user_id": i,
                   "version_number": 1, "slot": "canary", "host": "h", "latency_ms": 1.0, "movies": "1,2,3" * (i % 9)})
    if i % 13 == 0:
        time.sleep(0.02)                              # many appends, so some fail half-way through a batch
writer.close(timeout=3)
print(json.dumps(counts))
"""


def test_counts_are_exact_when_the_disk_fills_up(mysql_settings: MySQL) -> None:
    """RLIMIT_FSIZE plays a full disk: every row ends either in MySQL (via the spool) or counted dropped."""
    n = 260
    down = replace(mysql_settings, port=free_port(), batch_size=7)
    env = {**os.environ, **settings_env(down)}
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "6000", str(n)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["written"] == 0 and counts["dead_lettered"] == 0
    assert counts["spooled"] > 0 and counts["dropped"] > 0
    assert counts["spooled"] + counts["dropped"] == n

    replay = Events()
    ProvenanceWriter(mysql_settings, on_event=replay).start().close()
    got = [r for r, _ in stored(mysql_settings)]
    assert len(got) == len(set(got)) == counts["spooled"]  # spooled rows all arrive, and no dropped one does
    assert replay.counts == Counter(written=counts["spooled"])  # no torn line was left to dead-letter
    assert spool_files(mysql_settings) == []
    assert counts["failure.spool_write"] >= 1


def test_an_unwritable_spool_with_mysql_down_counts_every_row_dropped(mysql_settings: MySQL, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    down = replace(mysql_settings, port=free_port(), spool_dir=str(blocker / "spool"))
    events = Events()
    with ProvenanceWriter(down, on_event=events) as writer:
        for i in range(500):
            writer.submit(make_row("w", i))
    assert events.counts == Counter(dropped=500)
    assert events.failures["spool_write"] >= 1


def test_the_dead_letter_directory_is_capped_too_and_what_it_cannot_keep_is_counted(mysql_settings: MySQL) -> None:
    capped = replace(mysql_settings, spool_max_bytes=3000)
    foreign_spool(capped, [b"garbage %d" % i for i in range(50)])
    events = Events()
    ProvenanceWriter(capped, on_event=events).start().close()
    assert 0 < events.counts["dead_lettered"] < 50
    assert events.counts["dead_lettered"] + events.counts["dropped"] == 50
    assert events.failures["dead_letter_write"] >= 1 and spool_files(capped) == []
    directory = Path(f"{capped.spool_dir}.dead-letter")
    assert sum(p.stat().st_size for p in directory.glob("*.jsonl")) <= 3000


def test_the_writer_exports_its_queue_spool_size_and_age(mysql_settings: MySQL) -> None:
    down = replace(mysql_settings, port=free_port())
    events = Events()
    writer = ProvenanceWriter(down, on_event=events).start()
    for i in range(50):
        writer.submit(make_row("m", i))
    deadline = time.monotonic() + 10
    while events.gauges.get("spool_bytes", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close(timeout=1)
    assert events.gauges["spool_bytes"] > 0 and events.gauges["spool_oldest_age_seconds"] >= 0
    assert events.gauges["spool_limit_bytes"] == down.spool_max_bytes
    assert abs(events.gauges["heartbeat_seconds"] - time.time()) < 30
    assert "queue_rows" in events.gauges and events.failures["mysql"] >= 1


# ------------------------------------------------------------------------------ the reader, fuzzed
LINE = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda i: line_of(make_row("h", i)), st.integers(0, 10**6)),
    st.builds(lambda d: b"[" * d + b"]" * (d % 3), st.integers(0, 5000)),
    st.sampled_from(list(POISON.values())[:3]),
)


def _flip(row: bytes, at: int, value: int) -> bytes:
    data = bytearray(row)
    data[at % len(data)] = value
    return bytes(data)


FLIPPED = st.builds(lambda i, at, b: _flip(line_of(make_row("h", i)), at, b),
                    st.integers(0, 10**6), st.integers(0, 10**4), st.integers(0, 255))


@given(st.lists(st.one_of(LINE, FLIPPED), max_size=20).map(lambda ls: b"\n".join(ls)))
@settings(max_examples=300, deadline=None)
def test_the_spool_reader_never_raises_and_judges_every_line(data: bytes) -> None:
    import io

    judged = 0
    for _, line, problem in _read_lines(io.BytesIO(data)):
        row, why = (None, problem) if problem else _parse(line)
        assert (row is None) == bool(why)
        judged += 1
    assert judged == sum(1 for part in data.split(b"\n") if part.strip())


@given(data=st.lists(st.one_of(LINE, FLIPPED), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_replaying_random_spool_bytes_writes_or_dead_letters_every_line(mysql_settings: MySQL,
                                                                        data: list[bytes]) -> None:
    settings_ = replace(mysql_settings, spool_dir=str(Path(mysql_settings.spool_dir) / uuid.uuid4().hex))
    foreign_spool(settings_, [d.replace(b"\n", b" ") for d in data])
    lines = sum(1 for d in data if d.replace(b"\n", b" ").strip())
    before = reccom_count(mysql_settings)
    events = Events()
    ProvenanceWriter(settings_, on_event=events).start().close()
    assert spool_files(settings_) == []  # never left behind, never retried forever
    assert events.counts["written"] + events.counts["dead_lettered"] == lines
    assert events.counts["dropped"] == 0
    assert reccom_count(mysql_settings) - before <= events.counts["written"]  # a row id seen before is no new row
