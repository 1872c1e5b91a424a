"""The native stack (`make up` / `make down`) end to end: real MariaDB, gunicorn, NGINX, Prometheus, Alertmanager.

One session stack (fixture `native_stack`, free ports, temporary run/data/models directories) serves the
read-mostly tests; the test of `down` starts a second stack of its own next to it, on other ports.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from app.contracts.topology import loopback_address, write_nginx_upstream
from app.settings import MySQL
from app.store import connect
from ops.render import write_configs
from ops.services import Stack, environment, process_info, prometheus_slots_up, supervisord_pid
from tests.fixtures.stack import SLOTS, TOPOLOGY, NativeStack, alive, stack_environ, start_native_stack

# The session stack takes 15-35 s to come up (MariaDB, default data, model 1 with its evaluation): all slow.
pytestmark = [pytest.mark.services, pytest.mark.slow]

SPLIT_REQUESTS = 2000


def _get(url: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).get(url, timeout=5)


def test_up_brings_every_part_to_ready(native_stack: NativeStack):
    stack = native_stack.stack
    assert stack.slots == SLOTS == ("stable_1", "stable_2", "canary")  # the topology's slots, all started
    for slot in SLOTS:
        assert _get(f"{stack.slot_url(slot)}/ready").status_code == 200, slot
    health = _get(f"{stack.nginx_url}/health")
    assert (health.status_code, health.text.strip()) == (200, "ok")
    assert _get(f"{stack.prometheus_url}/-/ready").status_code == 200
    assert _get(f"{stack.alertmanager_url}/-/ready").status_code == 200
    assert prometheus_slots_up(stack) == set(SLOTS)
    assert "stub_status" not in _get(f"{stack.nginx_url}/stub_status").text
    assert "Active connections" in _get(stack.nginx_status_url).text
    assert native_stack.mariadb_pid() is not None
    # `up` says where everything is.
    for url in (stack.nginx_url, stack.prometheus_url, stack.alertmanager_url, str(stack.log_dir)):
        assert url in native_stack.up_output


def test_up_wrote_default_data_trained_model_1_and_points_every_slot_at_it(native_stack: NativeStack):
    stack = native_stack.stack
    assert stack.version_file.read_text().strip() == "1"
    metadata = json.loads((stack.models_dir / "1" / "metadata.json").read_text())
    assert str(metadata["version"]) == "1"
    assert any(stack.data_dir.iterdir())
    for slot in SLOTS:
        assert stack.pointer(slot).read_text().strip() == "1"
        assert _get(f"{stack.slot_url(slot)}/recommend/1").headers["X-Model-Version"] == "1"
    # ... and gave it its tracking row, so an auditor can tell what data and RMSE it had.
    (row,) = _query(native_stack, "SELECT version_number, data_checksum, model_rmse FROM tracking")
    assert row[0] == 1 and row[1] == metadata["data_checksum"]
    assert row[2] == pytest.approx(metadata["metrics"]["rmse"])


def _query(native_stack: NativeStack, sql: str) -> list[tuple]:
    """Run `sql` on the stack's provenance database as the read-only auditor."""
    with environment(native_stack.env):
        settings = MySQL.from_env()
    conn = connect(settings, "auditor")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_prometheus_loaded_the_alert_rules_and_knows_alertmanager(native_stack: NativeStack):
    stack = native_stack.stack
    rules = _get(f"{stack.prometheus_url}/api/v1/rules").json()["data"]["groups"]
    alerts = {r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting"}
    assert {"TargetDown", "InferenceServerDown", "RecommendationFailuresHigh"} <= alerts
    managers = _get(f"{stack.prometheus_url}/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"]
    assert [m["url"] for m in managers] == [f"{stack.alertmanager_url}/api/v2/alerts"]


def test_status_reports_every_part_ready(native_stack: NativeStack):
    done = native_stack.ops("status")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (*SLOTS, "nginx", "prometheus", "alertmanager"):
        assert re.search(rf"^\s+{name}\s+RUNNING", done.stdout, re.M), name


def test_make_up_again_is_safe_and_restarts_nothing(native_stack: NativeStack):
    before = native_stack.pids()
    done = native_stack.make("up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout
    assert native_stack.pids() == before


def test_nginx_splits_80_20_between_stable_and_canary_without_a_failure(native_stack: NativeStack):
    session = requests.Session()
    slots: collections.Counter[str] = collections.Counter()
    failed = 0
    for i in range(SPLIT_REQUESTS):
        response = _get(f"{native_stack.stack.nginx_url}/recommend/{i % 500}", session)
        failed += response.status_code != 200
        slots[response.headers.get("X-Slot", "none")] += 1
    assert failed == 0
    assert set(slots) == {"stable", "canary"}
    # the split the topology's weights (2/2/1) define, as NGINX really applies it
    assert float(TOPOLOGY.canary_share()) == 0.20
    assert slots["canary"] / SPLIT_REQUESTS == pytest.approx(0.20, abs=0.03)


def _canary_share(url: str, requests_n: int) -> float:
    with requests.Session() as session:
        slots = collections.Counter(_get(f"{url}/recommend/{i % 500}", session).headers["X-Slot"]
                                    for i in range(requests_n))
    return slots["canary"] / requests_n


def _reload_nginx(stack: Stack) -> None:
    """What the release's router does after rewriting the upstream file: a graceful reload (SIGHUP)."""
    os.kill(int(stack.nginx_pidfile.read_text().strip()), signal.SIGHUP)
    time.sleep(1.0)  # new workers take over; the old ones finish their requests and exit


def test_the_split_changes_at_run_time_by_rewriting_only_the_upstream_file(native_stack: NativeStack):
    stack = native_stack.stack
    conf_before = stack.config_path("nginx").read_text()
    at_rest = stack.nginx_upstream.read_text()
    assert at_rest == stack.topology.nginx_servers(loopback_address)
    try:
        write_nginx_upstream(stack.nginx_upstream, stack.topology.with_canary_share(0.5), loopback_address)
        _reload_nginx(stack)
        assert _canary_share(stack.nginx_url, 1000) == pytest.approx(0.5, abs=0.05)
        # `up` on the live stack keeps the split a release has set (and reloads nothing it need not)
        done = native_stack.ops("up")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "reloaded nginx" not in done.stdout
        assert stack.nginx_upstream.read_text() == stack.topology.with_canary_share(0.5).nginx_servers(
            loopback_address)
    finally:
        write_nginx_upstream(stack.nginx_upstream, stack.topology, loopback_address)
        _reload_nginx(stack)
    assert stack.config_path("nginx").read_text() == conf_before
    assert _canary_share(stack.nginx_url, 1000) == pytest.approx(0.2, abs=0.04)


def test_requests_through_nginx_are_recorded_in_provenance_by_the_slot_that_served_them(native_stack: NativeStack):
    stack = native_stack.stack
    served = {}
    session = requests.Session()
    for user in range(900_001, 900_021):
        response = _get(f"{stack.nginx_url}/recommend/{user}", session)
        served[response.headers["X-Request-Id"]] = response.headers["X-Slot"]
    ids = ", ".join(f"'{rid}'" for rid in served)
    deadline = time.monotonic() + 15
    rows: list[tuple] = []
    while time.monotonic() < deadline and len(rows) < len(served):
        rows = _query(native_stack, f"SELECT request_id, slot, version_number FROM reccom WHERE request_id IN ({ids})")
        time.sleep(0.3)
    assert len(rows) == len(served)
    for request_id, slot, version in rows:
        assert (slot.split("_")[0], version) == (served[request_id], 1)


def test_metrics_and_internal_routes_are_not_reachable_through_nginx(native_stack: NativeStack):
    stack = native_stack.stack
    for path in ("/metrics", "/ready", "/version", "/", "/stub_status", "/metrics/recommend/1"):
        assert _get(f"{stack.nginx_url}{path}").status_code == 404, path
    # ... while the servers do expose them (so the 404 is NGINX's doing).
    metrics = _get(f"{stack.slot_url('canary')}/metrics")
    assert metrics.status_code == 200 and "recommend_requests_total" in metrics.text


def test_nginx_hands_its_request_id_to_the_server_that_answered(native_stack: NativeStack):
    stack = native_stack.stack
    response = _get(f"{stack.nginx_url}/recommend/42")
    request_id = response.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # NGINX's $request_id
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        access = (stack.log_dir / "nginx.access.log").read_text()
        if request_id in access:
            break
        time.sleep(0.1)
    line = next(line for line in access.splitlines() if request_id in line)
    upstream = re.search(r"upstream=(\S+)", line).group(1)
    assert upstream in {f"127.0.0.1:{port}" for port in stack.slot_ports.values()}
    assert re.search(r"upstream_response_time=[0-9.]+ ", line) and "request_time=" in line


@pytest.mark.slow
def test_killing_a_stable_server_under_load_fails_no_request(native_stack: NativeStack):
    stack = native_stack.stack
    victim = process_info(stack)["stable_1"]["pid"]
    stop = threading.Event()
    results: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            try:
                status = str(_get(f"{stack.nginx_url}/recommend/{(7 * i + k) % 500}", session).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                results[status] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)  # the gunicorn master: its workers are orphaned and drain away
        time.sleep(5.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results["200"] > 100
    assert set(results) == {"200"}, results
    # supervisor restarted it; leave the stack whole for the other tests.
    native_stack.wait_slot_ready("stable_1", timeout=90)
    assert process_info(stack)["stable_1"]["pid"] != victim


@pytest.mark.slow
def test_down_stops_every_process_it_started_and_nothing_else(native_stack: NativeStack, tmp_path):
    # A second stack beside the session's one, on its own ports, with a copy of the trained model.
    models = tmp_path / "models"
    shutil.copytree(native_stack.stack.models_dir, models)
    second = start_native_stack(tmp_path / "second", models_dir=models, data_dir=native_stack.stack.data_dir)
    started = second.pids()
    assert {"supervisord", *SLOTS, "nginx", "prometheus", "alertmanager", "mariadb"} <= set(started)
    assert any(name.startswith("stable_1/") for name in started), "gunicorn workers not found"
    others = native_stack.pids()

    done = second.make("down")
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in started.values()):
        time.sleep(0.1)
    assert [name for name, pid in started.items() if alive(pid)] == []
    assert supervisord_pid(second.stack) is None
    assert not second.stack.supervisor_pidfile.exists()
    # The session's stack is untouched.
    assert native_stack.pids() == others
    # And down again is harmless.
    again = second.ops("down")
    assert again.returncode == 0 and "not running" in again.stdout


def test_alertmanager_delivers_an_alert_to_slack_and_email(tmp_path, notify_settings, slack_receiver, smtp_receiver):
    # The rendered config of the native stack, with the notify settings pointing at real local receivers.
    stack = dataclasses.replace(Stack.from_env(stack_environ(tmp_path)), notify=notify_settings)
    write_configs(stack)
    command = [
        "prometheus-alertmanager", f"--config.file={stack.config_path('alertmanager')}",
        f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{stack.alertmanager_port}",
        "--cluster.listen-address=",
    ]
    with (tmp_path / "alertmanager.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(f"{stack.alertmanager_url}/-/ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        alert = {"labels": {"alertname": "InferenceServerDown", "slot": "canary", "severity": "critical"},
                 "annotations": {"summary": "inference server canary is down"}}
        assert requests.post(f"{stack.alertmanager_url}/api/v2/alerts", json=[alert], timeout=5).status_code == 200
        deadline = time.monotonic() + 40  # group_wait is 10 s
        while (not slack_receiver.posts or not smtp_receiver.messages) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert slack_receiver.posts, (tmp_path / "alertmanager.log").read_text()
    attachment = slack_receiver.posts[0]["attachments"][0]
    assert attachment["title"] == "[FIRING] InferenceServerDown"
    assert "inference server canary is down" in attachment["text"]
    assert smtp_receiver.messages, (tmp_path / "alertmanager.log").read_text()
    assert "InferenceServerDown" in smtp_receiver.messages[0]["Subject"]
    assert {"team@example.org", "oncall@example.org"} <= set(smtp_receiver.envelopes[0][1])


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False
