"""Every config of the platform as a Jinja2 rendering of the slot topology (`app.contracts.topology`).

Templates loop over ``topology.slots`` (name, role, port, weight, service), so a fourth slot or a new
weight changes no template: NGINX's upstream, the Prometheus scrape targets, the supervisor programs
and the compose services all follow. Two variants of the same templates:

- native (`native_context`): loopback ports from the settings, paths under the run directory;
  written by `write_configs` for ``python -m ops.stack up`` and checked by each program's own tool;
- compose (`compose_context`): service names and container paths; ``python -m ops.stack render
  --variant compose`` writes the tracked files next to the templates (and ``compose.yml`` itself),
  which a test keeps equal to a fresh rendering.

NGINX's ``server`` lines are not in nginx.conf, which includes ``<run>/nginx/upstream.conf``, written by
`app.contracts.topology.write_nginx_upstream` here at start and by the release's router when a step changes
the split (then a graceful reload), so a weight change never touches the rest of the config.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from app.contracts import edgelog, pointer
from app.contracts.topology import (
    Slot,
    Topology,
    loopback_address,
    reload_applied_path,
    reload_request_path,
    service_address,
    upstream_path,
    write_nginx_upstream,
)
from app.files import write_text_atomic
from app.logs import kv
from app.settings import ROOT, Notify
from ops.services import Stack, StackError, binary, environment

log = logging.getLogger(__name__)

TEMPLATES = {
    "nginx": ROOT / "nginx" / "nginx.conf.template",
    "prometheus": ROOT / "monitoring" / "prometheus" / "prometheus.yml.template",
    "alertmanager": ROOT / "monitoring" / "alertmanager" / "alertmanager.yml.template",
    "supervisord": ROOT / "ops" / "supervisord.conf.template",
    "compose": ROOT / "compose.yml.template",
}
NATIVE_CONFIGS = ("nginx", "prometheus", "alertmanager", "supervisord")
# Compose renderings, tracked in git (rendered without any secret); config-init writes the first three
# again, with the notification settings of .env, into its volume (`--out`).
COMPOSE_FILES = {
    "nginx": ROOT / "nginx" / "nginx.conf",
    "prometheus": ROOT / "monitoring" / "prometheus" / "prometheus.yml",
    "alertmanager": ROOT / "monitoring" / "alertmanager" / "alertmanager.yml",
    "compose": ROOT / "compose.yml",
}
COMPOSE_RUNTIME_CONFIGS = ("nginx", "prometheus", "alertmanager")
RULES_FILE = ROOT / "monitoring" / "prometheus" / "rules.yml"
MTAIL_PROGS = ROOT / "monitoring" / "mtail"  # mtail's programs: NGINX's access log as metrics (native stack)
# The run directory inside the compose images (docker/*.Dockerfile: MOVIEREC_RUN_DIR); NGINX's upstream file
# lives in <run>/nginx on a volume the release (scheduler) writes and NGINX reads, as natively.
COMPOSE_RUN_DIR = Path("/srv/run")
# The config volume as NGINX mounts it, and the console's password file config-init writes there.
COMPOSE_CONFIG_DIR = "/srv/config"
COMPOSE_MTAIL_PORT = 3903  # mtail's default port, inside the private network (service edge-metrics)
HTPASSWD = "console.htpasswd"
_SERVER = re.compile(r"^\s*server\s+(\S+)", re.M)
# NGINX's last try of a request every server failed (nginx.conf.template, `@last_try`; issue 12): a fleet that
# stalls (machine load) is waited for up to `read` instead of answering 502. Worst case of a request: the first
# tries' 780 ms (380 ms retry window + 100 ms connect + 300 ms read) + connect + read of the last try.
_LAST_TRY_CONNECT_MS, _LAST_TRY_READ_MS = 100, 1500
LAST_TRY = {
    "connect": f"{_LAST_TRY_CONNECT_MS}ms",
    "read": f"{_LAST_TRY_READ_MS}ms",
    "worst": f"{380 + 100 + 300 + _LAST_TRY_CONNECT_MS + _LAST_TRY_READ_MS} ms",
}


# ---------------------------------------------------------------------- Jinja2


def _percent(value: Any) -> str:
    """supervisor reads ``%(name)s`` expansions in its config: every inserted value has its ``%`` doubled."""
    return str(value).replace("%", "%%")


def _quote(value: Any) -> str:
    """A YAML double-quoted scalar (JSON is valid YAML), for values that may hold ``:``, ``"`` or ``#``."""
    return json.dumps(str(value))


