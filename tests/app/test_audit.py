"""`python -m auto_deployment audit` against a real MariaDB, run the way an auditor runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from app import store
from app.settings import ROOT, MySQL
from tests.fixtures.mariadb import free_port

pytestmark = pytest.mark.services

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
HOUR_MS = 3_600_000

VERSIONS = {
    1: {"data_checksum": "a1" * 32, "trained_on": "2026-11-18T03:00:00Z", "model_rmse": 0.9312},
    2: {"data_checksum": "b2" * 32, "trained_on": "2026-11-20T03:00:00Z", "model_rmse": 0.9175},
}
# (request_id, served_at_ms, user_id, version, slot): user 42 is served by v1 (stable) then v2 (canary)
SERVED = [
    ("req-a", T0_MS, 42, 1, "stable"),
    ("req-b", T0_MS + HOUR_MS, 7, 1, "stable"),
    ("req-c", T0_MS + 2 * HOUR_MS + 123, 42, 2, "canary"),
    ("req-d", T0_MS + 3 * HOUR_MS, 7, 2, "canary"),
    ("req-e", T0_MS + 4 * HOUR_MS, 42, 2, "stable"),
    ("req-f", T0_MS + 5 * HOUR_MS, 9, 2, "stable"),
]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture
def audited(mysql_settings: MySQL, mysql_env: dict[str, str]) -> dict[str, str]:
    """Two tracked versions and six served requests; returns the subprocess environment."""
    for version, row in VERSIONS.items():
        store.record_tracking(mysql_settings, {"version_number": version, **row})
    conn = store.connect(mysql_settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, latency_ms, movies)"
                " VALUES (%s, %s, %s, %s, %s, 'host-1', 3.5, 'm1,m2,m3')",
                SERVED,
            )
    finally:
        conn.close()
    return {**os.environ, **mysql_env}


def audit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auto_deployment", "audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_audit_user_json_names_version_data_and_rmse_of_every_request(audited: dict[str, str]) -> None:
    done = audit(audited, "user", "42", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    expected = [s for s in SERVED if s[2] == 42]
    assert answer["user_id"] == 42
    assert [r["request_id"] for r in answer["requests"]] == [s[0] for s in expected]
    for got, (_rid, served_ms, _user, version, slot) in zip(answer["requests"], expected, strict=True):
        assert got["served_at"] == iso(served_ms)
        assert (got["version_number"], got["slot"]) == (version, slot)
        assert got["data_checksum"] == VERSIONS[version]["data_checksum"]
        assert got["model_rmse"] == pytest.approx(VERSIONS[version]["model_rmse"])
        assert got["trained_on"] == VERSIONS[version]["trained_on"]


def test_audit_user_since_and_until_bound_the_window(audited: dict[str, str]) -> None:
    since = iso(T0_MS + HOUR_MS)
    until = iso(T0_MS + 3 * HOUR_MS)
    done = audit(audited, "user", "42", "--since", since, "--until", until, "--json")
    assert done.returncode == 0, done.stderr
    assert [r["request_id"] for r in json.loads(done.stdout)["requests"]] == ["req-c"]
    # a zone-less time is UTC
    done = audit(audited, "user", "42", "--since", "2026-11-20T15:00", "--json")
    assert [r["request_id"] for r in json.loads(done.stdout)["requests"]] == ["req-e"]


def test_audit_user_text_shows_one_line_per_request_with_its_provenance(audited: dict[str, str]) -> None:
    done = audit(audited, "user", "42")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("2026-")]
    assert len(rows) == 3
    for line, (rid, served_ms, _user, version, slot) in zip(rows, [s for s in SERVED if s[2] == 42], strict=True):
        cells = line.split()
        assert cells[0] == iso(served_ms) and cells[1] == slot and cells[2] == str(version)
        assert VERSIONS[version]["data_checksum"] in cells and rid in cells
    unknown = audit(audited, "user", "31337")
    assert unknown.returncode == 0 and "no request" in unknown.stdout


def test_audit_version_counts_distinct_users_requests_and_first_last_time(audited: dict[str, str]) -> None:
    done = audit(audited, "version", "2", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    served = [s for s in SERVED if s[3] == 2]
    assert got["users"] == len({s[2] for s in served})
    assert got["requests"] == len(served)
    assert got["requests_by_slot"] == {"canary": 2, "stable": 2}
    assert got["first_served"] == iso(min(s[1] for s in served))
    assert got["last_served"] == iso(max(s[1] for s in served))
    assert got["data_checksum"] == VERSIONS[2]["data_checksum"]

    text = audit(audited, "version", "2")
    assert text.returncode == 0
    assert f"users served    {got['users']}" in text.stdout and iso(max(s[1] for s in served)) in text.stdout

    never = json.loads(audit(audited, "version", "99", "--json").stdout)
    assert (never["requests"], never["users"], never["tracked"], never["first_served"]) == (0, 0, False, None)


def test_audit_says_clearly_when_the_database_is_unreachable(audited: dict[str, str]) -> None:
    port = free_port()
    done = audit({**audited, "MYSQL_PORT": str(port)}, "user", "42")
    assert done.returncode != 0
    assert "cannot reach MySQL" in done.stderr and str(port) in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_audit_runs_as_the_read_only_auditor_account(audited: dict[str, str]) -> None:
    done = audit({**audited, "MYSQL_AUDITOR_PASSWORD": "wrong"}, "version", "1")
    assert done.returncode != 0
    assert "movierec_auditor" in done.stderr and "Traceback" not in done.stderr
