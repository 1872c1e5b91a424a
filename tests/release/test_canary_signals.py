"""What the release sees of a real canary: a Gunicorn inference server scraped by a real Prometheus.

A version swapped into the slot must show its zero series before its first request (a counter born at
its first increment hides the first burst from ``increase()``), and the server's own failures (503s of
the fault drill) must fail the 5xx check while the clients' 400s in the same window do not count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.contracts.topology import Topology
from app.metrics import STATUSES
from app.settings import Release
from auto_deployment.release.checks import FAILED, default_checks, judge
from auto_deployment.release.metrics import Figures, Prometheus, QueryFailed
from tests.fixtures.prometheus import running_prometheus

pytestmark = pytest.mark.services

SLOT = "canary"


@pytest.fixture(scope="module")
def canary(start_server_module, models_root):
    """A canary slot on version 1 that has answered no /recommend yet."""
    return start_server_module(slot=SLOT, models_root=models_root, version=1, workers=1)


@pytest.fixture(scope="module")
def prometheus(canary, tmp_path_factory) -> Iterator[str]:
    """A Prometheus scraping the canary every second (its slot and version labels kept)."""
    root: Path = tmp_path_factory.mktemp("prometheus-canary")
    with running_prometheus(root, f"127.0.0.1:{canary.port}") as url:
        yield url


def _requests_series(text: str) -> dict[tuple[str, str, str], float]:
    """(version, status, traffic) -> value of the canary's recommend_requests_total in an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name != "recommend_requests":
            continue
        for sample in family.samples:
            if sample.name == "recommend_requests_total" and sample.labels.get("slot") == SLOT:
                found[sample.labels["version"], sample.labels["status"], sample.labels["traffic"]] = sample.value
    return found


def test_a_swapped_in_version_shows_zero_series_before_its_first_request(canary):
    since = canary.log_size()
    canary.set_pointer(2)
    canary.wait_workers_on(2, since)

    series = _requests_series(canary.get("/metrics").text)

    # live answers and the shadow step's mirrored copies alike
    wanted = [(status, traffic) for status in STATUSES for traffic in ("live", "shadow")]
    assert {key: series.get(("2", *key)) for key in wanted} == dict.fromkeys(wanted, 0.0)
    assert set(STATUSES) >= {"200", "400", "503"}


def test_the_canarys_503s_fail_the_release_and_the_clients_400s_do_not_count(canary, prometheus):
    query = Prometheus(prometheus, Topology())
    deadline = time.monotonic() + 30
    while True:  # Prometheus has scraped the zero series of version 2 before the first request
        try:
            if query.scalar(f'sum(count_over_time(recommend_requests_total{{slot="{SLOT}",version="2"}}[1m]))',
                            time.time()) >= 2 * len(STATUSES):
                break
        except QueryFailed:
            pass
        assert time.monotonic() < deadline, "Prometheus never scraped the canary"
        time.sleep(0.5)
    started = time.time()
    canary.set_faults(error_ratio=0.2)
    try:
        deadline = time.monotonic() + 10
        while canary.get("/recommend/5").status_code != 503:  # the drill is live
            assert time.monotonic() < deadline, "the fault drill never answered 503"
        answers = {200: 0, 400: 0, 503: 0}
        with requests.Session() as session:
            for i in range(400):
                answers[session.get(f"{canary.url}/recommend/{1 + i % 300}", timeout=10).status_code] += 1
                answers[session.get(f"{canary.url}/recommend/bad1", timeout=10).status_code] += 1
    finally:
        canary.clear_faults()
    time.sleep(2.5)  # two more scrapes
    window_s = time.time() - started + 1.0

    figures = query.figures("canary", 2, window_s=window_s)

    assert isinstance(figures, Figures), figures
    assert answers[400] == 400 and answers[503] > 40
    expected = answers[503] / sum(answers.values())  # ~0.1: the 400s are in the sample, never in the errors
    assert figures["error_ratio"] == pytest.approx(expected, abs=0.04)
    # the first burst is not lost (a counter born at its first 503 would show ~0); increase() extrapolates to
    # the window's edges, so on a loaded machine with late scrapes it may read somewhat over the true count
    assert 0.75 * answers[503] <= figures["errors"] <= 1.5 * answers[503], (figures["errors"], answers[503])
    verdict = judge(default_checks(Release.from_env()), figures, None)
    assert not verdict.passed
    [error_check] = [r for r in verdict.results if r.name == "error_ratio"]
    assert error_check.status == FAILED and error_check.text.startswith("5xx ratio 0.")
