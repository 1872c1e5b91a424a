"""The long-lived parts of the native stack: where they live, how they are started, when they are ready.

`Stack` says where every part lives (ports, paths, pid files, URLs), read once from the settings;
its slots are the topology's (`app.contracts.topology`), so a fourth slot is a fourth program, port
and readiness check here without any edit. The rest drives the programs: MariaDB and Kafka through
their scripts (``ops/mariadb.sh``, ``ops/kafka.sh``), everything else through one ``supervisord``
(its own config, pid file and socket under the run directory), and the readiness checks `up` waits on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.contracts import pointer
from app.contracts.topology import Topology, upstream_path
from app.files import write_text_atomic
from app.logs import kv
from app.settings import ROOT, Monitoring, MySQL, Notify, Paths, Serving
from auto_deployment.console.settings import DEFAULT_PORT as CONSOLE_DEFAULT_PORT

log = logging.getLogger(__name__)

MARIADB_SCRIPT = ROOT / "ops" / "mariadb.sh"
KAFKA_SCRIPT = ROOT / "ops" / "kafka.sh"
DAEMONS = ("nginx", "mtail", "prometheus", "alertmanager")  # the programs beside the inference slots
DEMO_PROGRAMS = ("simulator", "scheduler", "online_eval", "console")
# Demo windows (environment overrides): short enough to watch the whole loop in a few minutes.
# DEMO_MAX_ERROR_RATIO: a short demo window gives the canary tens of requests, too few to claim a 5xx ratio under
# 1% (its 95% upper bound needs 299 clean requests); the demo judges against 15% (19 clean requests) and says so.
DEMO_DEFAULTS = {"DEMO_EVERY": "10m", "DEMO_COLLECT": "2m", "DEMO_OBSERVE": "60s", "DEMO_RATE": "5",
                 "DEMO_DURATION": "86400", "DEMO_MAX_ERROR_RATIO": "0.15",
                 # Likewise a few sessions a second cannot fill 5 % steps or 300-answer p99s in a short window: the
                 # demo releases through shadow then the card's 20 %, and compares p99s on tens of answers.
                 "DEMO_RELEASE_STEPS": "shadow,20", "DEMO_P99_MIN_REQUESTS": "20",
                 # DEMO_WORLD_DIR: a world written by `python -m simulator world --out DIR` (e.g. the real 1M users);
                 # the demo's simulator plays its users (`simulator traffic --world-dir DIR`). Empty: the small default.
                 "DEMO_WORLD_DIR": ""}


class StackError(RuntimeError):
    """A step of `up`/`down` failed; the message says which and where its log is."""


@contextlib.contextmanager
def environment(environ: Mapping[str, str]) -> Iterator[None]:
    """Temporarily make `environ` the process environment (the settings read os.environ)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def binary(*names: str) -> str:
    """Path of the first installed program of `names` (Debian puts some in sbin, outside a user's PATH)."""
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).is_file()), None
        )
        if found:
            return found
    raise StackError(f"{names[0]} is not installed (run `make sysdeps` / ops/system-deps.sh)")


# ---------------------------------------------------------------------- where everything lives



