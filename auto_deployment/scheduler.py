"""`python -m auto_deployment schedule`: run the retraining pipeline periodically (the `schedule` library).

    python -m auto_deployment schedule                       # every SCHEDULE_EVERY (2d) at SCHEDULE_AT (03:00)
    python -m auto_deployment schedule --every 6h --source file:events.log --no-release
    python -m auto_deployment schedule --now                 # one run now, then exit
    python -m auto_deployment schedule --now --keep-going    # one run now, then on schedule

Each run is a subprocess (`python -m auto_deployment run ...` with the same run options): a crash,
a leak or a stuck import in one run cannot take the scheduler down, and a failing run (any exit
code) never stops the schedule. The run itself takes the file lock `<run>/pipeline.lock`, so two
schedulers, or a scheduler and a manual run, never overlap: the second run is skipped at once
(exit 75) and the scheduler logs it. After every run the next run time is logged.

SIGTERM (or SIGINT): when idle the scheduler exits at once; during a run it forwards the signal
to the run, which finishes its current step (collecting stops early) and abandons the rest (never
half a version), then the scheduler exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import schedule

from app.clock import parse_duration
from app.logs import kv
from app.settings import Paths, Pipeline
from auto_deployment import pipeline

log = logging.getLogger(__name__)

# the `schedule` library's units, largest first, and their length in seconds
_UNITS = (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))
_AT = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?", re.ASCII)
OUTCOMES = {
    pipeline.EXIT_OK: "ok (new version, or no new data)",
    pipeline.EXIT_FAILED: "failed",
    pipeline.EXIT_USAGE: "bad options",
    pipeline.EXIT_CHECKS: "refused by the data checks",
    pipeline.EXIT_GATE: "refused by the RMSE gate",
    pipeline.EXIT_RELEASE: "versioned, release not promoted",
    pipeline.EXIT_LOCKED: "skipped: another run holds the lock",
    pipeline.EXIT_INTERRUPTED: "interrupted",
}


def parse_every(text: str) -> tuple[int, str]:
    """The period in the one duration grammar (`app.clock`), as (count, unit) of the `schedule` library.

    `"2d"` → (2, "days"), `"1.5h"` → (90, "minutes"), `"2w"` → (14, "days"), `"45"` → (45, "seconds"):
    the largest unit that divides the period, so days keep their time of day (`--at`).
    """
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"--every {text!r}: {exc}") from None
    whole = round(seconds)
    if whole < 1 or not math.isclose(seconds, whole, abs_tol=1e-9):
        raise ValueError(f"--every {text!r}: a period is a whole number of seconds, at least 1 (2d, 6h, 30m, 10s)")
    unit, size = next((unit, size) for unit, size in _UNITS if whole % size == 0)
    return whole // size, unit


def build_schedule(every: str, at: str, job: object) -> schedule.Scheduler:
    """A scheduler with the one job; `at` (HH:MM) applies to periods in days only."""
    count, unit = parse_every(every)
    scheduler = schedule.Scheduler()
    period = getattr(scheduler.every(count), unit)
    if unit == "days" and at:
        if not _AT.fullmatch(at):
            raise ValueError(f"--at {at!r}: expected HH:MM")
        period = period.at(at)
    period.do(job)
    return scheduler


class Runner:
    """Starts one pipeline run at a time as a subprocess and relays a stop request to it."""

    def __init__(self, run_args: list[str], verbose: bool = False) -> None:
        self.command = [sys.executable, "-m", "auto_deployment", *(["-v"] if verbose else []), "run", *run_args]
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.last_exit: int | None = None

    def run_once(self) -> int | None:
        if self.stopping.is_set():
            return None
        self.runs += 1
        started = time.monotonic()
        log.info("scheduled run starting", extra=kv(run=self.runs, command=" ".join(self.command[2:])))
        try:
            self.child = subprocess.Popen(self.command, env={**os.environ})
            code = self.child.wait()
        except OSError as exc:  # could not even start: log, keep the schedule
            log.error("scheduled run could not start", extra=kv(run=self.runs, error=exc))
            code = pipeline.EXIT_FAILED
        finally:
            self.child = None
        self.last_exit = code
        what = OUTCOMES.get(code, f"exit {code}")
        level = logging.INFO if code in (pipeline.EXIT_OK, pipeline.EXIT_LOCKED) else logging.WARNING
        log.log(level, "scheduled run finished", extra=kv(run=self.runs, exit_code=code, outcome=what,
                                                          seconds=round(time.monotonic() - started, 1)))
        return code

    def stop(self, signum: int) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            log.warning("stop requested: the current run finishes its step and stops",
                        extra=kv(signal=signal.Signals(signum).name, pid=child.pid))
            child.send_signal(signal.SIGTERM)
        else:
            log.warning("stop requested", extra=kv(signal=signal.Signals(signum).name))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings = Pipeline.from_env()
    parser.add_argument("--every", default=settings.every,
                        help=f"period: 2d, 6h, 30m, 10s, a bare number is seconds (default {settings.every}, "
                             "SCHEDULE_EVERY)")
    parser.add_argument("--at", default=settings.at,
                        help=f"time of day HH:MM for periods in days (default SCHEDULE_AT={settings.at})")
    parser.add_argument("--now", action="store_true", help="run once immediately (then exit unless --keep-going)")
    parser.add_argument("--keep-going", action="store_true", help="with --now: keep scheduling after that run")
    pipeline.add_run_arguments(parser)


def main(args: argparse.Namespace) -> int:
    runner = Runner(pipeline.run_argv(args), verbose=log.isEnabledFor(logging.DEBUG))
    try:
        scheduler = build_schedule(args.every, args.at, runner.run_once)
    except ValueError as exc:
        print(f"schedule: {exc}", file=sys.stderr)
        return pipeline.EXIT_USAGE

    previous = {sig: signal.signal(sig, lambda signum, _frame: runner.stop(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("scheduler started", extra=kv(every=args.every, at=args.at if parse_every(args.every)[1] == "days"
                                               else "-", pid=os.getpid(), lock=_lock_path()))
        if args.now:
            code = runner.run_once()
            if not args.keep_going:
                return int(code or 0) if not runner.stopping.is_set() else 0
        _log_next(scheduler)
        while not runner.stopping.is_set():
            before = runner.runs
            scheduler.run_pending()
            if runner.runs != before:
                _log_next(scheduler)
            idle = scheduler.idle_seconds
            runner.stopping.wait(timeout=min(1.0, max(0.05, idle if idle is not None else 1.0)))
        log.info("scheduler stopped", extra=kv(runs=runner.runs))
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_next(scheduler: schedule.Scheduler) -> None:
    log.info("next run", extra=kv(at=scheduler.next_run.isoformat(sep=" ", timespec="seconds"),
                                  in_s=round(scheduler.idle_seconds or 0.0, 1)))


def _lock_path() -> Path:
    return Paths.from_env().run_dir / pipeline.LOCK_NAME
