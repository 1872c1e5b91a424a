"""The fault matrix (`python -m bench faults`) kept from rotting: two of its faults, run by the bench itself.

The bench starts a stack of its own (free ports, private directories) because the faults kill and poison
parts of it; it runs as a subprocess (tests do not import bench/: import-linter layers) and hands its
rows back as JSON (``BENCH_FAULT_JSON``). This checks that what it measures still means what the README
says: a worker SIGKILLed behind NGINX leaves the stack recovered, a poison spool line is dead-lettered
and counted while the good rows around it reach MySQL, and no answer is ever stored twice. Failed-request
counts are the bench's to report, not asserted here: on a shared 2-core machine a stall of every server
past NGINX's 300 ms read timeout fails requests with no fault at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import ROOT

pytestmark = [pytest.mark.services, pytest.mark.slow]

RATE = 40


def test_two_faults_under_load_through_nginx(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOVIEREC_", "BENCH_", "MYSQL_"))}
    env.update(BENCH_FAULT_QUICK="1", BENCH_FAULTS="kill-worker,poison-line", BENCH_FAULT_RATE=str(RATE),
               BENCH_FAULT_JSON=str(out), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bench", "faults"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out.is_file(), done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["plan"]["hold_s"] == 8.0 and result["plan"]["only"] == ["kill-worker", "poison-line"]
    kill, poison = result["rows"]
    assert kill["title"] == "SIGKILL one stable worker" and poison["title"].startswith("a poison line")
    for row in result["rows"]:
        assert row["requests"] >= RATE * 3, row  # the load ran through the whole fault
        assert row["failed"] + row["failed_outside"] <= row["requests"]
        assert row["duplicated"] == 0, row
        assert row["recover_s"] == row["recover_s"] and row["recover_s"] < 30, row  # not NaN: it recovered
        assert "NOT healthy afterwards" not in row["seen"], row
    # the killed worker loses at most the rows still in its memory queue, never more than it answered
    assert kill["lost"] <= kill["requests"] // 2
    assert poison["lost"] == 0
    assert "rows dead_lettered +1" in poison["seen"]
    assert "its good rows in MySQL: 2 of 2" in poison["detail"]
    assert "SIGKILL one stable worker" in done.stdout and "rows dead_lettered +1" in done.stdout  # the table
