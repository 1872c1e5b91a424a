"""The whole platform natively on one machine: `python -m ops.stack up|down|status|render`.

`make up` runs ``up``: render every config into the run directory (``MOVIEREC_RUN_DIR``), check
them with the tools of each program, start MariaDB (``ops/mariadb.sh``) and apply the schema,
write the default data and train model 1 when there is none, point the three slots at the stable
version, and let one ``supervisord`` (its own config, pid file and socket under the run directory)
run the long-lived processes: three inference servers, NGINX, Prometheus, Alertmanager. It then
waits until every part answers and prints where everything is. Running it again is safe: a live
supervisord (found by its pid file) is kept and only what is not running is started.

`make up` adds ``--demo``: the loop runs end to end on its own. A Kafka broker (``ops/kafka.sh``),
the simulator publishing its event log to it (``python -m simulator traffic --out kafka``) and the
scheduler consuming it (``python -m auto_deployment schedule``) join the stack, with the windows
shortened and announced (retrain now and every ``DEMO_EVERY``, collect ``DEMO_COLLECT``, observe the
canary ``DEMO_OBSERVE``). Versions are committed in a local clone of this repository
(``<run>/demo/repo``, its data/, models/, version.txt), never in your checkout.

`make down` runs ``down``: it stops exactly what ``up`` started, by pid file: supervisord (which
stops its children first), the Kafka broker when the demo started one (``ops/kafka.sh stop``) and
MariaDB (``ops/mariadb.sh stop``). Nothing else is touched.

Grafana is not part of the native stack (no Debian package): it runs in compose only, reading
``monitoring/grafana/``. ``render --variant compose`` writes the compose renderings of the same
templates (service names instead of loopback ports) to the tracked files next to them.

Templates use two constructs only: ``{{NAME}}`` (a value; ``{{NAME|json}}`` quotes it for YAML)
and whole lines ``#% if NAME`` / ``#% if !NAME`` / ``#% endif`` (keep a block when NAME is set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.logs import kv, setup_logging
from app.settings import ROOT, Monitoring, MySQL, Notify, Paths, Serving

log = logging.getLogger(__name__)

SLOTS = ("stable_1", "stable_2", "canary")
PROGRAMS = (*SLOTS, "nginx", "prometheus", "alertmanager")
TEMPLATES = {
    "nginx": ROOT / "nginx" / "nginx.conf.template",
    "prometheus": ROOT / "monitoring" / "prometheus" / "prometheus.yml.template",
    "alertmanager": ROOT / "monitoring" / "alertmanager" / "alertmanager.yml.template",
    "supervisord": ROOT / "ops" / "supervisord.conf.template",
}
# Compose renderings, tracked in git next to their templates (rendered without any secret).
COMPOSE_FILES = {
    "nginx": ROOT / "nginx" / "nginx.conf",
    "prometheus": ROOT / "monitoring" / "prometheus" / "prometheus.yml",
    "alertmanager": ROOT / "monitoring" / "alertmanager" / "alertmanager.yml",
}
RULES_FILE = ROOT / "monitoring" / "prometheus" / "rules.yml"
MARIADB_SCRIPT = ROOT / "ops" / "mariadb.sh"
KAFKA_SCRIPT = ROOT / "ops" / "kafka.sh"
DEMO_PROGRAMS = ("simulator", "scheduler", "online_eval")
# Demo windows (environment overrides): short enough to watch the whole loop in a few minutes.
DEMO_DEFAULTS = {"DEMO_EVERY": "10m", "DEMO_COLLECT": "2m", "DEMO_OBSERVE": "60s", "DEMO_RATE": "5",
                 "DEMO_DURATION": "86400"}
# Compose service names (compose.yml must use the same) and the ports inside the compose network.
COMPOSE_SERVICES = {"stable_1": "inference_stable_1", "stable_2": "inference_stable_2", "canary": "inference_canary"}
COMPOSE_PORTS = {"stable_1": 5001, "stable_2": 5002, "canary": 5003}


class StackError(RuntimeError):
    """A step of `up`/`down` failed; the message says which and where its log is."""


# ---------------------------------------------------------------------- templates

_IF = re.compile(r"^\s*#%\s*if\s+(!?)([A-Z][A-Z0-9_]*)\s*$")
_ENDIF = re.compile(r"^\s*#%\s*endif\s*$")
_VALUE = re.compile(r"\{\{([A-Z][A-Z0-9_]*)(\|json)?\}\}")


class TemplateError(ValueError):
    """A template names an unknown value or has unbalanced `#% if` / `#% endif` lines."""


def _is_set(value: object) -> bool:
    return value not in (None, "", "0", 0, False)


def render(template: str, values: Mapping[str, object], escape: Callable[[str], str] | None = None) -> str:
    """Fill `{{NAME}}` and keep or drop `#% if NAME` blocks; every name must be in `values`.

    `escape` is applied to each inserted value (supervisor's config needs `%` doubled).
    """
    out: list[str] = []
    keep = [True]

    def value(match: re.Match) -> str:
        name, quoted = match.group(1), match.group(2)
        if name not in values:
            raise TemplateError(f"template names unknown value {name}")
        text = str(values[name])
        if quoted:
            return json.dumps(text)
        return escape(text) if escape else text

    for number, line in enumerate(template.splitlines(keepends=True), start=1):
        if m := _IF.match(line):
            negate, name = m.group(1) == "!", m.group(2)
            if name not in values:
                raise TemplateError(f"line {number}: `#% if` names unknown value {name}")
            keep.append(keep[-1] and (_is_set(values[name]) != negate))
            continue
        if _ENDIF.match(line):
            if len(keep) == 1:
                raise TemplateError(f"line {number}: `#% endif` without `#% if`")
            keep.pop()
            continue
        if keep[-1]:
            out.append(_VALUE.sub(value, line))
    if len(keep) != 1:
        raise TemplateError("`#% if` without `#% endif`")
    return "".join(out)


def _notify_values(notify: Notify, webhook: str) -> dict[str, object]:
    return {
        "SLACK_WEBHOOK_URL": notify.slack_webhook,
        "EMAIL_ENABLED": bool(notify.smtp_host and notify.mail_to),
        "SMTP_SMARTHOST": f"{notify.smtp_host}:{notify.smtp_port}",
        "SMTP_REQUIRE_TLS": "true" if notify.smtp_starttls else "false",
        "SMTP_USER": notify.smtp_user,
        "SMTP_PASSWORD": notify.smtp_password,
        "MAIL_FROM": notify.mail_from,
        "MAIL_TO": notify.mail_to,
        "ALERT_WEBHOOK_URL": webhook,
    }


def compose_values(notify: Notify | None = None, webhook: str = "") -> dict[str, object]:
    """Values of the compose variant: service names, container paths, logs to stdout."""
    values: dict[str, object] = {
        "COMPOSE": True,
        "NGINX_USER": "",
        "NGINX_PID": "/tmp/nginx.pid",
        "NGINX_ERROR_LOG": "stderr",
        "NGINX_ACCESS_LOG": "/dev/stdout",
        "NGINX_TEMP": "/tmp",  # exists in any image; nginx creates only the last level of a temp path
        "NGINX_LISTEN": "8082",
        "NGINX_STATUS_LISTEN": "8083",
        "NGINX_STATUS_LOOPBACK_ONLY": False,
        "PROMETHEUS_TARGET": "localhost:9090",
        "ALERTMANAGER_TARGET": "alertmanager:9093",
        "RULES_FILE": "rules.yml",
        "ONLINE_EVAL_TARGET": "",
    }
    for slot in SLOTS:
        values[f"UPSTREAM_{slot.upper()}"] = f"{COMPOSE_SERVICES[slot]}:{COMPOSE_PORTS[slot]}"
    if notify is None:
        with _environment({}):
            notify = Notify.from_env()  # nothing configured: the tracked files hold no secret
    values.update(_notify_values(notify, webhook))
    return values


# ---------------------------------------------------------------------- the native stack


@dataclass(frozen=True)
class Stack:
    """Where every part of the native stack lives: ports, paths, pid files, URLs (all from the environment)."""

    run_dir: Path
    data_dir: Path
    models_dir: Path
    version_file: Path
    slot_ports: dict[str, int]
    nginx_port: int
    nginx_status_port: int
    prometheus_port: int
    alertmanager_port: int
    mysql_port: int
    notify: Notify
    alert_webhook_url: str
    demo: bool = False
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, demo: bool = False) -> Stack:
        """Read app/settings.py with `environ` (default: this process's environment)."""
        environ = dict(os.environ if environ is None else environ)
        if demo:
            environ = demo_environment(environ)
        with _environment(environ):
            paths, serving, monitoring = Paths.from_env(), Serving.from_env(), Monitoring.from_env()
            mysql, notify = MySQL.from_env(), Notify.from_env()
        run_dir = paths.run_dir.absolute()
        stack = cls(
            run_dir=run_dir,
            data_dir=paths.data_dir.absolute(),
            models_dir=paths.models_dir.absolute(),
            version_file=paths.version_file.absolute(),
            slot_ports={slot: serving.port_of(slot) for slot in SLOTS},
            nginx_port=monitoring.nginx_port,
            nginx_status_port=monitoring.nginx_status_port,
            prometheus_port=monitoring.prometheus_port,
            alertmanager_port=monitoring.alertmanager_port,
            mysql_port=mysql.port,
            notify=notify,
            alert_webhook_url=monitoring.alert_webhook_url,
            demo=demo,
        )
        # What every child sees: the caller's environment with the resolved paths made absolute, and
        # the Prometheus URL of *this* stack (the release controller queries it).
        environ.update(
            MOVIEREC_RUN_DIR=str(run_dir),
            MOVIEREC_DATA_DIR=str(stack.data_dir),
            MOVIEREC_MODELS_DIR=str(stack.models_dir),
            MOVIEREC_VERSION_FILE=str(stack.version_file),
            PROMETHEUS_URL=environ.get("PROMETHEUS_URL") or stack.prometheus_url,
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p),
        )
        environ.pop("MOVIEREC_SLOT", None)
        environ.pop("MOVIEREC_PORT", None)
        object.__setattr__(stack, "env", environ)
        return stack

    # paths ------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def supervisor_sock(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def config_path(self, name: str) -> Path:
        return {
            "nginx": self.run_dir / "nginx" / "nginx.conf",
            "prometheus": self.run_dir / "prometheus" / "prometheus.yml",
            "alertmanager": self.run_dir / "alertmanager" / "alertmanager.yml",
            "supervisord": self.supervisor_conf,
        }[name]

    def pointer(self, slot: str) -> Path:
        return self.run_dir / "slots" / slot

    # urls -------------------------------------------------------------------------------
    @property
    def nginx_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    @property
    def nginx_status_url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_status_port}/stub_status"

    @property
    def online_eval_port(self) -> int:
        return int(self.env.get("ONLINE_EVAL_PORT", "9105"))

    def slot_url(self, slot: str) -> str:
        return f"http://127.0.0.1:{self.slot_ports[slot]}"

    def values(self) -> dict[str, object]:
        """Template values of the native variant."""
        bin_dir = Path(sys.executable).parent  # the venv's bin; not resolved (it is a symlink farm)
        values: dict[str, object] = {
            "COMPOSE": False,
            "ROOT": ROOT,
            "RUN_DIR": self.run_dir,
            "LOG_DIR": self.log_dir,
            "SUPERVISOR_SOCK": self.supervisor_sock,
            "SUPERVISOR_PID": self.supervisor_pidfile,
            "GUNICORN": bin_dir / "gunicorn",
            "NGINX_BIN": _binary("nginx"),
            "PROMETHEUS_BIN": _binary("prometheus"),
            "ALERTMANAGER_BIN": _binary("prometheus-alertmanager", "alertmanager"),
            "NGINX_USER": "",
            "NGINX_PID": self.run_dir / "nginx" / "nginx.pid",
            "NGINX_ERROR_LOG": self.log_dir / "nginx.error.log",
            "NGINX_ACCESS_LOG": self.log_dir / "nginx.access.log",
            "NGINX_TEMP": self.run_dir / "nginx" / "tmp",
            "NGINX_LISTEN": f"127.0.0.1:{self.nginx_port}",
            "NGINX_STATUS_LISTEN": f"127.0.0.1:{self.nginx_status_port}",
            "NGINX_STATUS_LOOPBACK_ONLY": True,
            "PROMETHEUS_PORT": self.prometheus_port,
            "ALERTMANAGER_PORT": self.alertmanager_port,
            "PROMETHEUS_TARGET": f"127.0.0.1:{self.prometheus_port}",
            "ALERTMANAGER_TARGET": f"127.0.0.1:{self.alertmanager_port}",
            "RULES_FILE": RULES_FILE,
            "DEMO": self.demo,
            "ONLINE_EVAL_TARGET": f"127.0.0.1:{self.online_eval_port}" if self.demo else "",
            "ONLINE_EVAL_PORT": self.online_eval_port,
            "PYTHON": sys.executable,
            "NGINX_PORT": self.nginx_port,
            **{k: self.env.get(k, v) for k, v in DEMO_DEFAULTS.items()},
        }
        for slot in SLOTS:
            values[f"PORT_{slot.upper()}"] = self.slot_ports[slot]
            values[f"UPSTREAM_{slot.upper()}"] = f"127.0.0.1:{self.slot_ports[slot]}"
        values.update(_notify_values(self.notify, self.alert_webhook_url))
        return values


