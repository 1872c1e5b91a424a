"""The progressive steps as NGINX really applies them: the platform's nginx.conf template in front of three
real inference servers (provenance on, into a real MariaDB), moved by the release's router.

- each step's weights: the share of answers whose ``X-Slot`` says canary, over 2,000 requests, lies within
  the binomial tolerance of the step's share (`binomial_band`);
- the shadow step: live requests are also mirrored to the canary (all but those over the bound on copies in
  flight), whose answers nobody sees (every client answer comes from a stable slot), whose metrics count
  them as ``traffic="shadow"`` and which writes no provenance row for them; a client cannot claim to be a
  shadow copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binom

from app.contracts.topology import Topology, loopback_address, shadow_path, upstream_path, write_nginx_upstream
from app.settings import MySQL
from app.store import connect
from auto_deployment.release.router import NginxRouter
from ops.render import render
from tests.fixtures.ports import free_ports

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SLOTS = Topology().names
REQUESTS_PER_STEP = 2000
FALSE_ALARM = 1e-4  # chance that a correct split falls outside the band (two-sided)


def binomial_band(n: int, share: float, false_alarm: float = FALSE_ALARM) -> tuple[int, int]:
    """Counts of canary answers among `n` that a split of `share` produces with probability 1 - `false_alarm`.

    Each request goes to the canary with probability `share` (NGINX's weighted round robin is in fact far
    more regular than that: this bound is loose on purpose, so only a wrong weight fails it).
    Hand check for the 5% step: n = 2000, mean 100, sd = sqrt(2000 · 0.05 · 0.95) = 9.75, z(1 - 0.5e-4) = 3.89;
    the normal approximation gives 100 ± 37.9 = [62, 138], the exact (slightly right-skewed) binomial [64, 140].
    """
    low = int(binom.ppf(false_alarm / 2, n, share))
    high = int(binom.isf(false_alarm / 2, n, share))
    return low, high


def test_binomial_band_by_hand():
    assert binomial_band(2000, 0.05) == (64, 140)  # normal approximation: 100 ± 3.89 × 9.75 = [62, 138]
    assert binomial_band(2000, 0.5) == (913, 1087)  # symmetric: 1000 ± 3.89 × 22.36 = [913, 1087]
    assert binomial_band(2000, 0.2) == (332, 471)  # 400 ± 3.89 × 17.89 = [330, 470]


@dataclass
class Proxy:
    """The platform's NGINX (template rendered natively) and the router that moves its weights."""

    root: Path
    port: int
    router: NginxRouter
    master: int

    def workers(self) -> set[int]:
        try:
            return set(map(int, Path(f"/proc/{self.master}/task/{self.master}/children").read_text().split()))
        except OSError:
            return set()

    def step(self, share: float, shadow: bool = False) -> None:
        """Apply a step and wait until only workers of the new configuration serve."""
        before = self.workers()
        self.router.set_canary_share(share, shadow=shadow)
        deadline = time.monotonic() + 30
        while self.workers() & before or not self.workers():
            assert time.monotonic() < deadline, (self.root / "error.log").read_text()[-2000:]
            time.sleep(0.05)

    def roles(self, n: int, session: requests.Session, headers: dict[str, str] | None = None) -> Counter[str]:
        seen: Counter[str] = Counter()
        for i in range(n):
            answer = session.get(f"http://127.0.0.1:{self.port}/recommend/{1 + i % 300}", headers=headers, timeout=5)
            assert answer.status_code == 200, answer.text
            seen[answer.headers["X-Slot"]] += 1
        return seen


def _rows_by_slot(settings: MySQL) -> dict[str, int]:
    conn = connect(settings, "admin")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT slot, COUNT(*) FROM reccom GROUP BY slot")
            return {slot: int(count) for slot, count in cur.fetchall()}
    finally:
        conn.close()


def _settled_rows(settings: MySQL, total: int) -> dict[str, int]:
    """The rows by slot once `total` rows have landed (the writers flush in the background)."""
    deadline = time.monotonic() + 30
    while sum((rows := _rows_by_slot(settings)).values()) < total:
        assert time.monotonic() < deadline, f"{total} provenance rows expected, {rows}"
        time.sleep(0.2)
    return rows


def _shadow_answers(url: str) -> float:
    """The canary's /recommend answers labelled traffic="shadow" (all statuses)."""
    total = 0.0
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "recommend_requests_total" and sample.labels.get("traffic") == "shadow":
                total += sample.value
    return total


