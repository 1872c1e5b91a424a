"""MetricsQuery against a real Prometheus (the Debian binary) scraping a real exposition endpoint.

The endpoint is a prometheus-client registry with the inference server's metric names and labels,
fed at a known rhythm, so the expected figures follow from what was fed. A closed port, an HTTP
error and an unknown version must all come back as `NoData` with a reason, never as numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from app.contracts.topology import Slot, Topology
from app.settings import Release
from auto_deployment.release.checks import Tail, default_checks, judge
from auto_deployment.release.metrics import QUERIES, Figures, NoData, Prometheus, QueryFailed, queries
from tests.fixtures.ports import free_port
from tests.fixtures.prometheus import running_prometheus

pytestmark = pytest.mark.services

TOPOLOGY = Topology()
TICK_S = 0.05
WINDOW_S = 4
# per tick: (slot, version, status, latency seconds, how many)
FEED = [
    ("canary", "3", "200", 0.200, 9),
    ("canary", "3", "503", 0.010, 1),
    ("canary", "2", "200", 0.900, 1),  # the old model on the canary: must not leak into version 3's figures
    ("stable_1", "2", "200", 0.050, 2),
    ("stable_2", "2", "200", 0.030, 2),
    ("canary", "4", "200", 0.020, 5),  # another candidate whose clients send many malformed requests:
    ("canary", "4", "400", 0.001, 5),  # /recommend/bad1 answered 400 is the client's mistake
]


class Feeder:
    """Serves /metrics with the inference server's metric names and increments them every tick."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["slot", "version", "status"]
        self.latency = Histogram("recommend_latency_seconds", "latency", labels, registry=self.registry)
        self.requests = Counter("recommend_requests_total", "answers", labels, registry=self.registry)
        self.port = free_port()
        self.stop = threading.Event()
        self.ticks: list[float] = []  # wall-clock time of each tick

    def run(self) -> None:
        while not self.stop.wait(TICK_S):
            self.ticks.append(time.time())
            for slot, version, status, seconds, n in FEED:
                for _ in range(n):
                    self.latency.labels(slot, version, status).observe(seconds)
                    self.requests.labels(slot, version, status).inc()


@pytest.fixture(scope="module")
def prometheus_and_feeder(tmp_path_factory) -> Iterator[tuple[str, Feeder]]:
    """A Prometheus that has scraped the feeder (1 s interval) for a few seconds, and the feeder."""
    feeder = Feeder()
    server, server_thread = start_http_server(feeder.port, addr="127.0.0.1", registry=feeder.registry)
    feed = threading.Thread(target=feeder.run, daemon=True)
    feed.start()
    root: Path = tmp_path_factory.mktemp("prometheus")
    try:
        with running_prometheus(root, f"127.0.0.1:{feeder.port}") as url:
            query = Prometheus(url, TOPOLOGY)
            deadline = time.monotonic() + 30
            samples = (f'count_over_time(recommend_requests_total{{slot="canary",version="3",status="200"}}'
                       f'[{WINDOW_S}s])')
            while True:  # until a whole window of 1 s scrapes of the candidate's series is stored
                try:
                    if query.scalar(samples, time.time()) >= WINDOW_S:
                        break
                except QueryFailed:
                    pass
                assert time.monotonic() < deadline, (root / "prometheus.log").read_text()[-2000:]
                time.sleep(0.5)
            yield url, feeder
    finally:
        feeder.stop.set()
        server.shutdown()
        server_thread.join(timeout=5)


@pytest.fixture
def fed_prometheus(prometheus_and_feeder) -> str:
    return prometheus_and_feeder[0]


def test_canary_figures_follow_what_the_candidate_version_served(prometheus_and_feeder):
    url, feeder = prometheus_and_feeder
    figures = Prometheus(url, TOPOLOGY).figures("canary", 3, window_s=WINDOW_S)

    assert isinstance(figures, Figures)
    # every successful version-3 answer took 200 ms; the old version's 900 ms answers must not count
    assert figures["latency_ms"] == pytest.approx(200.0, rel=1e-6)
    assert figures["error_ratio"] == pytest.approx(0.1, abs=0.03)
    per_tick = sum(n for slot, version, *_rest, n in FEED if (slot, version) == ("canary", "3"))
    fed = per_tick * sum(1 for t in list(feeder.ticks) if figures.at - WINDOW_S < t <= figures.at)
    assert 0.6 * fed < figures["requests"] < 1.4 * fed
    assert figures["errors"] == pytest.approx(figures["requests"] * figures["error_ratio"], rel=0.2)
    assert figures.window == f"{WINDOW_S}s"
    assert set(figures.as_dict()) == {*QUERIES, "window", "at"}