@functools.cache
def _jinja(percent_escaped: bool) -> jinja2.Environment:
    """Templates are looked up relative to the repository root; an unknown name is an error, not empty text."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_percent if percent_escaped else None,
    )
    env.filters["quote"] = _quote
    # Contracts every variant renders the same way, whatever context a caller (or a test) builds.
    env.globals.update(edge_log_format=edgelog.nginx_log_format(), last_try=LAST_TRY)
    return env


def render_text(text: str, context: Mapping[str, Any], percent_escaped: bool = False) -> str:
    """Render a template given as text (tests, one-off templates)."""
    return _jinja(percent_escaped).from_string(text).render(context)


def render(name: str, context: Mapping[str, Any]) -> str:
    """Render template `name` (a key of `TEMPLATES`) with `context`, headed by a line naming its source."""
    template = TEMPLATES[name]
    text = _jinja(name == "supervisord").get_template(template.relative_to(ROOT).as_posix()).render(context)
    mark = ";" if name == "supervisord" else "#"
    return f"{mark} GENERATED from {template.relative_to(ROOT)} by `python -m ops.stack`; edit the template.\n{text}"


# ---------------------------------------------------------------------- contexts


def notify_context(notify: Notify, webhook: str) -> dict[str, Any]:
    """Alertmanager's receivers: an empty setting renders that receiver without configuration (drops alerts)."""
    return {
        "slack_webhook": notify.slack_webhook,
        "email": bool(notify.smtp_host and notify.mail_to),
        "smarthost": f"{notify.smtp_host}:{notify.smtp_port}",
        "require_tls": "true" if notify.smtp_starttls else "false",
        "smtp_user": notify.smtp_user,
        "smtp_password": notify.smtp_password,
        "mail_from": notify.mail_from,
        "mail_to": notify.mail_to,
        "webhook": webhook,
    }


def native_context(stack: Stack) -> dict[str, Any]:
    """Values of the native variant: the stack's topology on loopback ports, paths under its run directory."""
    bin_dir = Path(sys.executable).parent  # the venv's bin; not resolved (it is a symlink farm)
    run_dir = stack.run_dir
    return {
        "compose": False,
        "topology": stack.topology,
        "address": loopback_address,
        "root": ROOT,
        "run_dir": run_dir,
        "log_dir": stack.log_dir,
        "pointer_of": lambda slot: pointer.slot_pointer(run_dir, slot.name),
        "supervisor": {"sock": stack.supervisor_sock, "pidfile": stack.supervisor_pidfile},
        "bin": {
            "gunicorn": bin_dir / "gunicorn",
            "python": sys.executable,
            "nginx": binary("nginx"),
            "prometheus": binary("prometheus"),
            "alertmanager": binary("prometheus-alertmanager", "alertmanager"),
            "mtail": binary("mtail"),
        },
        "nginx": {
            "user": "",
            "prefix": run_dir / "nginx",
            "conf": stack.config_path("nginx"),
            "pidfile": stack.nginx_pidfile,
            "error_log": stack.log_dir / "nginx.error.log",
            "access_log": stack.log_dir / "nginx.access.log",
            "access_log_copy": "",
            "temp": run_dir / "nginx" / "tmp",
            "listen": f"127.0.0.1:{stack.nginx_port}",
            "status_listen": f"127.0.0.1:{stack.nginx_status_port}",
            "status_loopback_only": True,
            "upstream": stack.nginx_upstream,
            "port": stack.nginx_port,
        },
        "prometheus": {
            "conf": stack.config_path("prometheus"),
            "data": run_dir / "prometheus" / "data",
            "port": stack.prometheus_port,
            "target": f"127.0.0.1:{stack.prometheus_port}",
            "rules_file": RULES_FILE,
            "online_eval_target": f"127.0.0.1:{stack.online_eval_port}" if stack.demo else "",
            "mtail_target": f"127.0.0.1:{stack.mtail_port}",
        },
        "mtail": {"port": stack.mtail_port, "progs": MTAIL_PROGS},
        "alertmanager": {
            "conf": stack.config_path("alertmanager"),
            "data": run_dir / "alertmanager" / "data",
            "port": stack.alertmanager_port,
            "target": f"127.0.0.1:{stack.alertmanager_port}",
        },
        "notify": notify_context(stack.notify, stack.alert_webhook_url),
        "demo": {**{k.removeprefix("DEMO_").lower(): v for k, v in stack.demo_windows.items()},
                 "online_eval_port": stack.online_eval_port} if stack.demo else None,
    }


