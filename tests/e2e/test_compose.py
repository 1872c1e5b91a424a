"""compose.yml really runs: a Docker engine, images built here, the topology of design section 1 as containers.

The module fixture `compose_stack` starts a Docker engine when none answers (``ops/docker.sh deps`` +
``start``: root installs docker.io, docker-compose, debootstrap and iptables when missing), builds the
Debian stand-ins for the public base images and the wheelhouse (both cached: second runs skip them),
then runs ``docker-compose -f compose.yml -f compose.ops.yml -p <test project> up -d --build`` on every
default service that has a stand-in (all but grafana: no Debian package) with fresh passwords and free host
ports: NGINX published on BIND_ADDRESS, Prometheus and Alertmanager on OPS_BIND_ADDRESS (compose.ops.yml),
nothing else. At the end: ``down -v`` and, when the test started the engine, the engine is stopped again.
The last test runs the CI `deploy` job with gitlab-ci-local against this stack.

Timings (bases, wheelhouse, image build, up, total) go to reports/compose-timings.json.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from app.contracts.topology import Topology
from app.settings import ROOT
from tests.fixtures.stack import free_ports

# A cold first run (debootstrap, stand-ins, images) takes minutes on 2 shared cores, inside the first test's setup.
pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(2400)]

DOCKER_SH = ROOT / "ops" / "docker.sh"
COMPOSE_FILE = ROOT / "compose.yml"
OPS_FILE = ROOT / "compose.ops.yml"
TOPOLOGY = Topology()  # compose.yml is rendered from it: one inference service per slot
SLOTS = {slot.name: slot.service for slot in TOPOLOGY.slots}
SECRETS = ("MYSQL_ROOT_PASSWORD", "MYSQL_APP_PASSWORD", "MYSQL_AUDITOR_PASSWORD", "MYSQL_PIPELINE_PASSWORD",
           "GRAFANA_ADMIN_PASSWORD", "CONSOLE_PASSWORD")
SPLIT_REQUESTS = 1000
READY_TIMEOUT_S = 300
TIMINGS_FILE = ROOT / "reports" / "compose-timings.json"
# Host settings that would send real notices or point the stack elsewhere: never passed to compose.
_NOT_INHERITED = ("SLACK_WEBHOOK_URL", "SMTP_HOST", "SMTP_USER", "SMTP_PASSWORD", "MAIL_TO", "ALERT_WEBHOOK_URL",
                  "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "DOCKER_HOST", *SECRETS)


def _run(command: list[str], env: dict[str, str], timeout: float, what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n"
                             f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


def _engine_answers(env: dict[str, str]) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], env=env, capture_output=True, timeout=30).returncode == 0


@dataclass
class ComposeStack:
    """A running compose project: its name, environment (ports, passwords) and how to reach it."""

    project: str
    env: dict[str, str]
    env_file: Path
    ports: dict[str, int]
    services: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def compose(self, *args: str, timeout: float = 600, what: str = "docker-compose") -> subprocess.CompletedProcess:
        command = ["bash", str(DOCKER_SH), "compose", "-f", str(OPS_FILE), "-p", self.project,
                   "--env-file", str(self.env_file), *args]
        return _run(command, self.env, timeout, what)

    def get(self, service: str, url: str, timeout: float = 60) -> str:
        """GET `url` from inside `service`'s container (Python's urllib): the slots are not published."""
        code = ("import sys, urllib.request; "
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
        return self.compose("exec", "-T", service, "python3", "-c", code, url, timeout=timeout,
                            what=f"GET {url} inside {service}").stdout

    def sql(self, query: str) -> list[list[str]]:
        """Rows of `query` in the provenance database, asked inside the mysql container as root."""
        done = self.compose("exec", "-T", "mysql", "sh", "-c",
                            'mysql -uroot -p"$MYSQL_ROOT_PASSWORD" -N -B "$MYSQL_DATABASE" -e "$0"', query,
                            timeout=60, what="SQL in the mysql container")
        return [line.split("\t") for line in done.stdout.splitlines() if line]


def _stack_env(project: str, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update({name: secrets.token_hex(16) for name in SECRETS})
    env.update(
        COMPOSE_PROJECT_NAME=project,
        BIND_ADDRESS="127.0.0.1",
        OPS_BIND_ADDRESS="127.0.0.1",
        NGINX_PORT=str(ports["nginx"]),
        PROMETHEUS_PORT=str(ports["prometheus"]),
        ALERTMANAGER_PORT=str(ports["alertmanager"]),
        GRAFANA_PORT=str(ports["grafana"]),
        CONSOLE_PORT=str(ports["console"]),
        IMAGE_TAG="e2e",
    )
    return env


def _wait_recommend(stack: ComposeStack, deadline: float) -> requests.Response:
    """Poll NGINX until /recommend/1 answers 200 with 20 ids; fail with the containers' state and logs."""
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{stack.url('nginx')}/recommend/1", timeout=2)
            if response.status_code == 200 and len(response.text.strip().split(",")) == 20:
                return response
            last = f"{response.status_code} {response.text[:200]!r}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    ps = stack.compose("ps", timeout=60).stdout
    logs = stack.compose("logs", "--tail=30", timeout=120).stdout
    raise AssertionError(f"NGINX never answered /recommend/1 with 20 ids (last: {last})\n{ps}\n{logs[-8000:]}")


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    if not COMPOSE_FILE.is_file() or not DOCKER_SH.is_file():
        pytest.fail("compose.yml or ops/docker.sh is missing")
    started_total = time.monotonic()
    base_env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    started_engine = False
    if not _engine_answers(base_env):
        if os.geteuid() != 0:
            pytest.fail("no Docker engine answers and starting one (ops/docker.sh start) needs root")
        _run(["bash", str(DOCKER_SH), "deps"], base_env, 900, "installing Docker's Debian packages")
        _run(["bash", str(DOCKER_SH), "start"], base_env, 120, "starting the Docker engine")
        started_engine = True
    timings: dict[str, float] = {}
    project = f"movierec-e2e-{os.getpid()}"
    names = ("nginx", "prometheus", "alertmanager", "grafana", "console")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = _stack_env(project, ports)
    # Everything comes from `env`: an empty env file keeps a developer's .env out of the test project.
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    stack = None
    try:
        t = time.monotonic()
        _run(["bash", str(DOCKER_SH), "bases"], env, 1800, "building the base image stand-ins")
        timings["bases_s"] = time.monotonic() - t
        t = time.monotonic()
        _run(["bash", str(DOCKER_SH), "wheelhouse"], env, 1800, "building the wheelhouse")
        timings["wheelhouse_s"] = time.monotonic() - t
        services = _run(["bash", str(DOCKER_SH), "services"], env, 60, "listing services").stdout.split()
        stack = ComposeStack(project, env, env_file, ports, services, timings)
        t = time.monotonic()
        # One image at a time (compose builds sequentially); the two images are shared by several services.
        stack.compose("build", "model-init", "inference_stable_1", timeout=1800, what="building the images")
        timings["image_build_s"] = time.monotonic() - t
        t = time.monotonic()
        stack.compose("up", "-d", "--build", *services, timeout=900, what="compose up")
        _wait_recommend(stack, time.monotonic() + READY_TIMEOUT_S)
        timings["up_until_recommend_s"] = time.monotonic() - t
        yield stack
    finally:
        if stack is not None:
            t = time.monotonic()
            down = subprocess.run(["bash", str(DOCKER_SH), "compose", "-p", project, "--env-file", str(env_file),
                                   "down", "-v", "--remove-orphans"],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            timings["down_s"] = time.monotonic() - t
        if started_engine:
            subprocess.run(["bash", str(DOCKER_SH), "stop"], cwd=ROOT, env=base_env, capture_output=True,
                           text=True, timeout=180)
        timings["total_s"] = time.monotonic() - started_total
        TIMINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
        TIMINGS_FILE.write_text(json.dumps({k: round(v, 1) for k, v in timings.items()} |
                                           {"engine_started_by_test": started_engine}, indent=2) + "\n")
        if stack is not None:
            assert down.returncode == 0, f"compose down failed:\n{down.stdout}\n{down.stderr}"


# ---------------------------------------------------------------------- the running stack


def test_nginx_answers_recommend_with_20_ids_and_the_serving_headers(compose_stack: ComposeStack):
    response = requests.get(f"{compose_stack.url('nginx')}/recommend/1", timeout=5)
    assert response.status_code == 200
    ids = response.text.strip().split(",")
    assert len(ids) == 20 and len(set(ids)) == 20 and all(ids)
    assert response.headers["X-Model-Version"] == "1"
    assert response.headers["X-Slot"] in {"stable", "canary"}
    assert response.headers["X-Request-Id"]


def test_nginx_splits_traffic_80_20_and_every_request_succeeds(compose_stack: ComposeStack):
    statuses: collections.Counter[int] = collections.Counter()
    slots: collections.Counter[str] = collections.Counter()
    with requests.Session() as session:
        for i in range(SPLIT_REQUESTS):
            response = session.get(f"{compose_stack.url('nginx')}/recommend/{i % 2000}", timeout=5)
            statuses[response.status_code] += 1
            slots[response.headers.get("X-Slot", "?")] += 1
    assert statuses == {200: SPLIT_REQUESTS}
    assert set(slots) == {"stable", "canary"}
    assert abs(slots["canary"] / SPLIT_REQUESTS - 0.20) <= 0.05, slots


# The release's own wiring inside the deploy job's container: which router it builds, then one step's weights.
_ROUTE = ("import sys; from auto_deployment.release.wiring import ReleaseSettings, build_router; "
          "router = build_router(ReleaseSettings.from_env()); print(type(router).__name__); "
          "router.set_canary_share(float(sys.argv[1]), shadow=sys.argv[2] == 'shadow')")


def _canary_share(stack: ComposeStack, n: int = 400) -> float:
    slots: collections.Counter[str] = collections.Counter()
    with requests.Session() as session:
        for i in range(n):
            response = session.get(f"{stack.url('nginx')}/recommend/{i}", timeout=5)
            assert response.status_code == 200
            slots[response.headers["X-Slot"]] += 1
    return slots["canary"] / n


def test_a_release_in_the_pipeline_container_moves_nginx_weights_through_the_reload_handshake(
    compose_stack: ComposeStack,
):
    """The steps a release takes natively work in compose too: the pipeline's container cannot signal NGINX's, so
    the router writes the weights and a token on the `upstream` volume and docker/nginx-run.sh reloads NGINX."""
    try:
        for share, expected in (("0.5", 0.5), ("0", 0.0)):
            done = compose_stack.compose("run", "--rm", "--no-deps", "pipeline", "python", "-c", _ROUTE, share, "live",
                                         timeout=300, what=f"the release's router setting the canary share {share}")
            assert "NginxRouter" in done.stdout
            assert abs(_canary_share(compose_stack) - expected) <= 0.06
        # shadow: no user meets the canary, which still gets a copy of every request (labelled traffic="shadow")
        compose_stack.compose("run", "--rm", "--no-deps", "pipeline", "python", "-c", _ROUTE, "0", "shadow",
                              timeout=300, what="the release's router starting a shadow step")
        assert _canary_share(compose_stack, 100) == 0.0
        query = 'sum(recommend_requests_total{slot="canary",traffic="shadow"})'
        # a copy over the shadow group's max_conns is NGINX's own 502, thrown away by design (nginx.conf.template):
        # a loaded machine sheds a few, as test_edge_latency counts; at most a tenth here
        deadline, copies = time.monotonic() + 60, 0.0
        while time.monotonic() < deadline and copies < 90:
            result = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query", params={"query": query},
                                  timeout=5).json()["data"]["result"]
            copies = float(result[0]["value"][1]) if result else 0.0
            time.sleep(2)
        assert copies >= 90
    finally:  # the resting 80/20 for the other tests
        compose_stack.compose("run", "--rm", "--no-deps", "pipeline", "python", "-c", _ROUTE, "0.2", "live",
                              timeout=300, what="the router putting the resting split back")
    assert abs(_canary_share(compose_stack) - 0.2) <= 0.06


