"""The whole platform natively on one machine: `python -m ops.stack up|down|status|render`.

`make up` runs ``up``: render every config into the run directory (``MOVIEREC_RUN_DIR``) from the slot
topology (`ops.render`), check them with the tools of each program, start MariaDB and apply the schema
(`ops.services`), write the default data, train model 1 and record its tracking row when there is none,
point every slot at the stable version (`ops.bootstrap`), and let one ``supervisord`` run the
long-lived processes: one inference server per slot, NGINX, Prometheus, Alertmanager. It then waits
until every part answers and prints where everything is. Running it again is safe: a live supervisord
(found by its pid file) is kept, only what is not running is started, and pointers and NGINX weights a
release may have moved are left as they are.

`make up` adds ``--demo``: the loop runs end to end on its own. A Kafka broker (``ops/kafka.sh``),
the simulator publishing its event log to it (``python -m simulator traffic --out kafka``) and the
scheduler consuming it (``python -m auto_deployment schedule``) join the stack, with the windows
shortened and announced (retrain now and every ``DEMO_EVERY``, collect ``DEMO_COLLECT``, observe the
canary ``DEMO_OBSERVE``). Versions are committed in a local clone of this repository
(``<run>/demo/repo``, its data/, models/, version.txt), never in your checkout.

`make down` runs ``down``: it stops exactly what ``up`` started, by pid file: supervisord (which
stops its children first), the Kafka broker when the demo started one and MariaDB. Nothing else is touched.

Grafana is not part of the native stack (no Debian package): it runs in compose only, reading
``monitoring/grafana/``. ``render --variant compose`` writes the compose renderings of the same
templates (service names instead of loopback ports), ``compose.yml`` included, to the tracked files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from app.logs import kv, setup_logging
from app.settings import MySQL, Notify
from ops import bootstrap
from ops.render import check_configs, write_compose_configs, write_configs
from ops.services import (
    MARIADB_SCRIPT,
    Stack,
    StackError,
    busy_ports,
    converge_running,
    environment,
    kafka,
    mariadb,
    process_info,
    readiness_checks,
    start_kafka,
    start_mariadb,
    start_supervisord,
    stop_supervisord,
    supervisord_pid,
    wait_ready,
)

log = logging.getLogger(__name__)



def up(stack: Stack, timeout: float = 180.0) -> int:
    """Bring the whole stack up (idempotent); prints where everything is."""
    started = time.monotonic()
    live = supervisord_pid(stack) is not None
    changed = write_configs(stack, reset_upstream=not live)
    check_configs(stack)
    start_mariadb(stack)
    if stack.demo:
        start_kafka(stack)
    stable = bootstrap.ensure_model(stack.data_dir, stack.models_dir, stack.version_file, stack.env)
    with environment(stack.env):
        mysql = MySQL.from_env()
    bootstrap.record_tracking(mysql, stack.models_dir, stable)
    pid = supervisord_pid(stack)
    if pid is None:
        if busy := busy_ports(stack):
            taken = ", ".join(f"{name} {port}" for name, port in busy.items())
            raise StackError(f"ports already in use: {taken}; free them or choose others (app/settings.py)")
        bootstrap.point_slots(stack.run_dir, stack.topology, stable, overwrite=True)
        pid = start_supervisord(stack)
        actions = [f"started supervisord (pid {pid})"]
    else:
        pointed = bootstrap.point_slots(stack.run_dir, stack.topology, stable, overwrite=False)
        actions = [f"supervisord already running (pid {pid})", *converge_running(stack, changed)]
        actions += [f"pointed {slot} at version {stable}" for slot in pointed]
    ready = wait_ready(stack, timeout)
    elapsed = time.monotonic() - started
    log.info("stack up", extra=kv(seconds=round(elapsed, 1), stable=stable, run_dir=stack.run_dir))
    print(summary(stack, stable, elapsed, actions, ready))
    return 0


def summary(stack: Stack, stable: int, elapsed: float, actions: list[str], ready: Mapping[str, float]) -> str:
    slots = "\n".join(f"  {slot:<9} {stack.slot_url(slot)}  (/ready /version /metrics)" for slot in stack.slots)
    canary = float(stack.topology.canary_share()) * 100
    return f"""
movierec is up ({elapsed:.1f} s; {'; '.join(actions)}), serving version {stable} on every slot
  recommend  {stack.nginx_url}/recommend/<userid>   (NGINX at rest: {100 - canary:.0f}% stable, {canary:.0f}% canary)
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
    w = stack.demo_windows
    return f"""
demo loop (windows shortened from 2 days / 15 min / 12 h):
  simulator  {w['DEMO_RATE']} sessions/s through NGINX, event log to Kafka topic movielog
             (log: {stack.log_dir}/simulator.log)
  scheduler  retrains now and every {w['DEMO_EVERY']}: collect {w['DEMO_COLLECT']} from Kafka, gate RMSE < 1,
             version with DVC + git in {stack.env.get('MOVIEREC_REPO_DIR')}, canary observed {w['DEMO_OBSERVE']}
             through steps {w['DEMO_RELEASE_STEPS']} then promote or abort;
             5xx limit {w['DEMO_MAX_ERROR_RATIO']} (a short window cannot show < 1%)
             (log: {stack.log_dir}/scheduler.log)
  console    {stack.console_url}  (versions, releases, online quality, audit, reports; read-only, loopback)
  watch it   curl -sI {stack.nginx_url}/recommend/1 | grep X-Model   |   python -m auto_deployment release --status
"""


def down(stack: Stack, timeout: float = 60.0) -> int:
    """Stop what `up` started, by pid file: supervisord (children first), Kafka if the demo ran it, MariaDB."""
    pid = stop_supervisord(stack, timeout)
    print(f"supervisord of {stack.run_dir} is not running" if pid is None
          else f"stopped supervisord (pid {pid}) and its programs")
    if (stack.run_dir / "kafka" / "kafka.pid").is_file():
        done = kafka(stack, "stop")
        print((done.stdout + done.stderr).strip() or "Kafka stopped")
    if MARIADB_SCRIPT.is_file():
        done = mariadb(stack, "stop")
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
        done = mariadb(stack, "status", timeout=30)
        print(f"  mariadb       {(done.stdout + done.stderr).strip()}")
    all_ready = True
    for check in readiness_checks(stack):
        ok = check.ok()
        all_ready &= ok
        print(f"  ready: {check.name:<26} {'yes' if ok else 'NO'}")
    return 0 if all_ready else 1


def render(stack: Stack, variant: str, out: Path | None) -> int:
    """Write the configs without starting anything; prints where they went."""
    if variant == "compose":
        notify = Notify.from_env() if out else None  # the tracked files are rendered without secrets
        for path in write_compose_configs(out, notify, stack.alert_webhook_url if out else ""):
            print(path)
    else:
        write_configs(stack, reset_upstream=supervisord_pid(stack) is None)
        check_configs(stack)
        print(stack.run_dir)
    return 0


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
                          help="compose: write the runtime configs here, with the notify settings of the "
                               "environment (default: every tracked rendering, compose.yml included, without secrets)")
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
        return render(stack, args.variant, args.out)
    except StackError as exc:
        print(f"ops.stack {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