def compose_context(
    notify: Notify | None = None, webhook: str = "", topology: Topology | None = None
) -> dict[str, Any]:
    """Values of the compose variant: service names, container paths, the edge log on its volume (and stdout).

    Without `notify` nothing is configured, so the tracked files hold no secret.
    """
    if notify is None:
        with environment({}):
            notify = Notify.from_env()
    return {
        "compose": True,
        "topology": topology or Topology(),
        "address": service_address,
        "run_dir": COMPOSE_RUN_DIR,
        "reload_request": reload_request_path(COMPOSE_RUN_DIR),  # docker/nginx-run.sh's handshake with the router
        "reload_applied": reload_applied_path(COMPOSE_RUN_DIR),
        "mtail_port": COMPOSE_MTAIL_PORT,
        "nginx": {
            "user": "",
            "pidfile": "/tmp/nginx.pid",
            "error_log": "stderr",
            # the edge log on the `edge_log` volume, read by edge-metrics (mtail); a copy on stdout for `logs`
            "access_log": COMPOSE_RUN_DIR / "edge" / "access.log",
            "access_log_copy": "/dev/stdout",
            "temp": "/tmp",  # exists in any image; nginx creates only the last level of a temp path
            "listen": "8082",
            "status_listen": "8083",
            "status_loopback_only": False,
            "upstream": upstream_path(COMPOSE_RUN_DIR),
            "console_listen": "8084",
            "console_htpasswd": f"{COMPOSE_CONFIG_DIR}/{HTPASSWD}",
        },
        # online-eval shares Prometheus's network namespace (it listens on loopback only): compose.yml.template
        "prometheus": {"target": "localhost:9090", "rules_file": "rules.yml", "online_eval_target": "localhost:9108",
                       "mtail_target": f"edge-metrics:{COMPOSE_MTAIL_PORT}"},
        "alertmanager": {"target": "alertmanager:9093"},
        "notify": notify_context(notify, webhook),
    }