@contextlib.contextmanager
def _environment(environ: Mapping[str, str]):
    """Temporarily make `environ` the process environment (settings read os.environ)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).is_file()), None
        )
        if found:
            return found
    raise StackError(f"{names[0]} is not installed (run `make sysdeps` / ops/system-deps.sh)")


def _generated(template: Path, text: str) -> str:
    """Prefix a rendering with a line that says where it comes from."""
    mark = ";" if template.name.startswith("supervisord") else "#"
    return f"{mark} GENERATED from {template.relative_to(ROOT)} by `python -m ops.stack`; edit the template.\n{text}"


def _write_if_changed(path: Path, text: str) -> bool:
    """Write atomically; True when the content changed (a running program then needs a reload)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def write_configs(stack: Stack) -> dict[str, bool]:
    """Render the four templates into the run directory; returns which files changed."""
    values = stack.values()
    for sub in ("logs", "nginx/tmp", "prometheus/data", "alertmanager/data", "slots"):
        (stack.run_dir / sub).mkdir(parents=True, exist_ok=True)
    for slot in SLOTS:
        (stack.run_dir / "metrics" / slot).mkdir(parents=True, exist_ok=True)
        (stack.run_dir / "spool" / slot).mkdir(parents=True, exist_ok=True)
    changed = {}
    for name, template in TEMPLATES.items():
        escape = (lambda s: s.replace("%", "%%")) if name == "supervisord" else None
        text = _generated(template, render(template.read_text(), values, escape))
        changed[name] = _write_if_changed(stack.config_path(name), text)
    return changed


