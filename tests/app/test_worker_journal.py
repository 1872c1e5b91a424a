"""A killed worker loses no provenance row (issue 12, "nothing lost"): the write-ahead journal.

Before the journal, rows still queued in a worker's memory died with it on SIGKILL (1-11 per fault run
of ``python -m bench faults``) and no counter moved. Now every queued row is also a line of the worker's
journal; a live writer adopts a dead one's journal into the spool, and the usual replay writes each row
exactly once, counted ``adopted`` and ``written`` once, plus one ``failure.orphan_journal``.
A real MariaDB (fixture `mariadb`), real child processes killed with SIGKILL, and a real Gunicorn.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from app.provenance import HEADER_LEN, ProvenanceWriter, _Journal
from app.settings import ROOT, MySQL
from tests.app.test_provenance import Events, make_row, spool_files, stored, wait_for
from tests.app.test_server_provenance import metric_lines, provenance_counter, reccom_rows, wait_rows
from tests.fixtures.mariadb import reccom_count, settings_env

pytestmark = pytest.mark.services


def journals(spool_dir: str | Path, pid: int | None = None) -> list[Path]:
    pattern = f"journal-*-{pid}-*.journal" if pid else "journal-*.journal"
    return sorted(Path(spool_dir).glob(pattern))


def read_journal(path: Path) -> tuple[int, list[bytes]]:
    """(done offset from the header, lines after the header)."""
    data = path.read_bytes()
    head = re.fullmatch(rb"movierec-journal done=([0-9]{16})\n", data[:HEADER_LEN])
    assert head, data[:HEADER_LEN]
    return int(head[1]), data[HEADER_LEN:].splitlines(keepends=True)


def only_empty_journal(spool_dir: str) -> bool:
    """Exactly one journal, holding nothing but its header (False while a fresh one is being swapped in)."""
    try:
        (path,) = journals(spool_dir)
        return read_journal(path) == (HEADER_LEN, [])
    except (ValueError, FileNotFoundError):
        return False


def line(row: dict) -> bytes:
    return (json.dumps(row, separators=(",", ":")) + "\n").encode()


# ------------------------------------------------------------------------------------ the file itself
def test_a_journal_marks_done_rows_in_its_header_and_carries_only_the_rest_to_a_fresh_file(tmp_path: Path) -> None:
    rows = [line(make_row("j", i)) for i in range(3)]
    journal = _Journal.create(tmp_path)
    assert [journal.append(r) for r in rows] == [len(r) for r in rows]
    assert read_journal(journal.path) == (HEADER_LEN, rows)

    journal.delivered(len(rows[0]))
    assert read_journal(journal.path) == (HEADER_LEN + len(rows[0]), rows)

    fresh = _Journal.create(tmp_path)
    journal.carry_to(fresh)
    assert read_journal(journal.path)[0] == HEADER_LEN + sum(map(len, rows))  # the old one: all done
    journal.discard()
    assert read_journal(fresh.path) == (HEADER_LEN, rows[1:])
    assert (fresh.end, fresh.done) == (HEADER_LEN + len(rows[1]) + len(rows[2]), HEADER_LEN)
    assert journals(tmp_path) == [fresh.path]
    fresh.release()
    assert journals(tmp_path) == [fresh.path]  # released, not deleted: left for a writer to adopt


def test_the_journal_mirrors_the_queue_and_a_clean_close_deletes_it(mysql_settings: MySQL) -> None:
    held = replace(mysql_settings, flush_interval_s=3600, batch_size=1000)  # rows stay queued
    rows = [make_row("q", i) for i in range(5)]
    events = Events()
    writer = ProvenanceWriter(held, on_event=events).start()
    for row in rows:
        writer.submit(row)
    (path,) = journals(held.spool_dir)
    assert f"-{os.getpid()}-" in path.name
    assert read_journal(path) == (HEADER_LEN, [line(r) for r in rows])
    assert writer.queued == 5 and reccom_count(mysql_settings) == 0
    writer.close()
    assert [r for r, _ in stored(mysql_settings)] == [r["request_id"] for r in rows]
    assert events.counts == Counter(written=5)
    assert journals(held.spool_dir) == [] and spool_files(held) == []


def test_done_rows_leave_the_journal_through_a_fresh_file(mysql_settings: MySQL) -> None:
    events = Events()
    writer = ProvenanceWriter(mysql_settings, on_event=events, journal_max_bytes=1).start()
    try:
        (first,) = journals(mysql_settings.spool_dir)
        for i in range(30):
            writer.submit(make_row("t", i))
        wait_for(lambda: events.counts["written"] == 30, what="30 rows written")
        # the cycle that wrote them moved the (empty) rest to a fresh journal and deleted the old one
        wait_for(lambda: only_empty_journal(mysql_settings.spool_dir), what="one journal, with no row")
        assert not first.exists()
    finally:
        writer.close()
    assert events.counts == Counter(written=30) and journals(mysql_settings.spool_dir) == []


# -------------------------------------------------------------------------------- killed processes
KILLED = """
import json, os, sys, time
from app.provenance import ProvenanceWriter
from app.settings import MySQL
tag, first, then, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
written = []
writer = ProvenanceWriter(MySQL.from_env(), on_event=lambda n, v: written.append(v) if n == "written" else None)
writer.start()
def row(i):
    return {"request_id": f"{tag}{i:06d}", "served_at_ms": i, "user_id": 5, "version_number": 1, "slot": "canary",
            "host": tag, "latency_ms": 2.0, "movies": "a,b"}