def test_nginx_latency_as_the_client_sees_it_reaches_prometheus_through_edge_metrics(compose_stack: ComposeStack):
    """NGINX's edge log on its volume, mtail in edge-metrics, Prometheus's nginx_log job: each slot gets its series,
    so the release's latency checks read NGINX's figures in compose as natively (not the handlers' own)."""
    _canary_share(compose_stack, 100)
    query = 'sum by (slot) (nginx_upstream_response_seconds_count{job="nginx_log",route="recommend",traffic="live"})'
    deadline, slots = time.monotonic() + 90, set()
    while time.monotonic() < deadline and slots != set(SLOTS):
        result = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query", params={"query": query},
                              timeout=5).json()["data"]["result"]
        slots = {r["metric"].get("slot", "") for r in result if float(r["value"][1]) > 0}
        time.sleep(3)
    assert slots == set(SLOTS)


def _slot_versions(stack: ComposeStack) -> dict[str, dict]:
    """Each slot's /version, asked from inside NGINX's neighbour (an inference container): slots are not published."""
    return {slot.name: json.loads(stack.get("inference_stable_1", f"http://{slot.service}:{slot.port}/version"))
            for slot in TOPOLOGY.slots}


def test_each_slot_container_serves_its_own_slot_on_the_internal_network(compose_stack: ComposeStack):
    for slot, version in _slot_versions(compose_stack).items():
        assert (version["slot"], str(version["version"])) == (slot, "1")
        assert version["role"] == ("canary" if slot == "canary" else "stable")