def write_compose_configs(out_dir: Path | None = None, notify: Notify | None = None, webhook: str = "") -> list[Path]:
    """Render the compose variant: to the tracked files (no secrets) or, with `out_dir`, with `notify`."""
    values = compose_values(notify, webhook)
    written = []
    for name, tracked in COMPOSE_FILES.items():
        target = tracked if out_dir is None else Path(out_dir) / tracked.name
        _write_if_changed(target, _generated(TEMPLATES[name], render(TEMPLATES[name].read_text(), values)))
        written.append(target)
    return written


def check_commands(stack: Stack) -> dict[str, list[str]]:
    """The syntax check of each generated config, with the program's own tool."""
    return {
        "nginx": [str(stack.values()["NGINX_BIN"]), "-t", "-q", "-p", str(stack.run_dir / "nginx"),
                  "-c", str(stack.config_path("nginx"))],
        "prometheus": [_binary("promtool"), "check", "config", str(stack.config_path("prometheus"))],
        "alertmanager": [_binary("amtool"), "check-config", str(stack.config_path("alertmanager"))],
    }


def check_configs(stack: Stack) -> None:
    """Refuse to start anything on a config its program would reject (the message quotes the tool)."""
    for name, command in check_commands(stack).items():
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise StackError(f"{name} config {stack.config_path(name)} is invalid:\n{done.stdout}{done.stderr}")