@pytest.fixture
def platform(start_server, models_root, mysql_env, mysql_settings, tmp_path) -> Iterator[tuple[Proxy, dict, MySQL]]:
    run_dir = tmp_path / "run"
    ports = free_ports(len(SLOTS) + 2)
    topology = Topology().with_ports(dict(zip(SLOTS, ports, strict=False)))
    servers = {
        slot: start_server(slot=slot, models_root=models_root, version=1, run_dir=run_dir, port=port, workers=1,
                           extra_env={**mysql_env, "MOVIEREC_PROVENANCE_FLUSH_S": "0.2"})
        for slot, port in zip(SLOTS, ports, strict=False)
    }
    root = run_dir / "nginx"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    listen = ports[len(SLOTS)]
    context = {
        "compose": False,  # natively: no console server
        "topology": topology,
        "address": loopback_address,
        "nginx": {
            "user": "root" if os.geteuid() == 0 else "",  # root: workers would otherwise run as nobody
            "pidfile": root / "nginx.pid",
            "error_log": root / "error.log",
            "access_log": root / "access.log",
            "temp": root / "tmp",
            "listen": f"127.0.0.1:{listen}",
            "status_listen": f"127.0.0.1:{ports[len(SLOTS) + 1]}",
            "status_loopback_only": True,
            "upstream": upstream_path(run_dir),
        },
    }
    conf = root / "nginx.conf"
    conf.write_text(render("nginx", context))
    write_nginx_upstream(upstream_path(run_dir), topology, loopback_address)
    subprocess.run([NGINX, "-p", str(root), "-c", str(conf)], check=True, timeout=30)
    proxy = Proxy(root, listen, NginxRouter.native(topology, run_dir), int((root / "nginx.pid").read_text()))
    try:
        yield proxy, servers, mysql_settings
    finally:
        subprocess.run([NGINX, "-p", str(root), "-c", str(conf), "-s", "stop"], check=False, timeout=30)


@pytest.mark.slow
def test_each_step_weight_is_applied_by_nginx_and_shadow_copies_reach_only_the_canary(platform):
    proxy, servers, mysql = platform
    session = requests.Session()

    for share in (0.05, 0.2, 0.5):
        proxy.step(share)
        roles = proxy.roles(REQUESTS_PER_STEP, session)
        low, high = binomial_band(REQUESTS_PER_STEP, share)
        assert set(roles) == {"stable", "canary"}
        assert low <= roles["canary"] <= high, (share, roles, (low, high))

    # shadow: no live request reaches the canary, a copy of each one does, and its answers leave no trace
    rows_before = _settled_rows(mysql, 3 * REQUESTS_PER_STEP)  # every live answer so far has its row
    mirrored_before = _shadow_answers(servers["canary"].url)
    proxy.step(0, shadow=True)
    assert shadow_path(proxy.root.parent).read_text().strip() == "mirror /_shadow;"
    n = 300
    assert proxy.roles(n, session) == {"stable": n}
    # every copy the bound on copies in flight (max_conns, nginx.conf) lets through reaches the canary: with one
    # sequential client nearly all of them; never more than one per live request
    copies, deadline = -1.0, time.monotonic() + 20
    while (now := _shadow_answers(servers["canary"].url) - mirrored_before) != copies or copies < 0.8 * n:
        assert time.monotonic() < deadline, f"the canary got {now} copies of {n} live requests"
        copies = now
        time.sleep(0.5)
    assert 0.8 * n <= copies <= n
    # a client's own X-Shadow header is dropped by NGINX: its live request keeps its provenance row
    assert proxy.roles(10, session, headers={"X-Shadow": "1"}) == {"stable": 10}
    rows = _settled_rows(mysql, 3 * REQUESTS_PER_STEP + n + 10)  # one row per live answer, none per copy
    time.sleep(1.0)  # a few flush intervals: a shadow row, if written, would have landed by now
    assert _rows_by_slot(mysql) == {**rows, "canary": rows_before["canary"]}

    # leaving the shadow step removes the mirror
    proxy.step(0.05)
    assert not shadow_path(proxy.root.parent).exists()
    mirrored = _shadow_answers(servers["canary"].url)
    proxy.roles(100, session)
    time.sleep(0.5)
    assert _shadow_answers(servers["canary"].url) == mirrored
