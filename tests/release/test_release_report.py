"""The release report: each step's and check's values over time, from the release's state file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from auto_deployment.monitor import html, release_report

ROOT = Path(__file__).resolve().parents[2]


def interval(elapsed: float, step: str, share: float, verdict: str, p99: float, p99_limit: float,
             canary_ms: float, stable_ms: float) -> dict:
    return {"at": 1000 + elapsed, "elapsed_s": elapsed, "step": step, "share": share, "verdict": verdict,
            "move": "stay", "checks": [
                {"name": "p99_vs_stable", "status": verdict, "value": p99, "limit": p99_limit},
                {"name": "error_ratio", "status": "passed", "value": 0.0, "limit": 0.01}],
            "canary": {"latency_ms": canary_ms, "p99_ms": p99, "requests": 400.0, "error_ratio": 0.0},
            "stable": {"latency_ms": stable_ms, "p99_ms": 4.0, "requests": 1600.0, "error_ratio": 0.0}}


STATE = {
    "candidate": 7, "previous": 6, "outcome": "aborted", "started_at": "2026-11-29T20:00:00Z",
    "finished_at": "2026-11-29T20:03:00Z", "decided_by": None,
    "reason": "p99_vs_stable failed 2 interval(s): 250.0 ms > 18.0 ms",
    "step_log": [{"name": "shadow", "share": 0.0, "intervals": 2, "verdict": "passed", "move": "advance"},
                 {"name": "5%", "share": 0.05, "intervals": 2, "verdict": "failed", "move": "abort"}],
    "series": [interval(60, "shadow", 0.0, "passed", 5.0, 18.0, 3.0, 3.1),
               interval(120, "shadow", 0.0, "passed", 6.0, 18.0, 3.2, 3.0),
               interval(180, "5%", 0.05, "failed", 250.0, 18.0, 120.0, 3.0),
               interval(240, "5%", 0.05, "failed", 260.0, 18.0, 125.0, 3.1)],
}


def cells(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-key="([^"]+)"[^>]*>([^<]*)<', page))


def test_each_check_becomes_a_time_series_with_its_limit_in_interval_order():
    series = release_report.check_series(STATE["series"])
    assert [p["value"] for p in series["p99_vs_stable"]] == [5.0, 6.0, 250.0, 260.0]
    assert [p["elapsed_s"] for p in series["p99_vs_stable"]] == [60, 120, 180, 240]
    assert {p["limit"] for p in series["p99_vs_stable"]} == {18.0}
    assert [p["step"] for p in series["error_ratio"]] == ["shadow", "shadow", "5%", "5%"]


def test_the_page_shows_outcome_steps_every_interval_and_one_plot_per_check_and_curve():
    page, data = release_report.page(STATE)
    shown = cells(page)
    assert shown["outcome"] == "aborted" and "250.0 ms &gt; 18.0 ms" in shown["reason"]
    assert shown["step.1.share"] == "0.0500" and shown["step.1.intervals"] == "2"
    assert shown["series.2.p99_vs_stable"] == "250.0000" and shown["series.3.elapsed_s"] == "240"
    # two checks + four canary-vs-stable curves, all inline: nothing fetched from elsewhere
    assert page.count("<svg") == 6 and "src=\"http" not in page
    assert html.embedded_data(page)["checks"]["p99_vs_stable"][2]["value"] == 250.0
    assert data["candidate"] == 7 and data["previous"] == 6


def test_a_release_without_intervals_still_renders_its_outcome():
    page, _ = release_report.page({"candidate": 3, "previous": 2, "outcome": "failed", "reason": "deploy failed"})
    assert cells(page)["outcome"] == "failed" and "<svg" not in page


def test_report_release_renders_the_state_file_and_refuses_what_is_not_one(tmp_path):
    run = tmp_path / "run"
    (run / "release").mkdir(parents=True)
    (run / "release" / "state.json").write_text(json.dumps(STATE))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOVIEREC_RUN_DIR": str(run)}
    done = subprocess.run([sys.executable, "-m", "auto_deployment", "report", "release"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = Path(done.stdout.strip())
    assert written.parent == run / "pipeline" / "releases" and written.name.startswith("release-7-")
    assert json.loads(written.with_suffix(".json").read_text())["outcome"] == "aborted"
    assert cells(written.read_text())["series.0.p99_vs_stable"] == "5.0000"

    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = subprocess.run([sys.executable, "-m", "auto_deployment", "report", "release", "--state",
                          str(tmp_path / "bad.json")], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a release state file" in bad.stderr
