"""The platform's configs pass their programs' own checks, and say what the design asks of them.

nginx -t, promtool check config/rules, promtool test rules, amtool check-config/routes: the real tools on
the real renderings (native and compose). Every config is a rendering of the slot topology
(app/contracts/topology.py): the expectations here are derived from it, and a four-slot topology renders
configs the tools accept without any template edit. Nothing is started; every test takes a second or less.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import jinja2
import pytest
import yaml

from app.contracts import pointer
from app.contracts.topology import (
    CANARY,
    STABLE,
    Slot,
    Topology,
    loopback_address,
    reload_applied_path,
    reload_request_path,
)
from app.settings import ROOT
from ops.bootstrap import point_slots
from ops.render import (
    COMPOSE_FILES,
    COMPOSE_RUN_DIR,
    RULES_FILE,
    check_commands,
    compose_context,
    compose_renderings,
    ensure_upstream,
    nginx_check_command,
    render,
    render_text,
    write_configs,
)
from ops.services import Stack

PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
GRAFANA_DIR = ROOT / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
CLIENT_BUDGET_MS = 800  # the real client's timeout (design section 2)


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A stack environment on unusual ports, so a rendering that ignores the settings shows."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "MOVIEREC_RUN_DIR": str(tmp_path / "run"),
        "MOVIEREC_MODELS_DIR": str(tmp_path / "models"),
        "MOVIEREC_DATA_DIR": str(tmp_path / "data"),
        "MOVIEREC_VERSION_FILE": str(tmp_path / "version.txt"),
        "MOVIEREC_SLOT_PORTS": "15101,15102,15103",
        "NGINX_PORT": "15182",
        "NGINX_STATUS_PORT": "15183",
        "PROMETHEUS_PORT": "15190",
        "ALERTMANAGER_PORT": "15193",
        "MYSQL_PORT": "15106",
    }
    env.update(extra)
    return env


@pytest.fixture
def native(tmp_path) -> Stack:
    """The native configs rendered into a temporary run directory."""
    stack = Stack.from_env(_environ(tmp_path))
    write_configs(stack)
    return stack


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout + done.stderr


# The card's topology: the expectations below come from it (and the card's numbers are checked against it).
TOPOLOGY = Topology()


def four_slots(first_port: int = 15201) -> Topology:
    """A third stable replica beside the card's slots, at an exact 80/20 split (weights 4/4/4/3)."""
    slots = (Slot("stable_1", STABLE, first_port, 1), Slot("stable_2", STABLE, first_port + 1, 1),
             Slot("stable_3", STABLE, first_port + 2, 1), Slot("canary", CANARY, first_port + 3, 1))
    return Topology(slots).with_canary_share(Fraction(1, 5))


# ---------------------------------------------------------------------- templates


def test_templates_refuse_an_unknown_name_instead_of_rendering_it_empty():
    assert render_text("a={{ a }}{% if on %} on{% endif %}.\n", {"a": 1, "on": True}) == "a=1 on.\n"
    with pytest.raises(jinja2.UndefinedError):
        render_text("{{ missing }}\n", {})
    with pytest.raises(jinja2.UndefinedError):
        render_text("{{ nginx.missing }}\n", {"nginx": {}})


def test_supervisor_values_have_their_percent_doubled_and_yaml_values_are_quoted():
    assert render_text("x={{ v }}\n", {"v": "a%b"}, percent_escaped=True) == "x=a%%b\n"
    assert render_text("x: {{ v | quote }}\n", {"v": 'p"w: #x'}) == 'x: "p\\"w: #x"\n'


def test_compose_renderings_in_git_are_up_to_date_with_their_templates():
    renderings = compose_renderings()
    assert set(renderings) == set(COMPOSE_FILES.values())
    for tracked, fresh in renderings.items():
        assert tracked.read_text() == fresh, (
            f"{tracked.relative_to(ROOT)} is stale or was edited by hand: edit its template, then run "
            "`python -m ops.stack render --variant compose`"
        )