# ---------------------------------------------------------------------- writing


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically; True when the content changed (a running program then needs a reload)."""
    if path.is_file() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def ensure_upstream(path: Path, topology: Topology, address: Callable[[Slot], str], reset: bool) -> bool:
    """Write NGINX's upstream file at the topology's resting weights; True when it changed.

    Without `reset` (a live stack) a file that names the topology's servers is kept as it is: a release
    may have moved the weights. It is rewritten when missing or when the set of servers differs (a slot
    added or a port changed).
    """
    path = Path(path)
    fresh = topology.nginx_servers(address)
    if path.is_file():
        current = path.read_text()
        if current == fresh or (not reset and _SERVER.findall(current) == _SERVER.findall(fresh)):
            return False
    write_nginx_upstream(path, topology, address)
    log.info("nginx upstream written", extra=kv(path=path, canary_share=float(topology.canary_share())))
    return True


def write_configs(stack: Stack, reset_upstream: bool = True) -> dict[str, bool]:
    """Render the native configs into the run directory; returns which files changed.

    `reset_upstream`: put NGINX back to the resting weights (a fresh start); False on a live stack.
    """
    context = native_context(stack)
    for sub in ("logs", "nginx/tmp", "prometheus/data", "alertmanager/data", "slots"):
        (stack.run_dir / sub).mkdir(parents=True, exist_ok=True)
    for slot in stack.slots:
        (stack.run_dir / "metrics" / slot).mkdir(parents=True, exist_ok=True)
        (stack.run_dir / "spool" / slot).mkdir(parents=True, exist_ok=True)
    changed = {name: write_if_changed(stack.config_path(name), render(name, context)) for name in NATIVE_CONFIGS}
    changed["upstream"] = ensure_upstream(stack.nginx_upstream, stack.topology, loopback_address, reset_upstream)
    return changed


def compose_renderings(topology: Topology | None = None) -> dict[Path, str]:
    """What the tracked compose files must hold: a fresh rendering of their templates (no secrets)."""
    context = compose_context(topology=topology)
    return {path: render(name, context) for name, path in COMPOSE_FILES.items()}


def write_compose_configs(out_dir: Path | None = None, notify: Notify | None = None, webhook: str = "") -> list[Path]:
    """The compose variant: every tracked file (no secrets) or, with `out_dir`, the runtime configs with `notify`."""
    if out_dir is None:
        renderings = compose_renderings()
        for path, text in renderings.items():
            write_if_changed(path, text)
        return list(renderings)
    context = compose_context(notify, webhook)
    written = []
    for name in COMPOSE_RUNTIME_CONFIGS:
        target = Path(out_dir) / COMPOSE_FILES[name].name
        write_if_changed(target, render(name, context))
        written.append(target)
    user, password = os.environ.get("CONSOLE_USER", "").strip() or "operator", os.environ.get("CONSOLE_PASSWORD", "")
    htpasswd = Path(out_dir) / HTPASSWD
    if password:
        write_htpasswd(htpasswd, user, password)
        written.append(htpasswd)
    else:  # no password, no console: NGINX refuses every request rather than serving it unprotected
        htpasswd.unlink(missing_ok=True)
    return written


def htpasswd_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One NGINX `auth_basic_user_file` line in the salted SHA-1 scheme ``{SSHA}`` NGINX reads natively.

    Written by hand because it is four lines of hashlib: the usual tools (htpasswd from apache2-utils,
    passlib) are not in our images, and Python's `crypt` module is deprecated (gone in 3.13).
    """
    if not user or ":" in user or "\n" in user + password:
        raise ValueError("CONSOLE_USER must be non-empty without ':' and neither setting may hold a newline")
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt).digest()
    return f"{user}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


def write_htpasswd(path: Path, user: str, password: str) -> None:
    """The console's password file, readable by NGINX's workers only through the read-only config volume."""
    write_if_changed(path, htpasswd_line(user, password))


# ---------------------------------------------------------------------- checking


def nginx_check_command(conf: Path, prefix: Path) -> list[str]:
    return [binary("nginx"), "-t", "-q", "-p", str(prefix), "-c", str(conf)]


def check_commands(stack: Stack) -> dict[str, list[str]]:
    """The syntax check of each generated config, with the program's own tool."""
    return {
        "nginx": nginx_check_command(stack.config_path("nginx"), stack.run_dir / "nginx"),
        "prometheus": [binary("promtool"), "check", "config", str(stack.config_path("prometheus"))],
        "alertmanager": [binary("amtool"), "check-config", str(stack.config_path("alertmanager"))],
    }


def check_configs(stack: Stack) -> None:
    """Refuse to start anything on a config its program would reject (the message quotes the tool)."""
    for name, command in check_commands(stack).items():
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise StackError(f"{name} config {stack.config_path(name)} is invalid:\n{done.stdout}{done.stderr}")
