"""Latency where the client sees it (issue 11), through the real parts: the native stack's NGINX in front of the three
real inference servers, its access log read by mtail run as the stack runs it, scraped by the stack's Prometheus.

What the client sent and NGINX logged must be what mtail counts, exactly: counts per slot and traffic, sums to the
log's ms precision; a mirrored shadow copy is counted under traffic="shadow" on the canary, never as live latency;
and the release's latency figures (auto_deployment/release/metrics.py) are the NGINX-side averages per role.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.clock import format_duration
from app.contracts import edgelog
from auto_deployment.release.metrics import Prometheus, queries
from ops.render import check_commands, write_configs
from ops.services import Stack, ports
from tests.fixtures.edge import Edge, native_edge
from tests.fixtures.prometheus import wait_http
from tests.fixtures.stack import stack_environ

pytestmark = pytest.mark.slow

HISTOGRAM = "nginx_upstream_response_seconds"
MTAIL_PROGRAM = Path(__file__).resolve().parents[2] / "monitoring" / "mtail" / "nginx.mtail"


@pytest.fixture
def edge(tmp_path: Path, start_server, models_root: Path):
    with native_edge(tmp_path, start_server, models_root, shadow=True) as running:
        running.start_mtail()
        yield running


def mtail_samples(edge: Edge) -> list:
    text = requests.get(f"{edge.stack.mtail_url}/metrics", timeout=5).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def histogram(edge: Edge, suffix: str) -> dict[tuple[str, str, str, str], float]:
    """``{(upstream_port, traffic, status_class, route): value}`` of the histogram's _count or _sum."""
    return {(s.labels["upstream_port"], s.labels["traffic"], s.labels["status_class"], s.labels["route"]): s.value
            for s in mtail_samples(edge) if s.name == f"{HISTOGRAM}{suffix}"}


def logged(edge: Edge) -> list[dict[str, str]]:
    """The access-log lines mtail has had the chance to read (those written since it started)."""
    return [edgelog.parse(line) for line in edge.access_log.read_text().splitlines()[edge.mtail_from:]]


def expected_from_log(lines: list[dict[str, str]]) -> tuple[Counter, dict]:
    """What mtail must hold, read from the same lines by the contract's own parser."""
    counts: Counter = Counter()
    sums: dict = defaultdict(float)
    for line in lines:
        seconds = edgelog.last(line["upstream_response_time"])
        address = edgelog.last(line["upstream"])
        if ":" not in address or seconds == "-":
            continue
        uri = line["uri"]
        traffic = "shadow" if uri == edgelog.SHADOW_URI else "live"
        route = "recommend" if traffic == "shadow" or uri.startswith("/recommend/") else "other"
        key = (address.rsplit(":", 1)[1], traffic, line["status"][0] + "xx", route)
        counts[key] += 1
        sums[key] += float(seconds)
    return counts, sums