# ---------------------------------------------------------------------- NGINX


def test_native_nginx_config_passes_nginx_t(native):
    _ok(_run(check_commands(native)["nginx"]))


def _compose_nginx_checkable(tmp_path: Path, topology: Topology = TOPOLOGY) -> Path:
    """The compose NGINX rendering with loopback upstreams and temp paths: service names resolve only in compose."""
    context = compose_context(topology=topology)
    upstream = tmp_path / "upstream.conf"
    nginx = {**context["nginx"], "pidfile": tmp_path / "nginx.pid", "temp": tmp_path, "upstream": upstream,
             "access_log": tmp_path / "edge" / "access.log"}  # the container's edge_log volume
    nginx["access_log"].parent.mkdir()
    context.update(address=loopback_address, nginx=nginx)
    ensure_upstream(upstream, topology, loopback_address, reset=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render("nginx", context))
    return conf


def test_compose_nginx_config_passes_nginx_t(tmp_path):
    _ok(_run(nginx_check_command(_compose_nginx_checkable(tmp_path), tmp_path)))


def _directives(conf: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;{{}}]*);", conf, re.M)]


def _upstream_block(conf: str) -> str:
    return conf.split("upstream inference {")[1].split("}")[0]


def test_nginx_upstream_has_one_server_per_slot_weighted_2_2_1_on_the_slot_ports(native):
    # The card's split, from the one module that defines it: two stable replicas and a canary, exactly 80/20.
    assert [(s.name, s.role, s.weight) for s in TOPOLOGY.slots] == [
        ("stable_1", "stable", 2), ("stable_2", "stable", 2), ("canary", "canary", 1)]
    conf = native.config_path("nginx").read_text()
    block = _upstream_block(conf)
    assert _directives(block, "include") == [str(native.nginx_upstream)]
    assert _directives(block, "keepalive"), "no keepalive connections to the upstreams"
    servers = _directives(native.nginx_upstream.read_text(), "server")
    assert [s.split()[0] for s in servers] == [f"127.0.0.1:{native.slot_ports[slot]}" for slot in native.slots]
    weights = [int(re.search(r"weight=(\d+)", s).group(1)) for s in servers]
    assert weights == [slot.weight for slot in native.topology.slots] == [2, 2, 1]
    assert weights[2] / sum(weights) == pytest.approx(0.2)
    assert all("max_fails=1 fail_timeout=2s" in s for s in servers)


def test_the_upstream_file_keeps_a_moved_split_on_a_live_stack_and_follows_the_topology(tmp_path):
    path = tmp_path / "upstream.conf"
    assert ensure_upstream(path, TOPOLOGY, loopback_address, reset=True)
    moved = TOPOLOGY.with_canary_share(0.5)  # what a release step writes
    path.write_text(moved.nginx_servers(loopback_address))
    assert not ensure_upstream(path, TOPOLOGY, loopback_address, reset=False)  # `up` on a live stack
    assert path.read_text() == moved.nginx_servers(loopback_address)
    assert ensure_upstream(path, TOPOLOGY, loopback_address, reset=True)  # a fresh start: the resting split
    assert path.read_text() == TOPOLOGY.nginx_servers(loopback_address)
    four = four_slots()
    assert ensure_upstream(path, four, loopback_address, reset=False)  # a slot added: rewritten
    assert len(_directives(path.read_text(), "server")) == 4


@pytest.mark.parametrize("share", [0, 0.05, 0.5, 1])
def test_nginx_accepts_every_split_a_release_step_writes(tmp_path, share):
    conf = _compose_nginx_checkable(tmp_path)
    (tmp_path / "upstream.conf").write_text(TOPOLOGY.with_canary_share(share).nginx_servers(loopback_address))
    if share == 0:  # weight 0 (the canary out of traffic) stays in the block as `down`: NGINX has no weight 0
        assert re.search(r"^server 127\.0\.0\.1:5003 down ", (tmp_path / "upstream.conf").read_text(), re.M)
    _ok(_run(nginx_check_command(conf, tmp_path)))