def test_only_nginx_and_the_ops_uis_are_published_and_only_on_loopback(compose_stack: ComposeStack):
    """Every published port of the project's containers, as the engine reports them: NGINX (BIND_ADDRESS) and,
    with compose.ops.yml, Prometheus and Alertmanager (OPS_BIND_ADDRESS). MySQL, Kafka and the slots: none."""
    ids = compose_stack.compose("ps", "-q", timeout=60).stdout.split()
    inspected = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=60,
                                          check=True).stdout)
    published: dict[str, set[tuple[str, str]]] = {}
    for container in inspected:
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values():
            for binding in bindings or []:
                published.setdefault(service, set()).add((binding["HostIp"], binding["HostPort"]))
    ports = compose_stack.ports
    expected = {name: {("127.0.0.1", str(ports[name]))} for name in ("nginx", "prometheus", "alertmanager")}
    expected["nginx"].add(("127.0.0.1", str(ports["console"])))  # NGINX's console server (compose.ops.yml)
    assert published == expected
    # ... and they answer, while NGINX forwards nothing but /recommend and /health
    assert requests.get(f"{compose_stack.url('nginx')}/health", timeout=5).status_code == 200
    assert requests.get(f"{compose_stack.url('nginx')}/metrics", timeout=5).status_code == 404
    assert requests.get(f"{compose_stack.url('prometheus')}/-/ready", timeout=5).status_code == 200
    assert requests.get(f"{compose_stack.url('alertmanager')}/-/ready", timeout=5).status_code == 200


