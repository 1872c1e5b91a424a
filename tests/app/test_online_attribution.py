"""Online evaluation attributes each served list to the version and slot in provenance (real MariaDB)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app import store
from app.settings import MySQL
from auto_deployment.monitor.online_eval import ProvenanceAttributor, report

pytestmark = pytest.mark.services

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
A = [f"a{i}+2000" for i in range(20)]
B = [f"b{i}+2000" for i in range(20)]


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def line(when: datetime, user: int, movies: list[str]) -> str:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{stamp},{user},recommendation request 127.0.0.1:8082, status 200, result: {', '.join(movies)}, 9 ms"


@pytest.fixture
def served(mysql_settings: MySQL) -> MySQL:
    """Users 1 and 2 each served twice, by different versions and slots, a few hundred ms before their log line."""
    rows = [
        ("r1", ms(T0) - 300, 1, 1, "stable_1", ",".join(A)),
        ("r2", ms(T0 + timedelta(minutes=1)) - 250, 1, 2, "canary", ",".join(B)),
        ("r3", ms(T0) - 200, 2, 1, "stable_2", ",".join(A)),
        ("r4", ms(T0 + timedelta(minutes=2)) - 100, 2, 1, "stable_1", ",".join(A)),
    ]
    conn = store.connect(mysql_settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, latency_ms, movies)"
                " VALUES (%s, %s, %s, %s, %s, 'h', 9, %s)",
                rows,
            )
    finally:
        conn.close()
    return mysql_settings


def test_each_list_goes_to_the_row_with_its_user_movies_and_nearest_time(served: MySQL) -> None:
    lines = [
        line(T0, 1, A),
        line(T0 + timedelta(minutes=1), 1, B),
        line(T0, 2, A),
        line(T0 + timedelta(minutes=2), 2, A),  # same user, same list: the nearer row wins
        line(T0 + timedelta(minutes=3), 3, A),  # no provenance row at all
        line(T0 + timedelta(minutes=4), 1, A),  # a list like user 1's first, but minutes away from it
        f"{(T0 + timedelta(minutes=10)).strftime('%Y-%m-%dT%H:%M:%S')},9,GET /data/m/x+1999/0.mpg",
    ]
    summary = report(lines, ProvenanceAttributor(served, slack_s=5), {})
    assert {k: v["lists"] for k, v in summary.items()} == {
        ("1", "stable_1"): 2,
        ("2", "canary"): 1,
        ("1", "stable_2"): 1,
        ("unattributed", "127.0.0.1:8082"): 2,
    }