def test_bootstrap_points_only_slots_without_a_pointer_on_a_live_stack(tmp_path):
    pointer.write_slot(tmp_path, "canary", 7)  # a release under way
    assert point_slots(tmp_path, TOPOLOGY, 3, overwrite=False) == ["stable_1", "stable_2"]
    assert {slot: pointer.read_slot(tmp_path, slot) for slot in TOPOLOGY.names} == {
        "stable_1": 3, "stable_2": 3, "canary": 7}
    assert point_slots(tmp_path, TOPOLOGY, 3, overwrite=True) == list(TOPOLOGY.names)
    assert pointer.read_slot(tmp_path, "canary") == 3


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s)?", value).groups()
    return float(number) * (1 if unit == "ms" else 1000)


def test_nginx_retries_the_next_upstream_and_never_outlasts_the_client(native):
    conf = native.config_path("nginx").read_text()
    assert set(_directives(conf, "proxy_next_upstream")[0].split()) == {"error", "timeout", "http_502", "http_503"}
    assert _directives(conf, "proxy_next_upstream_tries") == ["3"]
    connect = _ms(_directives(conf, "proxy_connect_timeout")[0])
    read = _ms(_directives(conf, "proxy_read_timeout")[0])
    retry_window = _ms(_directives(conf, "proxy_next_upstream_timeout")[0])
    # A first attempt that times out still leaves time for a second one inside the budget ...
    assert max(connect, read) < retry_window
    # ... and the last attempt, started at the end of the window, ends before the client gives up.
    assert retry_window + connect + read < CLIENT_BUDGET_MS


def test_nginx_exposes_only_recommend_and_health_and_passes_the_request_id(native):
    conf = native.config_path("nginx").read_text()
    main_server = conf.split("server {")[1]
    # what a client can reach: every location but the `internal` ones (the release's shadow copy)
    blocks = re.findall(r"location\s+([^{]+?)\s*\{([^}]*)\}", main_server)
    assert [path for path, body in blocks if not re.search(r"^\s*internal;", body, re.M)] == [
        "/recommend/", "= /health", "/"]
    catch_all = main_server.split("location / {")[1].split("}")[0]
    assert "return 404" in catch_all and "proxy_pass" not in catch_all
    # the client's id when sane (a map on $http_x_request_id), else NGINX's own: forwarded and logged
    assert "X-Request-Id $movierec_request_id" in main_server
    request_map = conf.split("map $http_x_request_id $movierec_request_id {")[1].split("\n    }")[0]
    assert "default $request_id;" in request_map
    assert re.search(r'"~\^\[A-Za-z0-9-\]\{8,64\}\$"\s+\$http_x_request_id;', request_map)
    assert "request_id=$movierec_request_id" in conf.split("log_format")[1].split(";")[0]


def test_nginx_access_log_records_upstream_and_timings(native):
    conf = native.config_path("nginx").read_text()
    log_format = conf.split("log_format")[1].split(";")[0]
    for variable in ("$upstream_addr", "$upstream_status", "$upstream_response_time", "$request_time"):
        assert variable in log_format


def test_nginx_stub_status_listens_on_loopback_only_natively(native):
    conf = native.config_path("nginx").read_text()
    status_server = conf.split("server {")[2]
    assert _directives(status_server, "listen") == [f"127.0.0.1:{native.nginx_status_port}"]
    assert "stub_status;" in status_server and "deny all;" in status_server
    assert _directives(conf.split("server {")[1], "listen") == [f"127.0.0.1:{native.nginx_port}"]


# ---------------------------------------------------------------------- Prometheus


def test_native_prometheus_config_passes_promtool(native):
    _ok(_run(check_commands(native)["prometheus"]))