@dataclass(frozen=True)
class Stack:
    """Where every part of the native stack lives: slots, ports, paths, pid files, URLs (from the settings)."""

    run_dir: Path
    data_dir: Path
    models_dir: Path
    version_file: Path
    topology: Topology
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
        with environment(environ):
            paths, serving, monitoring = Paths.from_env(), Serving.from_env(), Monitoring.from_env()
            mysql, notify = MySQL.from_env(), Notify.from_env()
        run_dir = paths.run_dir.absolute()
        stack = cls(
            run_dir=run_dir,
            data_dir=paths.data_dir.absolute(),
            models_dir=paths.models_dir.absolute(),
            version_file=paths.version_file.absolute(),
            topology=serving.topology,
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

    # slots and programs ----------------------------------------------------------------
    @property
    def slots(self) -> tuple[str, ...]:
        """Slot names in topology order (each is also its supervisor program's name)."""
        return self.topology.names

    @property
    def slot_ports(self) -> dict[str, int]:
        return {slot.name: slot.port for slot in self.topology.slots}

    @property
    def programs(self) -> tuple[str, ...]:
        """Every program supervisord runs (the demo adds `DEMO_PROGRAMS`)."""
        return (*self.slots, *DAEMONS, *(DEMO_PROGRAMS if self.demo else ()))

    @property
    def demo_windows(self) -> dict[str, str]:
        """DEMO_EVERY, DEMO_COLLECT, ...: the demo loop's shortened windows (environment overrides)."""
        return {name: self.env.get(name, default) for name, default in DEMO_DEFAULTS.items()}

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

    @property
    def nginx_upstream(self) -> Path:
        return upstream_path(self.run_dir)

    @property
    def nginx_pidfile(self) -> Path:
        return self.run_dir / "nginx" / "nginx.pid"

    def config_path(self, name: str) -> Path:
        return {
            "nginx": self.run_dir / "nginx" / "nginx.conf",
            "prometheus": self.run_dir / "prometheus" / "prometheus.yml",
            "alertmanager": self.run_dir / "alertmanager" / "alertmanager.yml",
            "supervisord": self.supervisor_conf,
        }[name]

    def pointer(self, slot: str) -> Path:
        """The file naming the version `slot` serves (`app.contracts.pointer`)."""
        return pointer.slot_pointer(self.run_dir, slot)

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
    def mtail_port(self) -> int:
        """mtail's loopback port (NGINX's access log as metrics): MTAIL_PORT, else a port found free when this run
        directory first needed one and kept in ``<run>/mtail/port``, so stacks side by side never share one."""
        if self.env.get("MTAIL_PORT"):
            return int(self.env["MTAIL_PORT"])
        kept = self.run_dir / "mtail" / "port"
        with contextlib.suppress(OSError, ValueError):
            return int(kept.read_text())
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(kept, f"{port}\n")
        return port

    @property
    def mtail_url(self) -> str:
        return f"http://127.0.0.1:{self.mtail_port}"

    @property
    def online_eval_port(self) -> int:
        return int(self.env.get("ONLINE_EVAL_PORT", "9105"))

    @property
    def console_port(self) -> int:
        """The operators' console (`python -m auto_deployment console`, demo only), on loopback."""
        return int(self.env.get("CONSOLE_PORT") or CONSOLE_DEFAULT_PORT)

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def slot_url(self, slot: str) -> str:
        return f"http://127.0.0.1:{self.topology.slot(slot).port}"


def demo_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Point data, models, version.txt and the versioning repository at a local clone of this checkout.

    The retraining loop commits every version it makes; in the demo it does so in `<run>/demo/repo`
    (created by `git clone --local`, so it holds this repository's `data.dvc` and `version.txt`), not
    on the branch you work on. Settings you exported yourself win.
    """
    environ = dict(environ)
    with environment(environ):
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


def ports(stack: Stack) -> dict[str, int]:
    """Every port the native stack listens on, by program (MariaDB's is ops/mariadb.sh's business)."""
    return {
        **stack.slot_ports,
        "nginx": stack.nginx_port,
        "nginx stub_status": stack.nginx_status_port,
        "mtail": stack.mtail_port,
        "prometheus": stack.prometheus_port,
        "alertmanager": stack.alertmanager_port,
        **({"console": stack.console_port} if stack.demo else {}),
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


# ---------------------------------------------------------------------- MariaDB and Kafka


def run(command: list[str], stack: Stack, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one step in the stack's environment; `StackError` with its output when it fails."""
    log.info(what, extra=kv(command=" ".join(command)))
    done = subprocess.run(command, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done


def mariadb(stack: Stack, action: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MARIADB_SCRIPT), action], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=timeout)


def start_mariadb(stack: Stack) -> None:
    """Private MariaDB under the run directory (started unless its status says it runs), then schema and accounts."""
    if mariadb(stack, "status", timeout=30).returncode != 0:  # `start` on a running server waits on its lock
        run(["bash", str(MARIADB_SCRIPT), "start"], stack, "starting MariaDB", timeout=120)
    run([sys.executable, "-m", "auto_deployment.schema", "apply"], stack, "applying the provenance schema")


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


# ---------------------------------------------------------------------- supervisord


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie has exited already)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
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
    if not pid_alive(pid):
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


def stop_supervisord(stack: Stack, timeout: float = 60.0) -> int | None:
    """SIGTERM supervisord (it stops every program, process groups included) and wait; its pid, or None."""
    pid = supervisord_pid(stack)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            raise StackError(f"supervisord (pid {pid}) still running after {timeout:.0f} s; see its log")
    for stale in (stack.supervisor_pidfile, stack.supervisor_sock):
        stale.unlink(missing_ok=True)
    return pid


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
    if (changed.get("nginx") or changed.get("upstream")) and info.get("nginx", {}).get("statename") == "RUNNING":
        rpc(stack).supervisor.signalProcess("nginx", "HUP")
        actions.append("reloaded nginx")
    for name, url in (("prometheus", stack.prometheus_url), ("alertmanager", stack.alertmanager_url)):
        if changed.get(name) and info.get(name, {}).get("statename") == "RUNNING":
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=5)
                actions.append(f"reloaded {name}")
    return actions


# ---------------------------------------------------------------------- readiness


def http_ok(url: str, timeout: float = 2.0) -> bool:
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


def program_running(stack: Stack, name: str) -> bool:
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        return process_info(stack).get(name, {}).get("statename") == "RUNNING"
    return False


def readiness_checks(stack: Stack) -> list[Check]:
    """One check per part, in the order `up` reports them: one per slot of the topology, then the daemons."""
    slots = stack.slots
    checks = [Check(slot, lambda slot=slot: http_ok(f"{stack.slot_url(slot)}/ready")) for slot in slots]
    checks += [
        Check("nginx", lambda: http_ok(f"{stack.nginx_url}/health"), after=slots),
        Check("mtail", lambda: http_ok(f"{stack.mtail_url}/metrics")),
        Check("prometheus", lambda: http_ok(f"{stack.prometheus_url}/-/ready")),
        Check("alertmanager", lambda: http_ok(f"{stack.alertmanager_url}/-/ready")),
        Check("prometheus sees all slots", lambda: prometheus_slots_up(stack) >= set(slots),
              after=(*slots, "prometheus")),
    ]
    if stack.demo:
        checks += [Check(name, lambda name=name: program_running(stack, name), after=("nginx",))
                   for name in DEMO_PROGRAMS]
    return checks


def tail(path: Path, lines: int = 15) -> str:
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
            program = fatal[0] if fatal else next((n for n in waiting if n in stack.programs), "prometheus")
            reason = f"{', '.join(fatal)} keeps exiting" if fatal else f"not ready after {timeout:.0f} s: {waiting}"
            logfile = stack.log_dir / f"{program}.log"
            raise StackError(
                f"{reason}\n--- {logfile} (last lines)\n{tail(logfile)}"
                "the stack is left running for inspection; `make down` stops it"
            )
        time.sleep(0.2)
    return ready_after