def test_the_console_answers_only_through_nginx_with_the_operators_password(compose_stack: ComposeStack):
    """The read-only console: NGINX's basic auth in front (password hash written by config-init), the page
    itself from the internal console container, logged in to MySQL as the auditor."""
    url = f"http://127.0.0.1:{compose_stack.ports['console']}/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=("operator", "wrong"), timeout=10).status_code == 401
    deadline = time.monotonic() + 90  # the console container may still be starting
    while True:
        page = requests.get(url, auth=("operator", compose_stack.env["CONSOLE_PASSWORD"]), timeout=10)
        if page.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert page.status_code == 200, page.text[:500]
    versions = requests.get(f"{url}versions", auth=("operator", compose_stack.env["CONSOLE_PASSWORD"]), timeout=10)
    assert versions.status_code == 200 and "version" in versions.text.lower()


def test_prometheus_lifecycle_and_admin_apis_are_off(compose_stack: ComposeStack):
    url = compose_stack.url("prometheus")
    assert requests.post(f"{url}/-/reload", timeout=5).status_code == 403
    assert requests.post(f"{url}/-/quit", timeout=5).status_code == 403
    deleted = requests.post(f"{url}/api/v1/admin/tsdb/delete_series", params={"match[]": "up"}, timeout=5)
    assert deleted.status_code != 204 and deleted.status_code >= 400


def test_backend_containers_have_no_route_out(compose_stack: ComposeStack):
    code = ("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\nexcept OSError as e:\n"
            "    print('refused', e)\nelse:\n    print('connected')")
    out = compose_stack.compose("exec", "-T", "inference_canary", "python3", "-c", code, timeout=60).stdout
    assert out.startswith("refused"), out


def test_kafka_carries_the_simulators_event_log_to_the_collector_and_online_eval_scores_it(
        compose_stack: ComposeStack):
    """The simulator profile for a few seconds: its events reach Kafka (read back by the pipeline's collector)
    and the events volume, which online-eval scores and Prometheus scrapes (job online_eval)."""
    compose_stack.compose("run", "--rm", "--no-deps", "simulator", "python", "-m", "simulator", "traffic",
                          "--url", "http://nginx:8082", "--allow-remote", "--out", "kafka,file:/srv/events/events.log",
                          "--rate", "5", "--duration", "8", timeout=300, what="the simulator for 8 s")
    collected = compose_stack.compose(
        "run", "--rm", "--no-deps", "-e", "KAFKA_BOOTSTRAP=kafka:9092", "-e", "KAFKA_GROUP=e2e-check", "model-init",
        "python", "-m", "auto_deployment", "ingest", "--source", "kafka", "--for", "20s", "--events-dir", "/tmp/events",
        timeout=300, what="collecting from Kafka")
    report = json.loads(collected.stdout[collected.stdout.index("{"):])
    assert report["lines"] >= 10, report  # 8 s of sessions at 5/s: requests, watches and ratings
    deadline = time.monotonic() + 120
    lists = 0.0
    while time.monotonic() < deadline and not lists:
        body = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query",
                            params={"query": 'sum(online_eval_lists{job="online_eval"})'}, timeout=5).json()
        lists = float(body["data"]["result"][0]["value"][1]) if body["data"]["result"] else 0.0
        time.sleep(3)
    assert lists > 0