def test_stable_figures_cover_both_stable_replicas(fed_prometheus):
    figures = Prometheus(fed_prometheus, TOPOLOGY).figures("stable", 2, window_s=WINDOW_S)

    assert isinstance(figures, Figures)
    assert figures["latency_ms"] == pytest.approx(40.0, rel=1e-6)  # half at 50 ms, half at 30 ms
    assert figures["error_ratio"] == 0.0  # no failed request: a zero, not a missing series
    assert figures["errors"] == 0.0


def test_client_400s_never_veto_a_canary_only_its_5xx_count(fed_prometheus):
    query = Prometheus(fed_prometheus, TOPOLOGY)
    canary = query.figures("canary", 4, window_s=WINDOW_S)
    assert isinstance(canary, Figures)
    assert canary["errors"] == 0.0 and canary["error_ratio"] == 0.0  # half its answers were 400s
    assert canary["requests"] >= 299  # every answer is in the sample, 400s included
    checks = default_checks(Release.from_env(), Tail(p99_min_requests=100))  # the feed's 4 s window holds ~320
    verdict = judge(checks, canary, query.figures("stable", 2, window_s=WINDOW_S))
    assert verdict.passed, verdict.reason
    # the candidate with 503s is judged on them: 10% of its answers, far over the 1% limit
    failing = judge(checks, query.figures("canary", 3, window_s=WINDOW_S),
                    query.figures("stable", 2, window_s=WINDOW_S))
    assert not failing.passed and "5xx ratio 0.1" in failing.reason


def test_p99_is_interpolated_within_the_bucket_that_holds_it(fed_prometheus):
    # prometheus-client's default buckets: every version-3 success (200 ms) lies in (100, 250] ms, so
    # histogram_quantile puts the 99th percentile at 100 + 0.99 × 150 = 248.5 ms; every stable success (30 or
    # 50 ms) in (25, 50]: 25 + 0.99 × 25 = 49.75 ms. Version 3 then fails "p99 <= 2 × stable + 10 ms" (109.5).
    query = Prometheus(fed_prometheus, TOPOLOGY)
    canary, stable = query.figures("canary", 3, window_s=WINDOW_S), query.figures("stable", 2, window_s=WINDOW_S)
    assert isinstance(canary, Figures) and isinstance(stable, Figures)
    assert canary["p99_ms"] == pytest.approx(248.5, rel=1e-9)
    assert stable["p99_ms"] == pytest.approx(49.75, rel=1e-9)
    checks = default_checks(Release.from_env(), Tail(p99_min_requests=100))  # the feed's 4 s window holds ~320
    [p99] = [r for r in judge(checks, canary, stable).results if r.name == "p99_vs_stable"]
    assert (p99.status, p99.limit) == ("failed", pytest.approx(109.5))


def test_version_without_series_is_no_data_with_a_reason(fed_prometheus):
    result = Prometheus(fed_prometheus, TOPOLOGY).figures("canary", 99, window_s=WINDOW_S)
    assert isinstance(result, NoData)
    assert "empty result" in result.reason and "99" in result.reason


def test_closed_port_is_no_data_saying_unreachable():
    result = Prometheus(f"http://127.0.0.1:{free_port()}", TOPOLOGY, timeout_s=2).figures("canary", 3, 30)
    assert isinstance(result, NoData)
    assert "unreachable" in result.reason


def test_http_error_of_prometheus_is_no_data(fed_prometheus):
    result = Prometheus(f"{fed_prometheus}/no-such-prefix", TOPOLOGY).figures("canary", 3, window_s=WINDOW_S)
    assert isinstance(result, NoData)
    assert "HTTP 404" in result.reason


def test_queries_select_the_roles_slots_from_the_topology_and_one_version():
    stable = queries(TOPOLOGY.selector("stable"), 2, "15m")
    assert set(stable) == set(QUERIES)
    assert 'recommend_requests_total{slot=~"stable_1|stable_2",version="2"}[15m]' in stable["requests"]
    assert '{slot=~"stable_1|stable_2",version="2",status="200"}' in stable["latency_ms"]
    four = Topology((*TOPOLOGY.slots[:2], Slot("stable_3", "stable", 5004, 2),
                     TOPOLOGY.slots[2]))
    assert 'slot=~"stable_1|stable_2|stable_3"' in queries(four.selector("stable"), 2, "15m")["errors"]
    # only the server's failures count: a 4xx is the client's mistake
    assert 'slot="canary",version="3",status=~"5.."' in queries(four.selector("canary"), 3, "1m")["errors"]
