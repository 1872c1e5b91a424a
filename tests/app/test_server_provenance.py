"""Provenance of served answers: one `reccom` row per 200, through MySQL outages and restarts.

A real MariaDB (`ops/mariadb.sh`, fixture `mariadb`) and real Gunicorn servers; rows are read back
as the admin account.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app.store import connect
from tests.fixtures.mariadb import reccom_count
from tests.fixtures.server import Load

pytestmark = pytest.mark.services


def reccom_rows(settings) -> dict[str, dict]:
    """request_id → row, every row of `reccom`."""
    conn = connect(settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT request_id, served_at_ms, user_id, version_number, slot, host, latency_ms, movies FROM reccom"
            )
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()
    return {r["request_id"]: r for r in rows}


def wait_rows(settings, n: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        got = reccom_count(settings)
        if got >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def provenance_counter(server, outcome: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("provenance_rows_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"provenance_rows_total{{outcome={outcome}}} not exported")


def spooled_lines(spool_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in spool_dir.glob("*.jsonl")) if spool_dir.exists() else 0


def test_every_served_answer_becomes_one_row_with_what_was_served(start_server, models_root, mysql_settings, mysql_env):
    s = start_server(slot="canary", models_root=models_root, version=1, workers=2, extra_env=mysql_env)
    started_ms = int(time.time() * 1000)
    users = [*range(1, 41), 10**12, 10**12 + 1]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda u: (u, requests.get(f"{s.url}/recommend/{u}", timeout=10)), users))
    assert all(r.status_code == 200 for _, r in answers)
    # answers that are not a served list leave no row
    assert s.get("/recommend/abc").status_code == 400
    ended_ms = int(time.time() * 1000)

    assert wait_rows(mysql_settings, len(users)) == len(users)
    time.sleep(0.3)
    rows = reccom_rows(mysql_settings)
    assert len(rows) == len(users)
    for user, r in answers:
        row = rows[r.headers["X-Request-Id"]]
        assert row["user_id"] == user
        assert row["version_number"] == int(r.headers["X-Model-Version"]) == 1
        assert row["slot"] == "canary"
        assert row["movies"] == r.text
        assert row["host"] == socket.gethostname()
        assert started_ms <= row["served_at_ms"] <= ended_ms
        assert row["latency_ms"] is not None and row["latency_ms"] >= 0
    assert provenance_counter(s, "written") == len(users)
    assert provenance_counter(s, "dropped") == 0


def test_a_reused_request_id_keeps_one_row_per_answer(start_server, models_root, mysql_settings, mysql_env):
    # NGINX retrying the next upstream after a timeout, or a client replaying its own id: every answer
    # served is provenance, so two answers under one request id are two rows
    s = start_server(models_root=models_root, version=2, workers=1, extra_env=mysql_env)
    rid = "nginx-0123456789abcdef"
    first = s.get("/recommend/7", headers={"X-Request-Id": rid})
    second = s.get("/recommend/8", headers={"X-Request-Id": rid})
    assert first.headers["X-Request-Id"] == second.headers["X-Request-Id"] == rid
    assert wait_rows(mysql_settings, 2) == 2
    time.sleep(0.5)
    assert reccom_count(mysql_settings) == 2
    conn = connect(mysql_settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT user_id, version_number, slot, movies FROM reccom WHERE request_id = %s ORDER BY id",
                        (rid,))
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == ((7, 2, "stable_1", first.text), (8, 2, "stable_1", second.text))


@pytest.mark.slow
def test_mysql_outage_under_load_loses_no_row_and_fails_no_request(
    start_server, models_root, mariadb, mysql_settings, mysql_env
):
    s = start_server(slot="canary", models_root=models_root, version=1, workers=2, extra_env=mysql_env)
    try:
        with Load(s.url, clients=3, pause_s=0.01) as load:
            time.sleep(1.0)
            mariadb.stop()
            time.sleep(2.0)
            during = len(load.snapshot())
            mariadb.start()
            time.sleep(1.5)
    finally:
        mariadb.start()  # the session's server must come back whatever happened
    answers = load.answers
    assert [a for a in answers if not a.ok] == []
    # generous behavioural bound: no request waited on MySQL (the client gives up at 800 ms)
    assert max(a.seconds for a in answers) < 0.5
    print(f"outage: {len(answers)} requests, slowest {max(a.seconds for a in answers) * 1000:.0f} ms")
    assert len(answers) > during > 0
    assert wait_rows(mysql_settings, len(answers), timeout=60) == len(answers)
    time.sleep(0.5)
    rows = reccom_rows(mysql_settings)
    assert set(rows) == {a.request_id for a in answers}, "every answer has its row, no other row exists"
    assert reccom_count(mysql_settings) == len(answers)  # one row each, never two
    for a in answers[:: max(1, len(answers) // 50)]:
        assert rows[a.request_id]["movies"] == a.body and rows[a.request_id]["user_id"] == a.user
    assert provenance_counter(s, "spooled") > 0, "the outage really sent rows to the spool"
    assert provenance_counter(s, "dropped") == 0
    assert provenance_counter(s, "written") >= len(answers)


def test_server_restart_replays_the_spool_left_by_the_previous_one(
    start_server, models_root, mariadb, mysql_settings, mysql_env
):
    spool = Path(mysql_settings.spool_dir)
    first = start_server(models_root=models_root, version=1, workers=2, extra_env=mysql_env)
    try:
        mariadb.stop()
        answers = [first.get(f"/recommend/{u}") for u in range(1, 31)]
        assert all(r.status_code == 200 for r in answers)
        first.stop()  # workers drain: MySQL is down, so every row goes to the spool
        assert spooled_lines(spool) == len(answers)
    finally:
        mariadb.start()
    assert reccom_count(mysql_settings) == 0

    second = start_server(models_root=models_root, version=1, workers=2, extra_env=mysql_env, run_dir=first.run_dir)
    assert wait_rows(mysql_settings, len(answers)) == len(answers)
    rows = reccom_rows(mysql_settings)
    assert set(rows) == {r.headers["X-Request-Id"] for r in answers}
    deadline = time.monotonic() + 10
    while list(spool.glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(spool.glob("*.jsonl")), "a replayed spool file is deleted"
    assert second.get("/ready").status_code == 200


def metric_lines(server, name: str) -> list[str]:
    return [line for line in server.get("/metrics").text.splitlines() if line.startswith(name + "{")]


def test_a_poison_spool_line_is_dead_lettered_and_counted_while_the_server_keeps_writing(
    start_server, models_root, mysql_settings, mysql_env
):
    # issue 12, finding 1: one such line made every writer cycle fail, so no answer's row reached MySQL
    spool = Path(mysql_settings.spool_dir)
    spool.mkdir(parents=True, exist_ok=True)
    (spool / f"{time.time_ns():020d}-gone-999999-dead.jsonl").write_bytes(
        b'{"request_id": "x", "served_at_ms": 1e400}\n' + b"[" * 100_000 + b"\n"
    )
    s = start_server(models_root=models_root, version=1, workers=2, extra_env=mysql_env)
    answers = [s.get(f"/recommend/{u}") for u in range(1, 31)]
    assert all(r.status_code == 200 for r in answers)
    assert wait_rows(mysql_settings, len(answers)) == len(answers)
    deadline = time.monotonic() + 10
    while provenance_counter(s, "dead_lettered") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert provenance_counter(s, "dead_lettered") == 2
    assert provenance_counter(s, "dropped") == 0
    assert provenance_counter(s, "written") == len(answers)
    assert not list(spool.glob("*.jsonl")), "the poisoned file was replayed and deleted"
    dead = Path(f"{mysql_settings.spool_dir}.dead-letter")
    reasons = [line for p in dead.glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(reasons) == 2
    # the gauges and failure counters alerts read are exported from the first scrape
    for name in ("provenance_queue_rows", "provenance_spool_bytes", "provenance_spool_limit_bytes",
                 "provenance_spool_oldest_age_seconds", "provenance_writer_heartbeat_timestamp_seconds"):
        assert metric_lines(s, name), f"{name} not exported"
    kinds = {line.split('kind="')[1].split('"')[0] for line in metric_lines(s, "provenance_failures_total")}
    assert {"mysql", "spool_full", "spool_write", "spool_list", "spool_file", "writer"} <= kinds