_DRIFT_WRITER = """
import pandas as pd
from app.settings import Paths
from auto_deployment.monitor import drift
ratings = pd.DataFrame({"user_id": [1, 2, 3, 4] * 50, "movie_id": ["a", "b", "c", "d"] * 50,
                        "rating": [1, 2, 3, 4] * 50, "timestamp": range(1_700_000_000, 1_700_720_000, 3600)})
drift.write_gauges(drift.compute(ratings, ratings), Paths.from_env().run_dir / "metrics" / drift.TEXTFILE)
"""


def test_drift_gauges_written_by_the_scheduler_reach_prometheus_through_online_eval(compose_stack: ComposeStack):
    """The scheduler writes `drift.prom` as any MOVIEREC_UID on the `pipeline_metrics` volume; online-eval serves it.

    Before the shared volume the file stayed inside the scheduler's container and `DataDrift` could never fire."""
    compose_stack.compose("run", "--rm", "--no-deps", "--user", "23456", "scheduler", "python", "-c", _DRIFT_WRITER,
                          timeout=300, what="the scheduler writing drift gauges as an arbitrary uid")
    deadline = time.monotonic() + 90
    result: list = []
    while time.monotonic() < deadline and not result:
        body = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query",
                            params={"query": 'movierec_drift_threshold{job="online_eval",check="rating_psi"}'},
                            timeout=5).json()
        result = body["data"]["result"]
        time.sleep(3)
    assert result, "drift gauges never scraped from online-eval"
    assert float(result[0]["value"][1]) == pytest.approx(0.2)  # DRIFT_PSI_MAX's default


def test_prometheus_scrapes_the_three_slots_up(compose_stack: ComposeStack):
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline:
        body = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query",
                            params={"query": 'up{job="inference"} == 1'}, timeout=5).json()
        seen = {r["metric"].get("slot", "") for r in body["data"]["result"]}
        if seen >= set(SLOTS):
            break
        time.sleep(2)
    assert seen == set(SLOTS)


def test_prometheus_sees_recommend_traffic_of_the_slots(compose_stack: ComposeStack):
    for i in range(50):
        requests.get(f"{compose_stack.url('nginx')}/recommend/{i}", timeout=5)
    deadline = time.monotonic() + 60
    roles: set[str] = set()
    while time.monotonic() < deadline:
        body = requests.get(f"{compose_stack.url('prometheus')}/api/v1/query",
                            params={"query": "sum by (role) (recommend_requests_total) > 0"}, timeout=5).json()
        roles = {r["metric"].get("role", "") for r in body["data"]["result"]}
        if roles >= {"stable", "canary"}:
            break
        time.sleep(2)
    assert roles == {"stable", "canary"}


def test_alertmanager_runs_with_the_config_rendered_by_config_init(compose_stack: ComposeStack):
    assert requests.get(f"{compose_stack.url('alertmanager')}/-/ready", timeout=5).status_code == 200
    status = requests.get(f"{compose_stack.url('alertmanager')}/api/v2/status", timeout=5).json()
    receivers = {r["name"] for r in yaml.safe_load(status["config"]["original"])["receivers"]}
    assert {"slack", "email"} <= receivers


def test_schema_job_created_the_provenance_tables_and_the_app_account(compose_stack: ComposeStack):
    tables = {row[0] for row in compose_stack.sql("SHOW TABLES")}
    assert {"tracking", "reccom", "releases"} <= tables
    users = {row[0] for row in compose_stack.sql("SELECT User FROM mysql.user")}
    assert compose_stack.env.get("MYSQL_APP_USER", "movierec_app") in users