def test_compose_prometheus_config_passes_promtool():
    _ok(_run(["promtool", "check", "config", COMPOSE_FILES["prometheus"].name], cwd=PROMETHEUS_DIR))


def test_prometheus_scrapes_each_slot_with_its_slot_label_every_few_seconds(native):
    config = yaml.safe_load(native.config_path("prometheus").read_text())
    interval = config["global"]["scrape_interval"]
    assert _ms(interval) <= 5000, "a 30 s release window needs several samples"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        group["labels"]["slot"]: (group["labels"]["role"], group["targets"])
        for group in jobs["inference"]["static_configs"]
    }
    assert targets == {slot.name: (slot.role, [f"127.0.0.1:{slot.port}"]) for slot in native.topology.slots}
    assert set(targets) == {"stable_1", "stable_2", "canary"}
    assert {"prometheus", "alertmanager"} <= set(jobs)
    # The exporters run only in compose: natively they would be targets down forever.
    assert not {"node", "cadvisor", "nginx"} & set(jobs)
    compose = yaml.safe_load(COMPOSE_FILES["prometheus"].read_text())
    compose_jobs = {job["job_name"] for job in compose["scrape_configs"]}
    assert {"inference", "prometheus", "alertmanager", "node", "cadvisor", "nginx"} <= compose_jobs
    alerting = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alerting == [f"127.0.0.1:{native.alertmanager_port}"]


def test_rules_pass_promtool_check_rules():
    _ok(_run(["promtool", "check", "rules", str(RULES_FILE)]))


def test_rules_unit_tests_pass():
    _ok(_run(["promtool", "test", "rules", "rules_test.yml"], cwd=PROMETHEUS_DIR))


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_silent():
    rules = yaml.safe_load(RULES_FILE.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"TargetDown", "InferenceServerDown", "RecommendationFailuresHigh",
            "CanaryLatencyWorseThanStable", "CanaryErrorsWorseThanStable"} <= alerts
    cases = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    fires, silent = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts <= fires, f"never seen firing: {alerts - fires}"
    assert alerts <= silent, f"never seen silent: {alerts - silent}"


# ---------------------------------------------------------------------- Alertmanager


def test_alertmanager_config_without_secrets_passes_amtool_and_has_null_receivers(native):
    _ok(_run(check_commands(native)["alertmanager"]))
    config = yaml.safe_load(native.config_path("alertmanager").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert set(receivers) == {"null", "slack", "email"}
    assert receivers["slack"].keys() == {"name"} and receivers["email"].keys() == {"name"}


def test_alertmanager_renders_slack_email_and_webhook_from_the_environment(tmp_path):
    password = 'p"w\\d:%{x}'
    stack = Stack.from_env(_environ(
        tmp_path,
        SLACK_WEBHOOK_URL="https://hooks.slack.example/services/T/B/X",
        SMTP_HOST="smtp.example.org", SMTP_PORT="587", SMTP_USER="alerts", SMTP_PASSWORD=password,
        SMTP_STARTTLS="1", MAIL_FROM="movierec@example.org", MAIL_TO="a@example.org,b@example.org",
        ALERT_WEBHOOK_URL="http://127.0.0.1:9/alerts",
    ))
    write_configs(stack)
    conf = stack.config_path("alertmanager")
    _ok(_run(check_commands(stack)["alertmanager"]))
    config = yaml.safe_load(conf.read_text())
    assert config["global"]["smtp_smarthost"] == "smtp.example.org:587"
    assert config["global"]["smtp_auth_password"] == password
    assert config["global"]["smtp_require_tls"] is True
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["slack"]["slack_configs"][0]["api_url"] == "https://hooks.slack.example/services/T/B/X"
    assert receivers["email"]["email_configs"][0]["to"] == "a@example.org,b@example.org"
    assert receivers["webhook"]["webhook_configs"][0]["url"] == "http://127.0.0.1:9/alerts"
    routed = _run(["amtool", "config", "routes", "test", f"--config.file={conf}", "alertname=InferenceServerDown",
                   "severity=critical", "slot=canary"])
    _ok(routed)
    assert routed.stdout.split()[0].split(",") == ["slack", "email", "webhook"]


# ---------------------------------------------------------------------- supervisord


def test_supervisord_config_runs_every_program_with_its_own_port_and_log(native):
    parser = configparser.RawConfigParser()
    parser.read(native.supervisor_conf)
    programs = {s.split(":", 1)[1]: parser[s] for s in parser.sections() if s.startswith("program:")}
    assert set(programs) == set(native.programs) == {*native.slots, "nginx", "mtail", "prometheus", "alertmanager"}
    for slot in native.slots:
        environment = programs[slot]["environment"]
        assert f'MOVIEREC_SLOT="{slot}"' in environment
        assert f'MOVIEREC_PORT="{native.slot_ports[slot]}"' in environment
        assert "gunicorn" in programs[slot]["command"]
    assert f"127.0.0.1:{native.prometheus_port}" in programs["prometheus"]["command"]
    assert "--cluster.listen-address= " in programs["alertmanager"]["command"] + " "
    assert "daemon off;" in programs["nginx"]["command"]
    for name, section in programs.items():
        assert Path(section["stdout_logfile"]).parent == native.log_dir, name
    assert parser["supervisord"]["pidfile"] == str(native.supervisor_pidfile)


# ---------------------------------------------------------------------- compose.yml


def _inference_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("inference_")}


