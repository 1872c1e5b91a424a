"""The console in a real browser: headless Chromium (Debian's, through chromium-driver) against
`python -m auto_deployment console` on a free loopback port, reading a real MariaDB as the auditor.

The database holds three tracked versions, two releases and four served requests; an event log holds
two served lists and what their users did next; the models and run folders hold reports. Each page is
loaded, the audit form is filled in and submitted, and the rendered tables are checked against the
seeded values and hand-computed online figures. Screenshots are kept under reports/screenshots/.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from app import store
from app.settings import ROOT, MySQL
from auto_deployment import audit
from ops.render import native_context, render
from ops.services import Stack, ports
from tests.fixtures.mariadb import MariaDB, fresh_database_name, settings_env
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / "reports" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's (ops/system-deps.sh)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


VERSIONS = {
    1: {"data_checksum": "a1" * 32, "model_checksum": "d1" * 32, "code_commit": "c0ffee1" + "0" * 33,
        "trained_on": "2026-11-18T03:00:00Z", "data_creation": "2026-11-18T02:55:00Z", "model_rmse": 0.9312,
        "algorithm": "svd", "params": {"factors": 50}, "train_size": 80000,
        "metrics": {"rmse": 0.9312, "mae": 0.7345}},
    2: {"data_checksum": "b2" * 32, "model_checksum": "e2" * 32, "code_commit": "beef002" + "0" * 33,
        "trained_on": "2026-11-20T03:00:00Z", "data_creation": "2026-11-20T02:55:00Z", "model_rmse": 0.9175,
        "algorithm": "svd", "params": {"factors": 64}, "train_size": 81234,
        "metrics": {"rmse": 0.9175, "mae": 0.7211, "ndcg@20": 0.1234}},
    3: {"data_checksum": "c3" * 32, "model_checksum": "f3" * 32, "code_commit": "feed003" + "0" * 33,
        "trained_on": "2026-11-22T03:00:00Z", "data_creation": "2026-11-22T02:55:00Z", "model_rmse": 0.9050,
        "algorithm": "svd", "params": {"factors": 80}, "train_size": 82001, "metrics": {"rmse": 0.9050}},
}
RELEASES = [
    {"candidate_version": 2, "previous_version": 1, "started_at": "2026-11-20T03:05:00Z",
     "ended_at": "2026-11-20T15:05:00Z", "outcome": "promoted", "canary_latency_ms": 41.5, "canary_requests": 1200,
     "canary_errors": 0, "stable_latency_ms": 39.0, "stable_requests": 4800, "stable_errors": 1,
     "reason": "every check passed"},
    {"candidate_version": 3, "previous_version": 2, "started_at": "2026-11-22T03:05:00Z",
     "ended_at": "2026-11-22T03:20:00Z", "outcome": "aborted", "canary_latency_ms": 612.5, "canary_requests": 300,
     "canary_errors": 2, "stable_latency_ms": 40.0, "stable_requests": 1200, "stable_errors": 0,
     "reason": "canary_latency failed: 612.5 ms > 500 ms"},
]
# The aborted release's steps and controls (app/sql/004_release_steps.sql): seeded and checked.
STEPS = {
    "steps": [
        {"name": "shadow", "share": 0.0, "shadow": True, "started_at": "2026-11-22T03:05:00.000Z",
         "ended_at": "2026-11-22T03:10:00.000Z", "intervals": 5, "verdict": "passed", "move": "advance",
         "checks": [{"name": "canary_latency", "status": "passed", "value": 45.0, "limit": 500.0}]},
        {"name": "5%", "share": 0.05, "shadow": False, "started_at": "2026-11-22T03:10:00.000Z",
         "ended_at": "2026-11-22T03:20:00.000Z", "intervals": 3, "verdict": "failed", "move": "abort",
         "checks": [{"name": "canary_latency", "status": "failed", "value": 612.5, "limit": 500.0}]},
    ],
    "controls": [{"action": "pause", "who": "alice", "why": "looking at latency", "step": "5%", "applied": True,
                  "at": datetime(2026, 11, 22, 3, 12, tzinfo=UTC).timestamp()}],
}
# (request_id, served_at, user, version, slot, movies)
SERVED = [
    ("req-a", T0, 42, 1, "stable_1", "m9,m8,m7"),
    ("req-b", T0 + HOUR, 42, 2, "canary", "m1,m2,m3"),
    ("req-c", T0 + HOUR + timedelta(seconds=1), 7, 1, "stable_2", "m4,m5,m6"),
    ("req-d", T0 + 4 * HOUR, 42, 2, "stable_1", "m1,m3,m2"),
]


def event_log() -> str:
    """The lists of req-b and req-c as the client logged them; user 42 then watches 60 min of m1 and rates it 4."""
    lines = []
    for _rid, when, user, _v, _slot, movies in SERVED[1:3]:
        lines.append(f"{when.isoformat().replace('+00:00', '')},{user},recommendation request host-1:8082, "
                     f"status 200, result: {', '.join(movies.split(','))}, 12 ms")
    start = T0 + HOUR + timedelta(seconds=60)
    lines += [f"{(start + timedelta(seconds=i)).isoformat().replace('+00:00', '')},42,GET /data/m/m1/{i}.mpg"
              for i in range(60)]
    lines.append(f"{(start + timedelta(seconds=200)).isoformat().replace('+00:00', '')},42,GET /rate/m1=4")
    return "\n".join(lines) + "\n"


@dataclass
class Seeded:
    url: str
    settings: MySQL
    models: Path
    run: Path


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return 0


@pytest.fixture(scope="module")
def console(mariadb: MariaDB, tmp_path_factory) -> Iterator[Seeded]:
    """Seeded database, files and event log; the console running on a free port for the module (read only)."""
    tmp_path = tmp_path_factory.mktemp("console")
    mariadb.start()  # a no-op when it runs
    mysql_settings = mariadb.settings(fresh_database_name(), tmp_path / "spool")
    store.apply_schema(mysql_settings)
    for version, row in VERSIONS.items():
        store.record_tracking(mysql_settings, {"version_number": version, **row})
    for row in RELEASES:
        extra = STEPS if row["outcome"] == "aborted" else {}
        store.record_release(mysql_settings, {**row, **extra})
    conn = store.connect(mysql_settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reccom (row_id, request_id, served_at_ms, user_id, version_number, slot, host, "
                "latency_ms, movies) VALUES (%s, %s, %s, %s, %s, %s, 'host-1', 3.5, %s)",
                [(rid, rid, ms(when), user, v, slot, movies) for rid, when, user, v, slot, movies in SERVED],
            )
    finally:
        conn.close()

    models, run, data = tmp_path / "models", tmp_path / "run", tmp_path / "data"
    (models / "2" / "reports").mkdir(parents=True)
    (models / "2" / "reports" / "evaluation.html").write_text(
        "<!doctype html><h1>Evaluation of version 2</h1><p>RMSE 0.9175</p>")
    (models / "2" / "reports" / "evaluation.json").write_text(json.dumps({"rmse": 0.9175}))
    (models / "2" / "metadata.json").write_text("{}")  # the bundle's own files: not reports, never listed
    (models / "2" / "ids.json").write_text("[]")
    (run / "pipeline" / "work" / "x").mkdir(parents=True)
    (run / "pipeline" / "work" / "x" / "staged.json").write_text("{}")  # staged data: never listed
    (run / "pipeline" / "20261122T030000Z.json").write_text(json.dumps({"outcome": "release_aborted"}))
    (run / "pipeline" / "20261122T030000Z").mkdir()
    (run / "pipeline" / "20261122T030000Z" / "data.html").write_text("<!doctype html><h1>Data of the run</h1>")
    (run / "release").mkdir(parents=True)
    (run / "release" / "state.json").write_text(json.dumps({
        "candidate": 3, "previous": 2, "state": "DONE", "outcome": "aborted", "started_at": "2026-11-22T03:05:00Z",
        "checks": [{"name": "canary_latency", "status": "failed", "value": 612.5, "limit": 500.0,
                    "text": "average latency 612.5 ms > 500 ms"},
                   {"name": "error_ratio", "status": "passed", "value": 0.0066, "limit": 0.01,
                    "text": "5xx ratio upper bound below 1%"}]}))
    (run / "slots").mkdir()
    (run / "slots" / "canary").write_text("3\n")
    data.mkdir()
    (tmp_path / "version.txt").write_text("2\n")
    (run / "logs").mkdir()
    (run / "logs" / "events.log").write_text(event_log())

    port = free_port()
    env = {**os.environ, **settings_env(mysql_settings), "CONSOLE_PORT": str(port), "CONSOLE_BIND": "127.0.0.1",
           "MOVIEREC_RUN_DIR": str(run), "MOVIEREC_MODELS_DIR": str(models), "MOVIEREC_DATA_DIR": str(data),
           "MOVIEREC_VERSION_FILE": str(tmp_path / "version.txt")}
    env.pop("CONSOLE_REPORT_DIRS", None)
    env.pop("CONSOLE_EVENT_LOG", None)
    log = (tmp_path / "console.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "auto_deployment", "console"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # a loaded CI machine: Python and gunicorn start in seconds, not 60
        while _get(f"{url}/health") != 200:
            assert proc.poll() is None, (tmp_path / "console.log").read_text()
            assert time.monotonic() < deadline, "console not ready in 60 s:\n" + (tmp_path / "console.log").read_text()
            time.sleep(0.1)
        yield Seeded(url, mysql_settings, models, run)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1100", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: webdriver.Chrome, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"console-{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    assert path.stat().st_size > 1000
    return path


def cells(driver: webdriver.Chrome, row_css: str) -> list[list[str]]:
    return [[td.text.strip() for td in row.find_elements(By.TAG_NAME, "td")]
            for row in driver.find_elements(By.CSS_SELECTOR, row_css)]


def test_versions_page_shows_checksums_rmse_metrics_and_lineage(console: Seeded, browser: webdriver.Chrome) -> None:
    browser.get(f"{console.url}/versions")
    assert browser.title.startswith("Versions")
    assert browser.find_element(By.ID, "stable-version").text == "2"
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions tr[id^=version-]")
    assert [r.get_attribute("id") for r in rows] == ["version-3", "version-2", "version-1"]
    for version, seeded in VERSIONS.items():
        row = browser.find_element(By.ID, f"version-{version}")
        assert row.find_element(By.CLASS_NAME, "rmse").text == f"{seeded['model_rmse']:.4f}"
        assert row.find_element(By.CLASS_NAME, "data-checksum").text == seeded["data_checksum"]
        assert row.find_element(By.CLASS_NAME, "model-checksum").text == seeded["model_checksum"]
        assert row.find_element(By.CLASS_NAME, "commit").text == seeded["code_commit"]
        for key, value in seeded["metrics"].items():
            assert f"{key} {value:.4f}" in row.text
        assert f"{seeded['train_size']} ratings" in row.text and f"factors {seeded['params']['factors']}" in row.text
    report = browser.find_element(By.ID, "version-2").find_element(By.LINK_TEXT, "reports/evaluation.html")
    shot(browser, "versions")
    report.click()
    assert browser.find_element(By.TAG_NAME, "h1").text == "Evaluation of version 2"

    browser.get(f"{console.url}/versions/2")
    lineage = browser.find_element(By.ID, "lineage").text
    assert VERSIONS[2]["data_checksum"] in lineage and VERSIONS[2]["code_commit"] in lineage
    assert "2026-11-20T02:55:00Z" in lineage and "0.9175" in lineage
    served = browser.find_element(By.ID, "served").text
    assert "users 1" in served and "requests 2" in served and "on canary 1" in served and "on stable_1 1" in served
    assert "promoted" in browser.find_element(By.ID, "version-releases").text
    shot(browser, "version-2")


def test_releases_page_shows_each_release_figures_outcome_and_the_last_checks(
    console: Seeded, browser: webdriver.Chrome
) -> None:
    browser.get(f"{console.url}/releases")
    rows = cells(browser, "#releases tr[id^=release-]")
    assert [(r[1], r[2], r[5]) for r in rows] == [("3", "2", "aborted"), ("2", "1", "promoted")]
    aborted, promoted = rows
    # canary: latency, requests, errors, ratio (derived 2/300 by the store); stable the same
    assert aborted[6:14] == ["612.5", "300", "2", f"{2 / 300:.4f}", "40.0", "1200", "0", "0.0000"]
    assert promoted[6:14] == ["41.5", "1200", "0", "0.0000", "39.0", "4800", "1", f"{1 / 4800:.4f}"]
    assert aborted[14] == "canary_latency failed: 612.5 ms > 500 ms"
    assert cells(browser, "#steps-2 table.release-steps tr.step") == [
        ["shadow (shadow)", "0.00", "2026-11-22T03:05:00.000Z", "2026-11-22T03:10:00.000Z", "5", "passed",
         "advance", "canary_latency passed 45.0000 / 500.0000"],
        ["5%", "0.05", "2026-11-22T03:10:00.000Z", "2026-11-22T03:20:00.000Z", "3", "failed", "abort",
         "canary_latency failed 612.5000 / 500.0000"],
    ]
    assert cells(browser, "#steps-2 table.release-controls tr")[1:] == [
        ["pause", "alice", "looking at latency", "2026-11-22T03:12:00Z", "5%", "True"]]
    assert cells(browser, "#checks tr")[1:] == [
        ["canary_latency", "failed", "612.5000", "500.0000", "average latency 612.5 ms > 500 ms"],
        ["error_ratio", "passed", "0.0066", "0.0100", "5xx ratio upper bound below 1%"],
    ]
    shot(browser, "releases")


def test_online_page_shows_quality_per_version_and_slot(console: Seeded, browser: webdriver.Chrome) -> None:
    browser.get(f"{console.url}/online")
    rows = cells(browser, "#online tr.online-row")
    # user 42's list (v2, canary): m1 at rank 1 -> 10; 60 of 100 min -> 4/5; rated 4 -> 10 x 0.8 + 10 x 4/5 = 16
    # user 7's list (v1, stable_2): nothing watched -> 0, no hit, no rating
    assert rows == [["2", "canary", "1", "16.000", "1.000", "4.00", "1"],
                    ["1", "stable_2", "1", "0.000", "0.000", "-", "0"]]
    shot(browser, "online")


def answered(browser: webdriver.Chrome, element_id: str):
    """The element of the page a form submission loads (a click returns before the new page is there)."""
    return WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


def test_audit_form_answers_like_audit_user(console: Seeded, browser: webdriver.Chrome) -> None:
    browser.get(f"{console.url}/audit")
    browser.find_element(By.ID, "user_id").send_keys("42")
    browser.find_element(By.ID, "since").send_keys("2026-11-20T11:00")
    browser.find_element(By.ID, "until").send_keys("2026-11-20T13:30Z")
    browser.find_element(By.ID, "submit").click()
    assert answered(browser, "summary").text == (
        "user 42: 2 request(s) between 2026-11-20T11:00:00Z and 2026-11-20T13:30:00Z, version(s) 1, 2")
    rows = cells(browser, "#requests tr.request")
    expected = [s for s in SERVED if s[2] == 42 and s[1] <= T0 + HOUR + timedelta(minutes=30)]
    assert [(r[0], r[1], r[2], r[3], r[4], r[7]) for r in rows] == [
        (audit.iso_ms(ms(when)), slot, str(v), f"{VERSIONS[v]['model_rmse']:.4f}", VERSIONS[v]["data_checksum"],
         ", ".join(movies.split(",")))
        for _rid, when, _user, v, slot, movies in expected
    ]
    # the same answer as `audit user` (the function behind it), row for row
    answer = audit.user_requests(console.settings, 42, audit.parse_time("2026-11-20T11:00"),
                                 audit.parse_time("2026-11-20T13:30Z"))
    assert [(r[0], r[1], int(r[2]), r[8]) for r in rows] == [
        (a["served_at"], a["slot"], a["version_number"], a["request_id"]) for a in answer]
    shot(browser, "audit")

    browser.find_element(By.ID, "user_id").clear()
    browser.find_element(By.ID, "user_id").send_keys("4x2")
    browser.find_element(By.ID, "submit").click()
    assert answered(browser, "error").text == "user id must be a non-negative integer below 2^63 (got '4x2')"
    assert not browser.find_elements(By.ID, "requests")
    shot(browser, "audit-bad-input")


def test_reports_page_links_every_report_and_serves_it(console: Seeded, browser: webdriver.Chrome) -> None:
    browser.get(f"{console.url}/reports")
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.reports a")]
    assert links == ["2/reports/evaluation.html", "2/reports/evaluation.json", "20261122T030000Z/data.html",
                     "20261122T030000Z.json"]
    shot(browser, "reports")
    browser.find_element(By.LINK_TEXT, "20261122T030000Z.json").click()
    assert json.loads(browser.find_element(By.TAG_NAME, "body").text) == {"outcome": "release_aborted"}


def test_overview_names_what_each_pointer_serves(console: Seeded, browser: webdriver.Chrome) -> None:
    browser.get(console.url)
    serving = dict((r[0], r[1]) for r in cells(browser, "#serving tr")[1:])
    assert serving["version.txt"] == "2" and serving["canary"] == "3" and serving["stable_1"] == "-"
    shot(browser, "overview")


def test_the_demo_stack_runs_the_console_on_loopback(tmp_path: Path) -> None:
    """`make up` (the demo) renders a `console` program: this command, loopback only, the demo's event log."""
    env = {**os.environ, "MOVIEREC_RUN_DIR": str(tmp_path / "run"), "MOVIEREC_REPO_DIR": str(ROOT),
           "CONSOLE_PORT": "18090", "CONSOLE_BIND": "0.0.0.0"}
    demo, plain = Stack.from_env(env, demo=True), Stack.from_env(env)
    assert "console" in demo.programs and "console" not in plain.programs
    assert ports(demo)["console"] == 18090 and "console" not in ports(plain)
    parser = configparser.RawConfigParser()
    parser.read_string(render("supervisord", native_context(demo)))
    program = parser["program:console"]
    assert program["command"].endswith(" -m auto_deployment console")
    assert 'CONSOLE_BIND="127.0.0.1"' in program["environment"]  # whatever the caller's environment says
    assert f'CONSOLE_EVENT_LOG="{demo.log_dir}/events.log"' in program["environment"]
    assert "program:console" not in render("supervisord", native_context(plain))