def test_served_requests_reach_the_reccom_table(compose_stack: ComposeStack):
    rid = requests.get(f"{compose_stack.url('nginx')}/recommend/7", timeout=5).headers["X-Request-Id"]
    deadline = time.monotonic() + 30
    rows: list[list[str]] = []
    while time.monotonic() < deadline and not rows:
        rows = compose_stack.sql(f"SELECT user_id, version_number FROM reccom WHERE request_id = '{rid}'")
        time.sleep(1)
    assert rows == [["7", "1"]]


def test_init_jobs_finished_and_a_second_up_changes_nothing(compose_stack: ComposeStack):
    before = requests.get(f"{compose_stack.url('nginx')}/recommend/3", timeout=5).text
    compose_stack.compose("up", "-d", *compose_stack.services, timeout=600, what="second compose up")
    response = _wait_recommend(compose_stack, time.monotonic() + 120)
    assert response.headers["X-Model-Version"] == "1"
    assert requests.get(f"{compose_stack.url('nginx')}/recommend/3", timeout=5).text == before


def test_compose_deployer_moves_the_canary_container_to_a_new_version_without_a_failed_request(
    compose_stack: ComposeStack,
):
    """The release path in compose: a bundle in the shared `models` volume, the real ComposeDeployer writing
    the canary pointer on the shared `slots` volume from another container, the canary hot-swapping."""
    slot_urls = ",".join(f"{slot.name}=http://{slot.service}:{slot.port}" for slot in TOPOLOGY.slots)
    deploy = ("python -m auto_deployment train --data-dir /srv/data --out /srv/models/2 --version 2 && "
              "python -c 'from auto_deployment.release.wiring import build_deployer; "
              "build_deployer(runtime=\"compose\", timeout_s=120).deploy(\"canary\", 2)'")
    statuses: collections.Counter[int] = collections.Counter()
    errors: list[str] = []  # what a failed request (status 0) was, so a failure says why
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    statuses[session.get(f"{compose_stack.url('nginx')}/recommend/5", timeout=5).status_code] += 1
                except requests.RequestException as exc:
                    statuses[0] += 1
                    errors.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
                time.sleep(0.01)

    traffic = threading.Thread(target=load, daemon=True)
    traffic.start()
    try:
        compose_stack.compose("run", "--rm", "--no-deps", "-e", f"RELEASE_SLOT_URLS={slot_urls}", "model-init",
                              "sh", "-c", deploy, timeout=600, what="train version 2 and deploy it to the canary")
    finally:
        stop.set()
        traffic.join(timeout=30)
    assert set(statuses) == {200} and statuses[200] > 0, (statuses, errors[:5])
    by_slot = {slot: str(version["version"]) for slot, version in _slot_versions(compose_stack).items()}
    assert by_slot == {"stable_1": "1", "stable_2": "1", "canary": "2"}
    # Through NGINX: stable answers version 1, the canary version 2. NGINX may have set the canary aside for its
    # fail_timeout (2 s) if it was slow while swapping, so ask until it answers (at least 200 requests).
    served: collections.Counter[tuple[str, str]] = collections.Counter()
    deadline = time.monotonic() + 30
    with requests.Session() as session:
        i = 0
        while i < 200 or (("canary", "2") not in served and time.monotonic() < deadline):
            response = session.get(f"{compose_stack.url('nginx')}/recommend/{i % 500}", timeout=5)
            assert response.status_code == 200
            served[response.headers["X-Slot"], response.headers["X-Model-Version"]] += 1
            i += 1
    assert set(served) == {("stable", "1"), ("canary", "2")}, served


DEPLOY_VERSION = 3  # version 2 is the deployer test's