def _check_compose_topology(compose: dict, topology: Topology) -> None:
    """One inference service per slot (its slot, port, pointer and spool), NGINX waits for each, the release
    knows each slot's URL, and every named volume a service mounts is declared."""
    services = _inference_services(compose)
    assert list(services) == [slot.service for slot in topology.slots]
    for slot in topology.slots:
        env = services[slot.service]["environment"]
        assert (env["MOVIEREC_SLOT"], env["MOVIEREC_PORT"]) == (slot.name, str(slot.port))
        assert env["MOVIEREC_POINTER"] == f"/srv/run/slots/{slot.name}"
        assert env["MYSQL_HOST"] == "mysql"  # the shared environment came through the merge key
        assert f"spool_{slot.name}:/srv/run/spool" in services[slot.service]["volumes"]
        assert "ports" not in services[slot.service]  # reached through NGINX only
        assert services[slot.service]["networks"] == ["backend"]
    assert set(compose["services"]["nginx"]["depends_on"]) == {slot.service for slot in topology.slots}
    urls = compose["services"]["scheduler"]["environment"]["RELEASE_SLOT_URLS"]
    assert urls == ",".join(f"{slot.name}=http://{slot.service}:{slot.port}" for slot in topology.slots)
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".", "$")):
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
        for dependency in svc.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown service {dependency}"


def test_compose_runs_one_inference_service_per_slot_of_the_topology():
    compose = yaml.safe_load(COMPOSE_FILES["compose"].read_text())
    _check_compose_topology(compose, TOPOLOGY)
    # NGINX in compose reads the upstream file the bootstrap and the release write, on a shared volume, and answers
    # the release's reload requests there (docker/nginx-run.sh, the paths of app/contracts/topology.py).
    for service in ("nginx", "model-init", "scheduler", "pipeline"):
        assert "upstream:/srv/run/nginx" in compose["services"][service]["volumes"], service
    nginx = compose["services"]["nginx"]
    assert nginx["command"] == ["sh", "/usr/local/bin/nginx-run.sh"]
    assert nginx["environment"]["NGINX_RELOAD_REQUEST"] == str(reload_request_path(COMPOSE_RUN_DIR))
    assert nginx["environment"]["NGINX_RELOAD_APPLIED"] == str(reload_applied_path(COMPOSE_RUN_DIR))
    # its edge log is what edge-metrics (mtail) reads, and Prometheus scrapes edge-metrics
    edge_log = nginx["environment"]["EDGE_LOG"]
    assert edge_log in compose["services"]["edge-metrics"]["command"]
    assert f"edge_log:{Path(edge_log).parent}:ro" in compose["services"]["edge-metrics"]["volumes"]
    assert f"access_log {edge_log} movierec;" in COMPOSE_FILES["nginx"].read_text()
    assert '"edge-metrics:3903"' in COMPOSE_FILES["prometheus"].read_text()
    conf = COMPOSE_FILES["nginx"].read_text()
    assert _directives(_upstream_block(conf), "include") == ["/srv/run/nginx/upstream.conf"]