for i in range(first):
    writer.submit(row(i))
while sum(written) < first:   # the first batch (batch size = first) is in MySQL
    time.sleep(0.01)
for i in range(first, first + then):
    writer.submit(row(i))     # below a batch, with an hour's flush interval: these stay queued
print(json.dumps({"written": sum(written), "queued": writer.queued}), flush=True)
if mode == "die":
    os.kill(os.getpid(), 9)
sys.stdin.read()              # "hold": alive, holding its journal's lock, until told to go
os._exit(0)
"""


def worker(settings: MySQL, tag: str, first: int, then: int, mode: str) -> tuple[subprocess.Popen, dict]:
    """A separate process that writes `first` rows, queues `then` more, then is SIGKILLed or holds on."""
    held = replace(settings, flush_interval_s=3600, batch_size=first or 1000)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, tag, str(first), str(then), mode], cwd=ROOT,
                            env={**os.environ, **settings_env(held)}, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    said = json.loads(proc.stdout.readline())
    assert said == {"written": first, "queued": then}
    return proc, said


def test_a_killed_writers_queued_rows_are_adopted_and_written_exactly_once(mysql_settings: MySQL) -> None:
    dead, _ = worker(mysql_settings, "dead", 10, 7, "die")
    assert dead.wait(timeout=10) == -signal.SIGKILL
    (left,) = journals(mysql_settings.spool_dir, dead.pid)
    done, lines = read_journal(left)
    assert len(lines) == 17 and done == HEADER_LEN + sum(map(len, lines[:10]))  # 10 written, 7 not
    assert reccom_count(mysql_settings) == 10

    events = Events()
    ProvenanceWriter(mysql_settings, on_event=events).start().close()
    assert [r for r, _ in stored(mysql_settings)] == [f"dead{i:06d}" for i in range(17)]  # each once, in order
    assert events.counts == Counter(adopted=7, written=7)  # with the dead one's 10: 17 written, as stored
    assert events.failures["orphan_journal"] == 1 and events.failures["journal"] == 0
    assert journals(mysql_settings.spool_dir) == [] and spool_files(mysql_settings) == []


def test_a_live_writers_journal_is_left_alone_until_it_dies_then_a_running_writer_adopts_it(
    mysql_settings: MySQL,
) -> None:
    live, _ = worker(mysql_settings, "live", 0, 12, "hold")
    events = Events()
    writer = ProvenanceWriter(mysql_settings, on_event=events, scan_interval_s=0.1).start()
    try:
        time.sleep(0.5)  # several scans: the journal is locked by a live process
        assert journals(mysql_settings.spool_dir, live.pid) and reccom_count(mysql_settings) == 0
        assert events.failures["orphan_journal"] == 0
        live.kill()
        assert live.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: events.counts["written"] == 12, what="the dead writer's 12 rows written")
    finally:
        writer.close()
        live.kill()
    assert sorted(r for r, _ in stored(mysql_settings)) == [f"live{i:06d}" for i in range(12)]
    assert events.counts == Counter(adopted=12, written=12) and events.failures["orphan_journal"] == 1
    assert journals(mysql_settings.spool_dir) == [] and spool_files(mysql_settings) == []


def test_a_torn_journal_line_is_dead_lettered_by_the_spool_replay(mysql_settings: MySQL) -> None:
    dead, _ = worker(mysql_settings, "torn", 0, 4, "die")
    assert dead.wait(timeout=10) == -signal.SIGKILL
    (left,) = journals(mysql_settings.spool_dir, dead.pid)
    with left.open("ab") as fh:
        fh.write(b'{"request_id": "torn-')  # killed in the middle of a line
    events = Events()
    ProvenanceWriter(mysql_settings, on_event=events).start().close()
    assert [r for r, _ in stored(mysql_settings)] == [f"torn{i:06d}" for i in range(4)]
    assert events.counts == Counter(adopted=5, written=4, dead_lettered=1)
    dead_dir = Path(f"{mysql_settings.spool_dir}.dead-letter")
    (entry,) = [json.loads(x) for p in dead_dir.glob("*.jsonl") for x in p.read_text().splitlines()]
    assert entry["raw"] == '{"request_id": "torn-' and entry["source"].endswith("-journal.jsonl")


# ------------------------------------------------------------------------------------ real Gunicorn
def failures(server, kind: str) -> float:
    for text in metric_lines(server, "provenance_failures_total"):
        if f'kind="{kind}"' in text:
            return float(text.rsplit(" ", 1)[1])
    raise AssertionError(f"provenance_failures_total{{kind={kind}}} not exported")


def test_a_sigkilled_gunicorn_worker_loses_no_row_and_the_counters_say_so(
    start_server, models_root, mysql_settings: MySQL, mysql_env: dict[str, str]
) -> None:
    # an hour's flush interval and a huge batch: every row is still in the worker's memory when it dies
    env = {**mysql_env, "MOVIEREC_PROVENANCE_FLUSH_S": "3600", "MOVIEREC_PROVENANCE_BATCH": "100000"}
    s = start_server(models_root=models_root, version=1, workers=1, extra_env=env)
    (victim,) = s.worker_pids()
    ids = [f"kill-{uuid.uuid4().hex}" for _ in range(40)]
    answers = [s.get(f"/recommend/{i + 1}", headers={"X-Request-Id": rid}) for i, rid in enumerate(ids)]
    assert [a.status_code for a in answers] == [200] * len(ids)
    assert reccom_count(mysql_settings) == 0, "the rows are still queued in the worker"
    (journal,) = journals(mysql_settings.spool_dir, victim)
    assert len(read_journal(journal)[1]) == len(ids)

    os.kill(victim, signal.SIGKILL)  # Gunicorn's master starts a new worker, whose writer adopts the journal
    assert wait_rows(mysql_settings, len(ids), timeout=90) == len(ids)
    time.sleep(0.5)
    rows = reccom_rows(mysql_settings)
    assert set(rows) == set(ids) and reccom_count(mysql_settings) == len(ids), "every row, each once"
    for rid, a in zip(ids, answers, strict=True):
        assert rows[rid]["movies"] == a.text
    wait_for(lambda: provenance_counter(s, "written") == len(ids), timeout=30, what="written counted")
    assert provenance_counter(s, "adopted") == len(ids)
    assert provenance_counter(s, "dropped") == 0
    assert failures(s, "orphan_journal") == 1
    assert not journals(mysql_settings.spool_dir, victim) and not list(Path(mysql_settings.spool_dir).glob("*.jsonl"))