def _versioned_checkout(version: int, root: Path) -> tuple[Path, Path, Path]:
    """What the retraining pipeline's version stage leaves behind (design section 7), made with the same tools:
    a bundle trained on the default data and pushed to a local-directory DVC remote, and the checkout of the
    version commit (version.txt + models/<N>.dvc, not the bundle). Returns (checkout, remote, bundle copy)."""
    from simulator.datasets import write_default_data

    data, made, checkout, remote = (root / name for name in ("data", "made", "checkout", "remote"))
    write_default_data(data)
    _run([str(ROOT / ".venv" / "bin" / "python"), "-m", "auto_deployment", "train", "--data-dir", str(data),
          "--out", str(made / str(version)), "--version", str(version)], os.environ.copy(), 900,
         f"training version {version}")
    checkout.mkdir()
    shutil.copytree(made / str(version), checkout / "models" / str(version))
    dvc = str(ROOT / ".venv" / "bin" / "dvc")
    env = {**os.environ, "HOME": str(root)}
    for command in (["init", "--no-scm", "-q"], ["remote", "add", "-q", "-d", "origin", str(remote)],
                    ["add", "-q", f"models/{version}"], ["push", "-q"]):
        done = subprocess.run([dvc, *command], cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"dvc {' '.join(command)}: {done.stdout}{done.stderr}"
    shutil.rmtree(checkout / "models" / str(version))  # the commit holds models/<N>.dvc only
    (checkout / "version.txt").write_text(f"{version}\n")
    for path in [root, *root.rglob("*")]:  # the containers run as uid 10001: everything readable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return checkout, remote, made


@pytest.mark.timeout(1800)
def test_gitlab_ci_local_deploy_job_releases_a_version_from_the_dvc_remote_through_the_canary(
    compose_stack: ComposeStack,
):
    """The CI `deploy` job, run by gitlab-ci-local (shell executor) against this stack, under steady traffic:
    version 3, made as the pipeline makes versions (DVC remote + tracking row + version commit), is fetched into
    the models volume, released through the canary and promoted; no request fails; no secret reaches the log."""
    from tests.e2e.test_ci_config import install_gitlab_ci_local

    gitlab_ci_local = install_gitlab_ci_local()
    root = Path(tempfile.mkdtemp(prefix="movierec-deploy-", dir="/tmp"))
    try:
        checkout, remote, made = _versioned_checkout(DEPLOY_VERSION, root)
        # the tracking row the version stage writes, by the pipeline's own account and code
        record = ("import pathlib; from app.settings import MySQL; from ops.bootstrap import record_tracking; "
                  f"record_tracking(MySQL.from_env(), pathlib.Path('/srv/made'), {DEPLOY_VERSION})")
        compose_stack.compose("run", "--rm", "--no-deps", "-v", f"{made}:/srv/made:ro", "pipeline", "python", "-c",
                              record, timeout=300, what="recording the tracking row of the new version")
        stand_ins = _run(["bash", str(DOCKER_SH), "env"], compose_stack.env, 60, "stand-in names").stdout.split()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=30).stdout.strip() or "unknown"
        variables = {
            **{name: compose_stack.env[name] for name in SECRETS},
            **dict(line.split("=", 1) for line in stand_ins),
            "COMPOSE_PROJECT_NAME": compose_stack.project, "COMPOSE_FILE": f"{COMPOSE_FILE.name}:{OPS_FILE.name}",
            "COMPOSE": compose_stack.env.get("COMPOSE") or "docker-compose",  # ops/docker.sh's choice
            "DEPLOY_SERVICES": " ".join(compose_stack.services),
            # a new commit: the inference image changes, so the job recreates the slots (one at a time, no failure)
            "CODE_COMMIT": f"{commit}-next", "MOVIEREC_REPO": str(checkout), "DVC_REMOTE_DIR": str(remote),
            # short windows and noise floors for a loaded 2-core machine: this proves the deploy path (fetch,
            # canary, checks through Prometheus, promotion); the checks' thresholds are tested in tests/release
            # steps as natively (shadow, then weights the router applies through NGINX's reload handshake)
            "RELEASE_STEPS": "shadow,20,50",
            "RELEASE_OBSERVE_S": "15", "RELEASE_MAX_ERROR_RATIO": "0.05", "RELEASE_MIN_REQUESTS": "20",
            "RELEASE_LATENCY_SLACK_MS": "100", "RELEASE_P99_SLACK_MS": "300",
            "RELEASE_P99_MIN_REQUESTS": "50",  # ~8 canary requests a second at 20 %: 300 would hold each 5 s step
            **{name: compose_stack.env[name] for name in ("BIND_ADDRESS", "OPS_BIND_ADDRESS", "NGINX_PORT",
                                                          "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "GRAFANA_PORT",
                                                          "CONSOLE_PORT", "IMAGE_TAG")},
        }
        # the secrets as masked CI/CD variables are: in a file (mode 600), never on a command line; the rest as
        # --variable (gitlab-ci-local's file turns a value naming an existing path into a File variable)
        variables_file = root / "ci-variables.yml"
        variables_file.write_text(yaml.safe_dump({name: variables.pop(name) for name in SECRETS}))
        variables_file.chmod(0o600)
        command = [str(gitlab_ci_local), "deploy", "--force-shell-executor",
                   "--variables-file", os.path.relpath(variables_file, ROOT)]  # read relative to the project
        for name, value in variables.items():
            command += ["--variable", f"{name}={value}"]
        statuses: collections.Counter[int] = collections.Counter()
        stop = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        response = session.get(f"{compose_stack.url('nginx')}/recommend/{i % 500}", timeout=5)
                        statuses[response.status_code] += 1
                    except requests.RequestException:
                        statuses[0] += 1
                    time.sleep(0.02)

        traffic = threading.Thread(target=load, daemon=True)
        traffic.start()
        started = time.monotonic()
        try:
            env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
        finally:
            stop.set()
            traffic.join(timeout=30)
        compose_stack.timings["deploy_job_s"] = time.monotonic() - started
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-8000:]
        assert "$ sh docker/ci-deploy.sh" in log and f"ci-deploy: version {DEPLOY_VERSION}" in log
        assert f"deploy: fetching models/{DEPLOY_VERSION} from the DVC remote" in log
        for name in SECRETS:
            assert compose_stack.env[name] not in log, f"{name} leaked into the job log"
        assert set(statuses) == {200}, statuses
        # rolled, NGINX reloaded per slot (1.29 says "Recreating …" and "Killing …"; v2 "Recreate(d)" and "Kill(ed)")
        assert log.count("Recreat") and log.count("Kill") >= len(SLOTS)
        now = _slot_versions(compose_stack)
        assert {slot: str(v["version"]) for slot, v in now.items()} == {slot: str(DEPLOY_VERSION) for slot in SLOTS}
        for service in SLOTS.values():  # this commit's image serves
            running = compose_stack.compose("exec", "-T", service, "printenv", "MOVIEREC_CODE_COMMIT", timeout=60)
            assert running.stdout.strip() == f"{commit}-next"
        served: collections.Counter[tuple[str, str]] = collections.Counter()
        with requests.Session() as session:
            for i in range(200):
                response = session.get(f"{compose_stack.url('nginx')}/recommend/{i}", timeout=5)
                served[response.headers["X-Slot"], response.headers["X-Model-Version"]] += 1
        assert set(served) == {("stable", str(DEPLOY_VERSION)), ("canary", str(DEPLOY_VERSION))}
        outcome = compose_stack.sql(f"SELECT outcome FROM releases WHERE candidate_version = {DEPLOY_VERSION}")
        assert outcome == [["promoted"]]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- the file itself (no engine needed)