def _published(compose: dict) -> dict[str, list[str]]:
    return {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}


def test_compose_publishes_only_nginx_and_everything_else_sits_on_the_internal_network():
    compose = yaml.safe_load(COMPOSE_FILES["compose"].read_text())
    assert _published(compose) == {"nginx": ["${BIND_ADDRESS:-127.0.0.1}:${NGINX_PORT:-8082}:8082"]}
    assert compose["networks"]["backend"] == {"internal": True}
    for name, svc in compose["services"].items():
        if "network_mode" in svc:  # online-eval lives in Prometheus's network namespace
            assert (name, svc["network_mode"]) == ("online-eval", "service:prometheus")
            continue
        assert "backend" in svc["networks"], name
    # the way out: NGINX for its clients, the UIs of compose.ops.yml, notifications, git and DVC remotes
    edge = {name for name, svc in compose["services"].items() if "edge" in svc.get("networks", [])}
    assert edge == {"nginx", "prometheus", "alertmanager", "grafana", "scheduler", "pipeline"}
    assert "edge" not in compose["services"]["mysql"]["networks"]


def test_compose_ops_file_publishes_the_operators_uis_on_their_own_loopback_address():
    ops = yaml.safe_load((ROOT / "compose.ops.yml").read_text())
    assert _published(ops) == {
        "nginx": ["${OPS_BIND_ADDRESS:-127.0.0.1}:${CONSOLE_PORT:-8090}:8084"],  # its console server (basic auth)
        "grafana": ["${OPS_BIND_ADDRESS:-127.0.0.1}:${GRAFANA_PORT:-3000}:3000"],
        "prometheus": ["${OPS_BIND_ADDRESS:-127.0.0.1}:${PROMETHEUS_PORT:-9090}:9090"],
        "alertmanager": ["${OPS_BIND_ADDRESS:-127.0.0.1}:${ALERTMANAGER_PORT:-9093}:9093"],
    }
    compose = yaml.safe_load(COMPOSE_FILES["compose"].read_text())
    for name in ops["services"]:  # an internal network cannot publish: each is on edge too
        assert "edge" in compose["services"][name]["networks"]


def test_compose_prometheus_runs_without_lifecycle_or_admin_api():
    command = yaml.safe_load(COMPOSE_FILES["compose"].read_text())["services"]["prometheus"]["command"]
    assert not [flag for flag in command if "lifecycle" in flag or "admin-api" in flag]


