"""`python -m auto_deployment release`: release a model version by hand, or show the last release.

    python -m auto_deployment release --candidate 7 --observe 12h --steps shadow,5,20,50 --interval 1m
    python -m auto_deployment release --status            # step, weight, each check, time left (--json: raw)
    python -m auto_deployment release --pause --who alice --why "looking at the 5xx"   # --resume, --abort,
    python -m auto_deployment release --promote-now --who bob --why "hotfix, checks waived"  # (control.py)
    python -m auto_deployment release --approve --who carol --why "dashboards fine"  # RELEASE_REQUIRE_APPROVAL=1

The settings are read here, once, and passed down (`wiring.ReleaseSettings`). Exit codes: 0 promoted
(or nothing to do), 1 aborted or failed, 2 refused (bad request), 3 another release is running.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from app.clock import parse_duration
from app.logs import kv
from auto_deployment.release.control import (
    ACTIONS,
    APPROVE,
    ControlChannel,
    ControlRequest,
    default_who,
    status_text,
)
from auto_deployment.release.controller import EXIT_LOCKED, EXIT_REFUSED, ReleaseRefused
from auto_deployment.release.deploy import parse_slot_urls
from auto_deployment.release.state import AWAIT_APPROVAL, UNDECIDED, ReleaseLocked, StateStore, release_lock
from auto_deployment.release.steps import parse_steps
from auto_deployment.release.wiring import ReleaseSettings, build_controller

log = logging.getLogger(__name__)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _steps(text: str) -> tuple:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", type=int, help="model version to release (models/<N>/)")
    parser.add_argument("--observe", type=_duration, metavar="DURATION",
                        help="observation window: 30s, 15m, 12h, 2d (default RELEASE_OBSERVE_S)")
    parser.add_argument("--steps", type=_steps, metavar="LIST",
                        help="traffic steps: shadow and percentages, e.g. shadow,5,20,50 (RELEASE_STEPS)")
    parser.add_argument("--interval", type=_duration, metavar="DURATION",
                        help="the checks run every DURATION (RELEASE_INTERVAL_S, default 60 s)")
    parser.add_argument("--max-latency-ms", type=float,
                        help="check: canary average latency below (RELEASE_MAX_LATENCY_MS)")
    parser.add_argument("--max-error-ratio", type=float,
                        help="check: canary 5xx ratio at most, by its upper confidence bound (RELEASE_MAX_ERROR_RATIO)")
    parser.add_argument("--min-requests", type=int,
                        help="fewest answers before the latency checks may judge (RELEASE_MIN_REQUESTS)")
    parser.add_argument("--prometheus-url", help="Prometheus base URL (default PROMETHEUS_URL)")
    parser.add_argument("--runtime", choices=("native", "compose"), help="how slots are deployed (RELEASE_RUNTIME)")
    parser.add_argument("--slot-url", action="append", default=[], metavar="SLOT=URL",
                        help="a slot's own base URL (repeatable; default RELEASE_SLOT_URLS / loopback ports)")
    parser.add_argument("--deploy-timeout", type=_duration, metavar="DURATION",
                        help="longest wait for a slot to serve a version (RELEASE_DEPLOY_TIMEOUT_S)")
    parser.add_argument("--compose-hup", action="store_true",
                        help="compose runtime: also `docker-compose kill -s HUP` the slot's service")
    parser.add_argument("--status", action="store_true",
                        help="show the last release: step, weight, each check's value and threshold, time left")
    parser.add_argument("--json", action="store_true", help="with --status: the whole state file as JSON")
    control = parser.add_mutually_exclusive_group()
    for action in ACTIONS:
        what = ("approve the promotion of a release that awaits it (RELEASE_REQUIRE_APPROVAL=1)"
                if action == APPROVE else f"{action} the running release")
        control.add_argument(f"--{action}", dest="control", action="store_const", const=action,
                             help=f"{what} (recorded with --who/--why)")
    parser.add_argument("--who", help="who asks for the control (default: the login name)")
    parser.add_argument("--why", default="", help="why: kept in the state file and the releases row")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.warning("release: signal received, stopping", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _refused(exc: Exception, code: int) -> int:
    log.error("release: refused", extra=kv(reason=exc))
    print(f"release refused: {exc}", file=sys.stderr)
    return code


def _send_control(run_dir, action: str, who: str, why: str) -> int:
    """Hand a control to the running release (it applies it at its next poll); refused when none runs."""
    state = StateStore(run_dir).load()
    if state is None or state.state not in UNDECIDED:
        print(f"release --{action}: no release is being observed"
              + (f" (the last one is {state.state})" if state else ""), file=sys.stderr)
        return EXIT_REFUSED
    if action == APPROVE and state.state != AWAIT_APPROVAL:
        print(f"release --approve: the release of version {state.candidate} does not await approval "
              f"(it is in {state.state})", file=sys.stderr)
        return EXIT_REFUSED
    path = ControlChannel(run_dir).send(ControlRequest(action, who, why, time.time()))
    log.info("release: control sent", extra=kv(action=action, who=who, why=why, candidate=state.candidate))
    print(f"{action} of the release of version {state.candidate} requested by {who} ({path.name})")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        settings = ReleaseSettings.from_env().with_release(
            observe_s=args.observe, max_latency_ms=args.max_latency_ms,
            max_error_ratio=args.max_error_ratio, min_requests=args.min_requests,
        ).with_progression(steps=args.steps, interval_s=args.interval)
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    run_dir = settings.paths.run_dir
    if args.status:
        state = StateStore(run_dir).load()
        print(json.dumps(state.to_dict() if state else None, indent=2) if args.json else status_text(state))
        return 0
    if getattr(args, "control", None):
        return _send_control(run_dir, args.control, args.who or default_who(), args.why)
    if args.candidate is None:
        print("release: --candidate N is required", file=sys.stderr)
        return EXIT_REFUSED
    try:
        urls: dict[str, str] = {}
        for item in args.slot_url:
            urls.update(parse_slot_urls(item, settings.serving.topology))
        stop = threading.Event()
        controller = build_controller(
            settings, prometheus_url=args.prometheus_url, runtime=args.runtime, slot_urls=urls,
            deploy_timeout_s=args.deploy_timeout, compose_hup=args.compose_hup, stop=stop,
        )
    except ValueError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    _stop_on_signals(stop)
    try:
        with release_lock(run_dir, args.candidate):
            result = controller.run(args.candidate)
    except ReleaseLocked as exc:
        return _refused(exc, EXIT_LOCKED)
    except ReleaseRefused as exc:
        return _refused(exc, EXIT_REFUSED)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return result.exit_code