@pytest.fixture(scope="module")
def compose_binary() -> str:
    """docker-compose, installed by ``ops/docker.sh deps`` when missing (root; otherwise it fails saying what to
    install). Looked up after that, never at import: a fresh machine runs these tests instead of skipping them."""
    found = shutil.which("docker-compose")
    if found is None:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        _run(["bash", str(DOCKER_SH), "deps"], env, 900, "installing Docker's Debian packages")
        found = shutil.which("docker-compose")
    assert found is not None, "docker-compose is still missing after ops/docker.sh deps"
    return found


def test_compose_refuses_to_run_without_the_secrets(tmp_path: Path, compose_binary: str):
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    done = subprocess.run([compose_binary, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path),
                           "config", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "PASSWORD" in done.stderr


def test_compose_defaults_are_the_public_images_and_stand_ins_cover_all_but_grafana_and_cadvisor(
        tmp_path: Path, compose_binary: str):
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED and not k.endswith("_IMAGE")}
    env.update({name: "x" for name in SECRETS})
    done = subprocess.run([compose_binary, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path),
                           "config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    images = {name: s["build"]["args"].get("PYTHON_IMAGE") or s["build"]["args"]["DEBIAN_IMAGE"] if "build" in s
              else s["image"] for name, s in services.items()}
    assert images["mysql"].startswith("mysql:")
    assert images["inference_canary"] == "python:3.11-slim"
    assert images["nginx"].startswith("nginx:")
    assert images["prometheus"].startswith("prom/prometheus")
    assert images["edge-metrics"] == "debian:bookworm-slim"  # Debian's mtail: no official image
    stand_ins = subprocess.run(["bash", str(DOCKER_SH), "env"], capture_output=True, text=True, timeout=30)
    variables = {line.split("=", 1)[0] for line in stand_ins.stdout.splitlines()}
    raw = COMPOSE_FILE.read_text()
    used = {v for v in variables if "${" + v + ":-" in raw}
    assert used == variables  # every stand-in replaces an image variable of compose.yml
    for name in ("GRAFANA_IMAGE", "CADVISOR_IMAGE"):
        assert name in raw and name not in variables