def test_compose_runs_kafka_of_ops_kafka_and_the_optional_parts_in_profiles():
    compose = yaml.safe_load(COMPOSE_FILES["compose"].read_text())
    services = compose["services"]
    pom = (ROOT / "ops" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"${{KAFKA_IMAGE:-apache/kafka:{version}}}"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["scheduler"]["environment"]["KAFKA_BOOTSTRAP"] == "${KAFKA_BOOTSTRAP:-kafka:9092}"
    assert services["scheduler"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    profiles = {name: svc.get("profiles") for name, svc in services.items() if svc.get("profiles")}
    assert profiles == {"node-exporter": ["host-metrics"], "cadvisor": ["host-metrics"], "scheduler": ["pipeline"],
                        "pipeline": ["deploy"], "simulator": ["simulator"]}
    assert "kafka,file:/srv/events/events.log" in services["simulator"]["command"]
    assert "events:/srv/events" in services["online-eval"]["volumes"]
    # the scrape jobs: online-eval at Prometheus's own loopback; the optional exporters found by DNS only
    prometheus = yaml.safe_load(COMPOSE_FILES["prometheus"].read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["online_eval"]["static_configs"] == [{"targets": ["localhost:9108"]}]
    assert "--serve 9108" in services["online-eval"]["command"][-1]
    for job, name in (("node", "node-exporter"), ("cadvisor", "cadvisor")):
        assert "static_configs" not in jobs[job] and jobs[job]["dns_sd_configs"][0]["names"] == [name]


# ---------------------------------------------------------------------- a fourth slot: no template edit


@pytest.fixture
def four(tmp_path) -> Stack:
    """The native stack's configs with a third stable replica, rendered by the same templates."""
    stack = dataclasses.replace(Stack.from_env(_environ(tmp_path)), topology=four_slots())
    write_configs(stack)
    return stack


def test_a_fourth_slot_renders_nginx_with_four_weighted_servers_that_nginx_accepts(four):
    _ok(_run(check_commands(four)["nginx"]))
    servers = _directives(four.nginx_upstream.read_text(), "server")
    assert [s.split()[0] for s in servers] == [f"127.0.0.1:{p}" for p in (15201, 15202, 15203, 15204)]
    weights = [int(re.search(r"weight=(\d+)", s).group(1)) for s in servers]
    assert weights == [4, 4, 4, 3]
    assert Fraction(weights[-1], sum(weights)) == Fraction(1, 5)


def test_a_fourth_slot_is_scraped_by_prometheus_with_its_slot_and_role(four):
    _ok(_run(check_commands(four)["prometheus"]))
    config = yaml.safe_load(four.config_path("prometheus").read_text())
    (inference,) = [job for job in config["scrape_configs"] if job["job_name"] == "inference"]
    assert [(g["labels"]["slot"], g["labels"]["role"], g["targets"]) for g in inference["static_configs"]] == [
        ("stable_1", "stable", ["127.0.0.1:15201"]), ("stable_2", "stable", ["127.0.0.1:15202"]),
        ("stable_3", "stable", ["127.0.0.1:15203"]), ("canary", "canary", ["127.0.0.1:15204"]),
    ]


def test_a_fourth_slot_gets_its_supervisor_program_and_readiness_check(four):
    from ops.services import readiness_checks

    parser = configparser.RawConfigParser()
    parser.read(four.supervisor_conf)
    programs = {s.split(":", 1)[1] for s in parser.sections() if s.startswith("program:")}
    assert programs == {"stable_1", "stable_2", "stable_3", "canary", "nginx", "mtail", "prometheus", "alertmanager"}
    assert 'MOVIEREC_PORT="15203"' in parser["program:stable_3"]["environment"]
    assert (four.run_dir / "spool" / "stable_3").is_dir() and (four.run_dir / "metrics" / "stable_3").is_dir()
    checks = {check.name: check.after for check in readiness_checks(four)}
    assert "stable_3" in checks and "stable_3" in checks["nginx"]


def test_a_fourth_slot_renders_compose_with_four_inference_services(tmp_path):
    topology = four_slots(5001)
    compose = yaml.safe_load(compose_renderings(topology)[COMPOSE_FILES["compose"]])
    _check_compose_topology(compose, topology)
    assert "spool_stable_3" in compose["volumes"]
    _ok(_run(nginx_check_command(_compose_nginx_checkable(tmp_path, topology), tmp_path)))
    prometheus = tmp_path / "prometheus.yml"
    prometheus.write_text(compose_renderings(topology)[COMPOSE_FILES["prometheus"]])
    (tmp_path / "rules.yml").write_text(RULES_FILE.read_text())
    _ok(_run(["promtool", "check", "config", str(prometheus)], cwd=tmp_path))
    assert "inference_stable_3:5003" in prometheus.read_text()


# ---------------------------------------------------------------------- Grafana


def _panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in panels if p.get("type") != "row"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards_folder():
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert (source["type"], source["uid"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "movierec.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    assert {p.name for p in DASHBOARDS} == {"availability.json", "model_quality.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_panel_has_the_prometheus_datasource_and_targets(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = _panels(dashboard)
    assert panels
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == "prometheus"


def test_every_dashboard_expression_parses_with_promtool(tmp_path):
    rules = []
    for path in DASHBOARDS:
        for panel in _panels(json.loads(path.read_text())):
            for target in panel["targets"]:
                rules.append({"record": f"dashboard:expr_{len(rules)}", "expr": target["expr"]})
    rules_file = tmp_path / "dashboard_exprs.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = _run(["promtool", "check", "rules", str(rules_file)])
    _ok(done)
    assert f"{len(rules)} rules found" in done.stdout


def test_no_dashboard_names_a_slot_panels_repeat_over_the_slot_variable():
    """A fourth slot needs no dashboard edit: slots come from Prometheus' labels, never from the JSON."""
    for path in DASHBOARDS:
        text = path.read_text()
        for name in Topology().names:
            assert f'slot=\\"{name}\\"' not in text and f"Latency histogram: {name}" not in text, (path.name, name)
    quality = json.loads((GRAFANA_DIR / "dashboards" / "model_quality.json").read_text())
    (variable,) = quality["templating"]["list"]
    assert variable["name"] == "slot" and "label_values(model_info, slot)" in variable["definition"]
    repeated = [p for p in _panels(quality) if p.get("repeat") == "slot"]
    assert repeated and all('slot="$slot"' in t["expr"] for p in repeated for t in p["targets"])


def test_dashboards_show_what_the_design_asks_for():
    exprs = {
        path.name: " ".join(t["expr"] for p in _panels(json.loads(path.read_text())) for t in p["targets"])
        for path in DASHBOARDS
    }
    availability, quality = exprs["availability.json"], exprs["model_quality.json"]
    for needle in ("recommend_requests_total", 'status!="200"', 'le="0.8"', "error_ratio", 'up{job="inference"}',
                   "container_cpu_usage_seconds_total", "container_memory_working_set_bytes"):
        assert needle in availability, needle
    for needle in ("recommend_latency_seconds:avg_rate1m", "recommend_latency_seconds_bucket", "online_eval_score",
                   "online_eval_hit_rate", "online_eval_avg_rating", "recommend_cold_start_total"):
        assert needle in quality, needle


def test_the_console_is_internal_and_reached_only_through_nginx_with_basic_auth(native: Stack):
    compose = yaml.safe_load(COMPOSE_FILES["compose"].read_text())
    console = compose["services"]["console"]
    assert console["networks"] == ["backend"] and "ports" not in console
    assert console["environment"]["MYSQL_AUDITOR_PASSWORD"] and not any(
        key in console["environment"] for key in ("MYSQL_ADMIN_PASSWORD", "MYSQL_APP_PASSWORD",
                                                  "MYSQL_PIPELINE_PASSWORD"))
    conf = COMPOSE_FILES["nginx"].read_text()
    server = conf[conf.index("listen 8084;"):]
    assert "auth_basic_user_file /srv/config/console.htpasswd;" in server and "proxy_pass $console;" in server
    assert "auth_basic" not in native.config_path("nginx").read_text()  # natively the console is on loopback


def test_htpasswd_line_is_the_salted_sha1_nginx_reads_checked_by_hand():
    import base64
    import hashlib

    from ops.render import htpasswd_line

    line = htpasswd_line("operator", "s3cret", salt=b"12345678")
    user, _, hashed = line.rstrip("\n").partition(":")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    assert user == "operator" and hashed.startswith("{SSHA}") and raw[20:] == b"12345678"
    assert raw[:20] == hashlib.sha1(b"s3cret12345678").digest()
    with pytest.raises(ValueError):
        htpasswd_line("a:b", "x")