# ---------------------------------------------------------------------- MariaDB, data, model


def _run(command: list[str], stack: Stack, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    log.info(what, extra=kv(command=" ".join(command)))
    done = subprocess.run(command, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done


def start_mariadb(stack: Stack) -> None:
    """Private MariaDB under the run directory (started unless its status says it runs), then schema and accounts."""
    running = subprocess.run(["bash", str(MARIADB_SCRIPT), "status"], cwd=ROOT, env=stack.env,
                             capture_output=True, text=True, timeout=30)
    if running.returncode != 0:  # ask first: `start` on a running server waits on a lock the server holds
        _run(["bash", str(MARIADB_SCRIPT), "start"], stack, "starting MariaDB", timeout=120)
    _run([sys.executable, "-m", "auto_deployment.schema", "apply"], stack, "applying the provenance schema")


def demo_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Point data, models, version.txt and the versioning repository at a local clone of this checkout.

    The retraining loop commits every version it makes; in the demo it does so in `<run>/demo/repo`
    (created by `git clone --local`, so it holds this repository's `data.dvc` and `version.txt`), not
    on the branch you work on. Settings you exported yourself win.
    """
    environ = dict(environ)
    with _environment(environ):
        run_dir = Paths.from_env().run_dir.absolute()
    repo = Path(environ.get("MOVIEREC_REPO_DIR") or run_dir / "demo" / "repo")
    if not (repo / ".git").is_dir():
        repo.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(repo)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise StackError(f"could not make the demo repository {repo}: {done.stderr.strip()}")
        log.info("demo repository cloned", extra=kv(repo=repo))
    for name, default in (("MOVIEREC_REPO_DIR", repo), ("MOVIEREC_DATA_DIR", repo / "data"),
                          ("MOVIEREC_MODELS_DIR", repo / "models"), ("MOVIEREC_VERSION_FILE", repo / "version.txt")):
        environ.setdefault(name, str(default))
    return environ


def kafka(stack: Stack, action: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(KAFKA_SCRIPT), action], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=300)


def start_kafka(stack: Stack) -> None:
    """The demo's broker (ops/kafka.sh: fetched from Maven Central once, then cached)."""
    if kafka(stack, "status").returncode != 0:
        log.info("starting the Kafka broker (first run fetches its jars from Maven Central)")
        done = kafka(stack, "start")
        if done.returncode != 0:
            raise StackError(f"Kafka did not start:\n{done.stdout}{done.stderr}")


def versions(models_dir: Path) -> list[int]:
    """Version numbers that have a bundle folder in `models_dir`."""
    if not models_dir.is_dir():
        return []
    return sorted(int(p.name) for p in models_dir.iterdir() if p.is_dir() and p.name.isdigit())


def ensure_model(stack: Stack) -> int:
    """The stable version to serve: default data and model 1 are created on a fresh checkout."""
    if not versions(stack.models_dir):
        with _environment(stack.env):
            from simulator.datasets import write_default_data

            write_default_data(stack.data_dir)
        _run(
            [sys.executable, "-m", "auto_deployment", "train", "--data-dir", str(stack.data_dir),
             "--out", str(stack.models_dir / "1"), "--version", "1", "--evaluate"],
            stack, "training model 1 on the default data (with its offline evaluation)", timeout=1800,
        )
    if not stack.version_file.is_file() and (stack.models_dir / "1").is_dir():
        _write_if_changed(stack.version_file, "1\n")
    try:
        stable = int(stack.version_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StackError(f"{stack.version_file} does not name a version: {exc}") from exc
    if not (stack.models_dir / str(stable)).is_dir():
        missing = stack.models_dir / str(stable)
        raise StackError(f"{stack.version_file} names version {stable}, but {missing} is missing")
    return stable


def record_tracking(stack: Stack, version: int) -> bool:
    """Give the served version its `tracking` row if it has none (model 1 made by `up` on a fresh checkout).

    Versions made by the pipeline have theirs already (auto_deployment.model.registry); an existing row is never
    touched. Without a row an auditor could not say what data and RMSE the first model had.
    """
    with _environment(stack.env):
        from app.contracts.bundle import checksum as bundle_checksum
        from auto_deployment import schema

        settings = MySQL.from_env()
    bundle = stack.models_dir / str(version)
    try:
        conn = schema.connect(settings, "admin")
    except schema.DatabaseUnreachable as exc:
        raise StackError(str(exc)) from exc
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM tracking WHERE version_number = %s", (version,))
            if cur.fetchone()[0]:
                return False
        metadata = json.loads((bundle / "metadata.json").read_text())
        metadata["version"] = version
        schema.record_tracking(conn, schema.tracking_row(metadata, model_checksum=bundle_checksum(bundle)))
    finally:
        conn.close()
    log.info("tracking row recorded", extra=kv(version=version, bundle=bundle))
    return True


def point_slots(stack: Stack, version: int, overwrite: bool) -> list[str]:
    """Write the slot pointer files; on a running stack only missing ones (a release may be under way)."""
    pointed = []
    for slot in SLOTS:
        if overwrite or not stack.pointer(slot).is_file():
            _write_if_changed(stack.pointer(slot), f"{version}\n")
            pointed.append(slot)
    return pointed


# ---------------------------------------------------------------------- supervisord


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie has exited already
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def supervisord_pid(stack: Stack) -> int | None:
    """Pid of this stack's supervisord, from its pid file, if that process is alive and really ours."""
    try:
        pid = int(stack.supervisor_pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "supervisord" not in cmdline or str(stack.supervisor_conf) not in cmdline:
        return None  # the pid was reused by another process
    return pid


def rpc(stack: Stack) -> xmlrpc.client.ServerProxy:
    """XML-RPC proxy of this stack's supervisord over its unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{stack.supervisor_sock}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def process_info(stack: Stack) -> dict[str, dict]:
    """supervisord's view of each program: state name and pid."""
    return {p["name"]: p for p in rpc(stack).supervisor.getAllProcessInfo()}


def program_pids(stack: Stack) -> dict[str, int]:
    """Pids of the running programs (0 for a stopped one)."""
    return {name: int(info["pid"]) for name, info in process_info(stack).items()}


def supervisorctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(stack.supervisor_conf), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=stack.env)


def start_supervisord(stack: Stack, timeout: float = 30) -> int:
    """Start supervisord (it daemonizes) and wait until its socket answers; returns its pid."""
    for stale in (stack.supervisor_pidfile, stack.supervisor_sock):
        stale.unlink(missing_ok=True)
    command = [str(Path(sys.executable).parent / "supervisord"), "-c", str(stack.supervisor_conf)]
    done = subprocess.run(command, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise StackError(f"supervisord did not start: {done.stdout}{done.stderr}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = supervisord_pid(stack)
        if pid is not None:
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if rpc(stack).supervisor.getState()["statename"] == "RUNNING":
                    return pid
        time.sleep(0.1)
    raise StackError(f"supervisord did not come up; see {stack.log_dir / 'supervisord.log'}")


def converge_running(stack: Stack, changed: Mapping[str, bool]) -> list[str]:
    """On a live supervisord: apply config changes and start whatever is not running."""
    actions = []
    if changed.get("supervisord"):
        done = supervisorctl(stack, "update")
        actions.append(f"supervisor update: {done.stdout.strip() or 'nothing'}")
    info = process_info(stack)
    for name, proc in info.items():
        if proc["statename"] not in ("RUNNING", "STARTING"):
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc(stack).supervisor.startProcess(name, False)
            actions.append(f"started {name}")
    if changed.get("nginx") and info.get("nginx", {}).get("statename") == "RUNNING":
        rpc(stack).supervisor.signalProcess("nginx", "HUP")
        actions.append("reloaded nginx")
    for name, url in (("prometheus", stack.prometheus_url), ("alertmanager", stack.alertmanager_url)):
        if changed.get(name) and info.get(name, {}).get("statename") == "RUNNING":
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=5)
                actions.append(f"reloaded {name}")
    return actions


def ports(stack: Stack) -> dict[str, int]:
    """Every port the native stack listens on, by program (MariaDB's is ops/mariadb.sh's business)."""
    return {
        **{slot: stack.slot_ports[slot] for slot in SLOTS},
        "nginx": stack.nginx_port,
        "nginx stub_status": stack.nginx_status_port,
        "prometheus": stack.prometheus_port,
        "alertmanager": stack.alertmanager_port,
    }


def busy_ports(stack: Stack) -> dict[str, int]:
    """Ports some other process already listens on (before a fresh start: say so instead of crash-looping)."""
    busy = {}
    for name, port in ports(stack).items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy[name] = port
    return busy


# ---------------------------------------------------------------------- readiness


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def prometheus_slots_up(stack: Stack) -> set[str]:
    """Slots whose inference target this Prometheus process has scraped successfully.

    The targets API, not `up == 1`: a query could still see samples a previous run left in the TSDB.
    """
    try:
        with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/targets?state=active", timeout=2) as response:
            body = json.load(response)
    except (OSError, ValueError):
        return set()
    return {
        t["labels"].get("slot", "")
        for t in body.get("data", {}).get("activeTargets", [])
        if t.get("labels", {}).get("job") == "inference" and t.get("health") == "up"
    }


@dataclass(frozen=True)
class Check:
    """A readiness check; `after` names checks that must pass first (NGINX only once its upstreams answer,
    so that it does not mark them failed while they boot)."""

    name: str
    ok: Callable[[], bool]
    after: tuple[str, ...] = ()


def readiness_checks(stack: Stack) -> list[Check]:
    """One check per part, in the order `up` reports them."""
    checks = [Check(slot, lambda slot=slot: _http_ok(f"{stack.slot_url(slot)}/ready")) for slot in SLOTS]
    checks += [
        Check("nginx", lambda: _http_ok(f"{stack.nginx_url}/health"), after=SLOTS),
        Check("prometheus", lambda: _http_ok(f"{stack.prometheus_url}/-/ready")),
        Check("alertmanager", lambda: _http_ok(f"{stack.alertmanager_url}/-/ready")),
        Check("prometheus sees all slots", lambda: prometheus_slots_up(stack) >= set(SLOTS),
              after=(*SLOTS, "prometheus")),
    ]
    if stack.demo:
        checks += [Check(name, lambda name=name: _program_running(stack, name), after=("nginx",))
                   for name in DEMO_PROGRAMS]
    return checks


def _program_running(stack: Stack, name: str) -> bool:
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        return process_info(stack).get(name, {}).get("statename") == "RUNNING"
    return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)\n"


def wait_ready(stack: Stack, timeout: float) -> dict[str, float]:
    """Poll every part until it answers; returns seconds until each was ready. Fails with the log tail."""
    started = time.monotonic()
    pending = readiness_checks(stack)
    ready_after: dict[str, float] = {}
    while pending:
        for check in list(pending):
            if all(name in ready_after for name in check.after) and check.ok():
                ready_after[check.name] = round(time.monotonic() - started, 2)
                pending.remove(check)
        if not pending:
            break
        fatal = [n for n, p in process_info(stack).items() if p["statename"] == "FATAL"]  # supervisor gave up
        if fatal or time.monotonic() - started > timeout:
            waiting = [c.name for c in pending]
            program = fatal[0] if fatal else next((n for n in waiting if n in PROGRAMS), "prometheus")
            reason = f"{', '.join(fatal)} keeps exiting" if fatal else f"not ready after {timeout:.0f} s: {waiting}"
            logfile = stack.log_dir / f"{program}.log"
            raise StackError(
                f"{reason}\n--- {logfile} (last lines)\n{_tail(logfile)}"
                "the stack is left running for inspection; `make down` stops it"
            )
        time.sleep(0.2)
    return ready_after


# ---------------------------------------------------------------------- commands


def up(stack: Stack, timeout: float = 180.0) -> int:
    """Bring the whole stack up (idempotent); prints where everything is."""
    started = time.monotonic()
    changed = write_configs(stack)
    check_configs(stack)
    start_mariadb(stack)
    if stack.demo:
        start_kafka(stack)
    stable = ensure_model(stack)
    record_tracking(stack, stable)
    pid = supervisord_pid(stack)
    if pid is None:
        if busy := busy_ports(stack):
            taken = ", ".join(f"{name} {port}" for name, port in busy.items())
            raise StackError(f"ports already in use: {taken}; free them or choose others (app/settings.py)")
        point_slots(stack, stable, overwrite=True)
        pid = start_supervisord(stack)
        actions = [f"started supervisord (pid {pid})"]
    else:
        pointed = point_slots(stack, stable, overwrite=False)
        actions = [f"supervisord already running (pid {pid})", *converge_running(stack, changed)]
        actions += [f"pointed {slot} at version {stable}" for slot in pointed]
    ready = wait_ready(stack, timeout)
    elapsed = time.monotonic() - started
    log.info("stack up", extra=kv(seconds=round(elapsed, 1), stable=stable, run_dir=stack.run_dir))
    print(summary(stack, stable, elapsed, actions, ready))
    return 0


def summary(stack: Stack, stable: int, elapsed: float, actions: list[str], ready: Mapping[str, float]) -> str:
    slots = "\n".join(f"  {slot:<9} {stack.slot_url(slot)}  (/ready /version /metrics)" for slot in SLOTS)
    return f"""
movierec is up ({elapsed:.1f} s; {'; '.join(actions)}), serving version {stable} on every slot
  recommend  {stack.nginx_url}/recommend/<userid>   (NGINX: 80% stable, 20% canary)
{slots}
  prometheus {stack.prometheus_url}
  alerts     {stack.alertmanager_url}
  nginx      {stack.nginx_status_url}  (stub_status, loopback only)
  mariadb    127.0.0.1:{stack.mysql_port}
  grafana    compose only (`docker compose up grafana`): no native package
  logs       {stack.log_dir}/
  configs    {stack.run_dir}/  (rendered from nginx/, monitoring/, ops/supervisord.conf.template)
  ready      {', '.join(f'{k} {v}s' for k, v in ready.items())}
  status     python -m ops.stack status   |   supervisorctl -c {stack.supervisor_conf} status
  stop       make down   (python -m ops.stack down)
""" + (demo_summary(stack) if stack.demo else "")


def demo_summary(stack: Stack) -> str:
    v = stack.values()
    return f"""
demo loop (windows shortened from 2 days / 15 min / 12 h):
  simulator  {v['DEMO_RATE']} sessions/s through NGINX, event log to Kafka topic movielog
             (log: {stack.log_dir}/simulator.log)
  scheduler  retrains now and every {v['DEMO_EVERY']}: collect {v['DEMO_COLLECT']} from Kafka, gate RMSE < 1,
             version with DVC + git in {stack.env.get('MOVIEREC_REPO_DIR')}, canary observed {v['DEMO_OBSERVE']}
             then promote or abort   (log: {stack.log_dir}/scheduler.log)
  watch it   curl -sI {stack.nginx_url}/recommend/1 | grep X-Model   |   python -m auto_deployment release --status
"""


def down(stack: Stack, timeout: float = 60.0) -> int:
    """Stop what `up` started, by pid file: supervisord (children first), then MariaDB."""
    pid = supervisord_pid(stack)
    if pid is None:
        print(f"supervisord of {stack.run_dir} is not running")
    else:
        os.kill(pid, signal.SIGTERM)  # supervisord stops every program (process groups) and then exits
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            raise StackError(f"supervisord (pid {pid}) still running after {timeout:.0f} s; see its log")
        print(f"stopped supervisord (pid {pid}) and its programs")
    for stale in (stack.supervisor_pidfile, stack.supervisor_sock):
        stale.unlink(missing_ok=True)
    if (stack.run_dir / "kafka" / "kafka.pid").is_file():
        done = kafka(stack, "stop")
        print((done.stdout + done.stderr).strip() or "Kafka stopped")
    if MARIADB_SCRIPT.is_file():
        done = subprocess.run(["bash", str(MARIADB_SCRIPT), "stop"], cwd=ROOT, env=stack.env,
                              capture_output=True, text=True, timeout=120)
        print((done.stdout + done.stderr).strip() or "MariaDB stopped")
        if done.returncode != 0:
            return 1
    return 0


def status(stack: Stack) -> int:
    """Print each program's state and each part's readiness; 0 when everything is up."""
    pid = supervisord_pid(stack)
    if pid is None:
        print(f"supervisord of {stack.run_dir} is not running")
        return 3
    print(f"supervisord pid {pid}  ({stack.supervisor_conf})")
    for name, info in process_info(stack).items():
        print(f"  {name:<13} {info['statename']:<9} {info['description']}")
    if MARIADB_SCRIPT.is_file():
        done = subprocess.run(["bash", str(MARIADB_SCRIPT), "status"], cwd=ROOT, env=stack.env,
                              capture_output=True, text=True, timeout=30)
        print(f"  mariadb       {(done.stdout + done.stderr).strip()}")
    all_ready = True
    for check in readiness_checks(stack):
        ok = check.ok()
        all_ready &= ok
        print(f"  ready: {check.name:<26} {'yes' if ok else 'NO'}")
    return 0 if all_ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the native stack (idempotent) and wait until it is ready")
    p_up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p_up.add_argument("--demo", action="store_true",
                      help="also run Kafka, the simulator and the retraining scheduler (make up)")
    sub.add_parser("down", help="stop what `up` started (supervisord and MariaDB, by pid file)")
    sub.add_parser("status", help="state of every program and part")
    p_render = sub.add_parser("render", help="render the configs without starting anything")
    p_render.add_argument("--variant", choices=["native", "compose"], default="native")
    p_render.add_argument("--out", type=Path, default=None,
                          help="compose: write here, with the notify settings of the environment "
                               "(default: the tracked files, rendered without secrets)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        stack = Stack.from_env(demo=getattr(args, "demo", False))
        if args.command == "up":
            return up(stack, args.timeout)
        if args.command == "down":
            return down(stack)
        if args.command == "status":
            return status(stack)
        if args.variant == "compose":
            notify = Notify.from_env() if args.out else None
            webhook = stack.alert_webhook_url if args.out else ""
            for path in write_compose_configs(args.out, notify, webhook):
                print(path)
        else:
            write_configs(stack)
            check_configs(stack)
            print(stack.run_dir)
        return 0
    except StackError as exc:
        print(f"ops.stack {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