def wait_until(probe, timeout: float = 20.0, what: str = ""):
    """`probe()`'s first truthy value, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def send(edge: Edge, users: range) -> list[tuple[int, str, float]]:
    """GET /recommend/<user> for each user, one after the other: (status, X-Slot, seconds the client waited)."""
    answers = []
    for user in users:
        started = time.monotonic()
        answer = requests.get(f"{edge.url}/recommend/{user}", timeout=10)
        answers.append((answer.status_code, answer.headers.get("X-Slot", ""), time.monotonic() - started))
    return answers


def settled(edge: Edge, live: int, shadow: int) -> list[dict[str, str]]:
    """`logged` once it holds at least `live` client lines and `shadow` mirror copies, and mtail has read them all
    (its counts match the log's). The two are counted apart: a copy is logged when it ends, which can be after
    its client's line and after any other line, so a total alone can be reached with a copy still missing."""
    def enough() -> bool:
        lines = logged(edge)
        copies = sum(1 for line in lines if line["uri"] == edgelog.SHADOW_URI)
        return copies >= shadow and len(lines) - copies >= live

    wait_until(enough, what="NGINX's log lines")
    lines = logged(edge)
    counts, _ = expected_from_log(lines)
    wait_until(lambda: histogram(edge, "_count") == dict(counts), what="mtail to read every line")
    return lines


def test_the_mtail_program_compiles_and_names_the_contract_fields_in_order():
    done = subprocess.run(["mtail", "--compile_only", "--progs", str(MTAIL_PROGRAM.parent), "--logtostderr"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    regex = next(line for line in MTAIL_PROGRAM.read_text().splitlines() if line.startswith("/^time="))
    positions = [regex.index(f" {name}=") if name != "time" else 0 for name, _, _ in edgelog.FIELDS]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_the_native_stack_runs_mtail_on_its_own_port_and_prometheus_maps_its_ports_to_slots(tmp_path: Path):
    stack = Stack.from_env(stack_environ(tmp_path))
    write_configs(stack)
    assert stack.mtail_port == Stack.from_env(stack_environ(tmp_path)).mtail_port  # kept in the run directory
    assert "mtail" in stack.programs and ports(stack)["mtail"] == stack.mtail_port
    command = Edge(stack, {}).program_command("mtail")
    assert command[command.index("--port") + 1] == str(stack.mtail_port)
    assert command[command.index("--logs") + 1] == str(stack.log_dir / "nginx.access.log")
    done = subprocess.run(check_commands(stack)["prometheus"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(stack.config_path("prometheus").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "nginx_log"]
    assert job["static_configs"] == [{"targets": [f"127.0.0.1:{stack.mtail_port}"]}]
    assert {(r["regex"], r["replacement"]) for r in job["metric_relabel_configs"]} == {
        (str(slot.port), slot.name) for slot in stack.topology.slots}
    # NGINX's log format is the contract's, field for field
    conf = stack.config_path("nginx").read_text()
    log_format = conf.split("log_format movierec")[1].split(";")[0]
    assert "".join(re.findall(r"'([^']*)'", log_format)) == " ".join(
        f'{name}="{var}"' if quoted else f"{name}={var}" for name, var, quoted in edgelog.FIELDS)


def test_mtail_counts_what_the_client_sent_per_slot_and_the_shadow_copies_apart(edge: Edge):
    n = 60
    answers = send(edge, range(1, n + 1))
    extra = [requests.get(f"{edge.url}{path}", timeout=5).status_code for path in ("/health", "/recommend/x", "/nope")]
    assert extra == [200, 400, 404]
    assert all(status == 200 for status, _, _ in answers)
    # each /recommend/ request is mirrored to the canary (shadow.conf), and each copy has its own line
    lines = settled(edge, live=n + 3, shadow=n + 1)  # /recommend/x is copied too
    counts, sums = expected_from_log(lines)
    mtail_counts, mtail_sums = histogram(edge, "_count"), histogram(edge, "_sum")
    topology = edge.stack.topology
    port_role = {str(slot.port): slot.role for slot in topology.slots}
    canary = str(topology.canary.port)

    # live answers: mtail's counts per role are the client's own counts of X-Slot, exactly
    client_roles = Counter(role for _, role, _ in answers)
    live_roles = Counter()
    for (port, traffic, status_class, route), value in mtail_counts.items():
        if (traffic, status_class, route) == ("live", "2xx", "recommend"):
            live_roles[port_role[port]] += int(value)
    assert live_roles == client_roles and sum(client_roles.values()) == n
    assert client_roles["canary"] == pytest.approx(n / 5, abs=2)  # the resting 2/2/1 split

    # the shadow copies: only on the canary, under traffic="shadow", one per live request. A copy over the shadow
    # group's max_conns is NGINX's own 502 with no server (upstream "shadow"), thrown away by design (see
    # nginx.conf.template): a busy machine sheds a few, which reach no slot and so no slot's series.
    copies = [line for line in lines if line["uri"] == edgelog.SHADOW_URI]
    shed = [line for line in copies if ":" not in edgelog.last(line["upstream"])]
    assert len(copies) == n + 1 and all(line["status"] == "502" for line in shed) and len(shed) <= n // 10
    reached = Counter("4xx" if line["request"].startswith("GET /recommend/x ") else "2xx"
                      for line in copies if line not in shed)  # /recommend/x is copied too, and answered 400
    shadow = {key: value for key, value in mtail_counts.items() if key[1] == "shadow"}
    assert shadow == {(canary, "shadow", status_class, "recommend"): k for status_class, k in reached.items()}
    assert mtail_counts[(canary, "live", "2xx", "recommend")] == client_roles["canary"]

    # per slot, traffic and class: mtail's histogram is the log, counts exactly and sums to the log's ms precision
    assert mtail_counts == dict(counts)
    for key, total in sums.items():
        assert mtail_sums[key] == pytest.approx(total, abs=1e-9 * counts[key] + 1e-12), key
    # the 400 of /recommend/x is a client error with a server's time; /health is route="other"
    assert any(key[2:] == ("4xx", "recommend") for key in mtail_counts)
    assert any(key[3] == "other" for key in mtail_counts)
    requests_total = {(s.labels["route"], s.labels["traffic"], s.labels["status_class"]): s.value
                      for s in mtail_samples(edge) if s.name == "nginx_requests_total"}
    assert requests_total[("other", "live", "4xx")] == 1  # /nope: NGINX's own 404, no upstream, no latency
    # the client waited at least what NGINX measured for the server (plus the network and NGINX)
    live_sum = sum(v for k, v in mtail_sums.items() if k[1:] == ("live", "2xx", "recommend"))
    assert sum(seconds for _, _, seconds in answers) >= live_sum - 0.001 * n


def _query(url: str, promql: str) -> list[dict]:
    params = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=5) as response:
        return json.load(response)["data"]["result"]


def _scraped(url: str, role_selector: str, expected: float, after: float) -> float | None:
    """Timestamp of the newest scraped sample of the role's NGINX-side count if it was taken after `after` (when mtail
    had read every line: so it holds every role's lines, not only this one's) and equals `expected`."""
    promql = f'sum({HISTOGRAM}_count{{{role_selector},route="recommend",status_class="2xx"}})'
    result = _query(url, promql)
    if not result or float(result[0]["value"][1]) != expected:
        return None
    stamps = _query(url, f'max(timestamp({HISTOGRAM}_count{{{role_selector},route="recommend"}}))')
    stamp = float(stamps[0]["value"][1])
    return stamp if stamp > after else None


def test_the_release_latency_figures_are_the_nginx_side_averages_per_role(edge: Edge):
    stack = edge.stack
    log = (stack.log_dir / "prometheus.log").open("ab")
    prometheus = subprocess.Popen(edge.program_command("prometheus"), stdout=log, stderr=subprocess.STDOUT)
    edge.procs.append(prometheus)
    log.close()
    wait_http(f"{stack.prometheus_url}/-/ready", 60)
    topology = stack.topology
    canary_sel = topology.selector("canary")
    canary_port = str(topology.canary.port)

    def canary_answers(lines: list[dict[str, str]]) -> float:
        counts, _ = expected_from_log(lines)
        return sum(v for (port, _, cls, route), v in counts.items() if port == canary_port and cls == "2xx")

    # batch A makes the series exist; once Prometheus holds all of A, batch B is what a window after it sees
    send(edge, range(1, 31))
    lines_a = settled(edge, live=30, shadow=30)  # 30 answers, 30 copies
    read_a = time.time()
    t0 = wait_until(lambda: _scraped(stack.prometheus_url, canary_sel, canary_answers(lines_a), read_a), timeout=30,
                    what="Prometheus to scrape batch A")
    send(edge, range(31, 91))
    copies_a = sum(1 for line in lines_a if line["uri"] == edgelog.SHADOW_URI)
    lines = settled(edge, live=len(lines_a) - copies_a + 60, shadow=copies_a + 60)
    batch_b = lines[len(lines_a):]
    read_b = time.time()
    t_b = wait_until(lambda: _scraped(stack.prometheus_url, canary_sel, canary_answers(lines), read_b), timeout=30,
                     what="Prometheus to scrape batch B")
    # The window starts 10 ms before A's complete sample and ends at or after B's: its increase is batch B, and
    # Prometheus's extrapolation to the window's ends scales every series alike (no "extrapolate to zero" limit
    # within 10 ms), so the ratio of rates is B's exact average.
    window_s = math.ceil(t_b - t0 + 0.02)
    at = t0 + window_s - 0.01
    buckets = [float(b) for b in MTAIL_PROGRAM.read_text().split(f"histogram {HISTOGRAM} ")[1]
               .split("buckets ")[1].splitlines()[0].split(",")]

    def average_ms(role: str) -> float:
        ports = {str(s.port) for s in topology.slots if s.role == role}
        times = [float(edgelog.last(line["upstream_response_time"])) for line in batch_b
                 if edgelog.last(line["upstream"]).rsplit(":", 1)[-1] in ports and line["status"] == "200"]
        return 1000 * sum(times) / len(times)

    # the release's own queries (the other figures read the servers' counters, scraped on their own schedule)
    prom = Prometheus(stack.prometheus_url, topology)
    slowest = max(float(edgelog.last(line["upstream_response_time"])) for line in batch_b)
    for role in ("canary", "stable"):
        promql = queries(topology.selector(role), 1, format_duration(window_s))
        assert "nginx_upstream_response_seconds" in promql["latency_ms"].split(" or ")[0]
        assert prom.scalar(promql["latency_ms"], at) == pytest.approx(average_ms(role), rel=1e-6), role
        assert 0 < prom.scalar(promql["p99_ms"], at) <= 1000 * min(b for b in buckets if b >= slowest)  # its bucket
