"""The platform's configs pass their programs' own checks, and say what the design asks of them.

nginx -t, promtool check config/rules, promtool test rules, amtool check-config/routes: the real tools on
the real renderings (native and compose). Nothing is started here; every test takes a second or less.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import ROOT
from ops.stack import (
    COMPOSE_FILES,
    PROGRAMS,
    RULES_FILE,
    SLOTS,
    TEMPLATES,
    Stack,
    TemplateError,
    check_commands,
    compose_values,
    render,
    write_compose_configs,
    write_configs,
)

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


# ---------------------------------------------------------------------- templates


def test_render_fills_values_and_keeps_only_blocks_whose_value_is_set():
    template = "a={{A}}\n#% if ON\non {{B|json}}\n#% if !OFF\nnested\n#% endif\n#% endif\n#% if OFF\ngone\n#% endif\n"
    text = render(template, {"A": 1, "B": 'x"y', "ON": True, "OFF": ""})
    assert text == 'a=1\non "x\\"y"\nnested\n'


@pytest.mark.parametrize(
    "template",
    ["{{MISSING}}\n", "#% if MISSING\n#% endif\n", "#% if A\n", "#% endif\n"],
    ids=["unknown-value", "unknown-condition", "unclosed-if", "stray-endif"],
)
def test_render_refuses_unknown_names_and_unbalanced_blocks(template):
    with pytest.raises(TemplateError):
        render(template, {"A": "1"})


def test_compose_renderings_in_git_are_up_to_date_with_their_templates(tmp_path):
    written = write_compose_configs(tmp_path)
    for fresh in written:
        tracked = next(p for p in COMPOSE_FILES.values() if p.name == fresh.name)
        assert fresh.read_text() == tracked.read_text(), (
            f"{tracked} is stale: run `python -m ops.stack render --variant compose`"
        )


# ---------------------------------------------------------------------- NGINX


def test_native_nginx_config_passes_nginx_t(native):
    _ok(_run(check_commands(native)["nginx"]))


def test_compose_nginx_config_passes_nginx_t(tmp_path):
    # Service names resolve only inside compose: check the same rendering with loopback upstreams.
    values = compose_values()
    values.update(
        UPSTREAM_STABLE_1="127.0.0.1:5001", UPSTREAM_STABLE_2="127.0.0.1:5002", UPSTREAM_CANARY="127.0.0.1:5003",
        NGINX_PID=tmp_path / "nginx.pid", NGINX_TEMP=tmp_path,
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(TEMPLATES["nginx"].read_text(), values))
    _ok(_run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf)]))


def _directives(conf: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;{{}}]*);", conf, re.M)]


def test_nginx_upstream_has_three_servers_weighted_2_2_1_on_the_slot_ports(native):
    conf = native.config_path("nginx").read_text()
    servers = _directives(conf, "server")
    expected = [f"127.0.0.1:{native.slot_ports[slot]}" for slot in SLOTS]
    assert [s.split()[0] for s in servers] == expected
    weights = [int(re.search(r"weight=(\d+)", s).group(1)) for s in servers]
    assert weights == [2, 2, 1]
    assert weights[2] / sum(weights) == pytest.approx(0.2)
    assert _directives(conf, "keepalive"), "no keepalive connections to the upstreams"


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
    assert re.findall(r"location\s+([^{]+?)\s*\{", main_server) == ["/recommend/", "= /health", "/"]
    catch_all = main_server.split("location / {")[1].split("}")[0]
    assert "return 404" in catch_all and "proxy_pass" not in catch_all
    assert "X-Request-Id $request_id" in main_server


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
        group["labels"]["slot"]: group["targets"] for group in jobs["inference"]["static_configs"]
    }
    assert targets == {slot: [f"127.0.0.1:{native.slot_ports[slot]}"] for slot in SLOTS}
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
    assert set(programs) == set(PROGRAMS)
    for slot in SLOTS:
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
