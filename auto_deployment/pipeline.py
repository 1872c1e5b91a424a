"""`python -m auto_deployment run`: the retraining pipeline once (design section 7).

    collect → prepare → checks → evaluate → gate → train → version → release → notify

* **collect**: the stream (`--source kafka|file:PATH|stdin|none`) for a window (`--collect 15m`)
  into the event store (`<data>/events`, see `ingest`).
* **prepare**: the whole event store merged into a *staging copy* of `data/`'s tables under
  `<run>/pipeline/work/<run id>/` (duplicates fold away). `data/` itself changes only when a version
  is made, so it always holds the data of a version. If the staged data has the checksum of the
  latest version's data, the run stops here: "no new data", exit 0, nobody is notified.
* **checks**: `auto_deployment.data.checks`; a failed check stops the run with every failed check named.
  The same step measures drift of the collected window against the latest version's data
  (`auto_deployment.monitor.drift`), writes the gauges to `<run>/metrics/drift.prom`, and refuses the
  run on drift when `PIPELINE_REFUSE_ON_DRIFT` is set.
* **evaluate**: RMSE and MAE on the 80/20 split (seed 42) plus ranking metrics (`evaluate`).
* **gate**: RMSE below `--rmse-gate` (`PIPELINE_RMSE_GATE`, 1.0) or the run is refused.
  The full model is fitted only after the gate (**train**), so a refused run costs one fit less.
* **version**: `auto_deployment.model.registry.create_version` (bundle, DVC add + push, git commit,
  tracking row, git push): all or nothing.
* **release**: the canary release of the new version (`--no-release` skips, `--observe` sets the
  window); a promotion writes and commits `version.txt` itself. The release is asked for no notice:
* **notify**: the run's one email + Slack notice (`auto_deployment.notices.run_notice`) on a new version,
  a refusal or a failure (which step and why) carries the release's outcome and figures.

Every step is logged with its timing (`step started`/`step finished`), and the run report, a JSON
file `<run>/pipeline/<run id>.json`, is rewritten after every step so progress can be followed.
Reports for people: `<run>/pipeline/<run id>/data.{html,json}` (data quality and drift, after checks)
and `evaluation.{html,json}` (after evaluate); a run that makes a version copies them into
`models/<version>/reports/`, so DVC versions them with the bundle. Their paths are in the run
report's `reports`. A file lock (`<run>/pipeline.lock`) keeps one run at a time across processes; a second run exits
with `EXIT_LOCKED` at once. On SIGTERM the current step finishes (collecting stops early) and
the run is abandoned before the next one; the versioning step is never cut in half. A run killed
outright (SIGKILL) in it leaves a journal: the next run undoes the half version first
(`registry.repair_interrupted`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.clock import now_iso, parse_duration, stamp_id
from app.contracts.tables import MODEL_TABLES, load_tables
from app.files import LockHeld, exclusive_lock, write_json_atomic
from app.logs import kv
from app.settings import MySQL, Notify
from auto_deployment.data.checks import CheckLimits, run_checks
from auto_deployment.data.ingest import ingest, make_source
from auto_deployment.model.registry import (
    DATA_FILES,
    Layout,
    VersionError,
    create_version,
    latest_version,
    next_version,
    repair_interrupted,
)
from auto_deployment.monitor.drift import DriftLimits
from auto_deployment.notices import Notifier, RunSummary, run_notice
from auto_deployment.release.state import FAILED, PROMOTED, ReleaseResult
from auto_deployment.release.wiring import ReleaseSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECKS = 3
EXIT_GATE = 4
EXIT_RELEASE = 5  # versioned, but the release did not promote it
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock, nothing was done
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: abandoned between steps, nothing half-done

STEPS = ("collect", "prepare", "checks", "evaluate", "gate", "train", "version", "release", "notify")
LOCK_NAME = "pipeline.lock"


class PipelineStop(Exception):  # a stop, not always an error
    """Ends a run early with an outcome (refused, no new data, interrupted...) and the reason."""

    def __init__(self, outcome: str, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.exit_code = exit_code
        self.reason = reason


@dataclass
class Options:
    """Everything one run needs; `from_args` reads the settings once (the edge) and fills them in."""

    source: str = "kafka"
    collect_s: float = 900.0
    rmse_gate: float = 1.0
    release: bool = True
    observe_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    events_dir: Path | None = None
    limits: CheckLimits = field(default_factory=CheckLimits)
    drift: DriftLimits = field(default_factory=DriftLimits)
    keep_work: bool = False
    layout: Layout | None = None
    mysql: MySQL | None = None
    notify: Notify | None = None
    release_settings: ReleaseSettings | None = None  # needed only when `release` is on

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        every = ReleaseSettings.from_env()  # the run's settings: read once here, passed down
        settings = every.pipeline
        limits = CheckLimits.from_settings(settings)
        if args.min_new_ratings is not None:
            limits = CheckLimits(min_new_ratings=args.min_new_ratings, max_unknown_share=limits.max_unknown_share)
        from auto_deployment.model.evaluate import parse_params

        return cls(
            source=args.source,
            collect_s=parse_duration(args.collect) if args.collect else settings.collect_s,
            rmse_gate=args.rmse_gate if args.rmse_gate is not None else settings.rmse_gate,
            release=not args.no_release,
            observe_s=parse_duration(args.observe) if args.observe else None,
            params=parse_params(args.param),
            events_dir=args.events_dir,
            limits=limits,
            drift=DriftLimits.from_env(),
            keep_work=args.keep_work,
            layout=Layout.from_settings(every.paths, settings),
            mysql=every.mysql,
            notify=every.notify,
            release_settings=every,
        )


@dataclass
class StepRecord:
    name: str
    status: str  # ok | refused | failed | skipped | interrupted
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunReport:
    """What a run did, step by step; written as JSON under `<run>/pipeline/`."""

    run_id: str
    started: str
    state: str = "running"  # running | finished
    outcome: str = ""  # versioned | released | release_aborted | no_new_data | checks_failed | refused | failed
    exit_code: int | None = None
    reason: str = ""
    failed_step: str = ""
    version: int | None = None
    rmse: float | None = None
    rmse_gate: float | None = None
    data_checksum: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    finished: str = ""
    seconds: float = 0.0
    path: str = ""
    reports: dict[str, str] = field(default_factory=dict)  # data/evaluation pages and their JSON

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- stop, report ----------------------------------------------------------------------------------


class StoppableSource:
    """A line source that stops handing out batches once `stop` is set (SIGTERM while collecting)."""

    def __init__(self, inner: Any, stop: threading.Event) -> None:
        self._inner = inner
        self._stop = stop
        self.name = inner.name

    def batches(self) -> Iterator[list[str]]:
        done = threading.Event()
        if hasattr(self._inner, "stop"):  # a Kafka consumer may wait a whole window for messages: wake it
            def relay() -> None:
                while not done.wait(0.2):
                    if self._stop.is_set():
                        self._inner.stop()
                        return

            threading.Thread(target=relay, name="collect-stop", daemon=True).start()
        try:
            for batch in self._inner.batches():
                yield batch
                if self._stop.is_set():
                    break
        finally:
            done.set()
        if self._stop.is_set():
            log.warning("stop requested: collection ended early", extra=kv(source=self.name))

    def commit(self) -> None:
        self._inner.commit()

    def close(self) -> None:
        self._inner.close()


def _write_report(report: RunReport) -> None:
    write_json_atomic(report.path, report.to_dict())


# --- the run ---------------------------------------------------------------------------------------


class _Run:
    """One pipeline run: the steps as methods sharing the staged data, metrics and version."""

    def __init__(self, options: Options, stop: threading.Event, source: Any | None) -> None:
        self.o = options
        self.stop = stop
        self.source = source
        assert options.layout is not None and options.mysql is not None and options.notify is not None
        self.layout = options.layout
        self.mysql = options.mysql
        self.events_dir = Path(options.events_dir or self.layout.data_dir / "events")
        run_id = stamp_id()
        self.work = self.layout.run_dir / "pipeline" / "work" / run_id
        self.staged = self.work / "data"
        self.report = RunReport(run_id=run_id, started=now_iso(), rmse_gate=options.rmse_gate,
                                path=str(self.layout.run_dir / "pipeline" / f"{run_id}.json"))
        self.metrics: dict[str, Any] = {}
        self.prepared: Any = None
        self.prepared_at: datetime | None = None
        self.version: int | None = None
        self.bundle: Path | None = None
        self.release_result: ReleaseResult | None = None
        self.reports_dir = self.layout.run_dir / "pipeline" / run_id

    def step(self, name: str, action: Callable[[], dict[str, Any]]) -> None:
        if self.stop.is_set():
            raise PipelineStop("interrupted", EXIT_INTERRUPTED, f"stop requested before step {name}")
        log.info("step started", extra=kv(run=self.report.run_id, step=name))
        started = time.perf_counter()
        record = StepRecord(name, "ok", 0.0)
        try:
            record.details = action() or {}
        except PipelineStop as stop:
            record.status = "refused" if stop.outcome in ("refused", "checks_failed") else "ok"
            if stop.outcome == "interrupted":
                record.status = "interrupted"
            record.details = {"reason": stop.reason}
            raise
        except Exception as exc:
            record.status = "failed"
            record.details = {"error": f"{type(exc).__name__}: {exc}"}
            log.error("step failed", extra=kv(run=self.report.run_id, step=name, error=exc))
            log.debug("traceback\n%s", traceback.format_exc())
            raise PipelineStop("failed", EXIT_FAILED, f"step {name} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            record.seconds = round(time.perf_counter() - started, 3)
            self.report.steps.append(record)
            log.info("step finished", extra=kv(run=self.report.run_id, step=name, status=record.status,
                                               seconds=record.seconds, **_short(record.details)))
            _write_report(self.report)

    # -- steps --------------------------------------------------------------------------------------

    def collect(self) -> dict[str, Any]:
        if self.source is None and self.o.source == "none":
            return {"source": "none", "lines": 0}
        source = self.source or make_source(self.o.source, duration_s=self.o.collect_s)
        result = ingest(StoppableSource(source, self.stop), self.events_dir)
        return {"source": result.source, "lines": result.lines, "events": result.events,
                "rejected": result.rejected, "batch": result.batch_id, "lines_per_s": round(result.lines_per_s)}

    def prepare(self) -> dict[str, Any]:
        from auto_deployment.data.prepare import prepare

        self.staged.mkdir(parents=True, exist_ok=True)
        for name in DATA_FILES:
            if (self.layout.data_dir / name).exists():
                shutil.copy2(self.layout.data_dir / name, self.staged / name)
        self.prepared = report = prepare(self.events_dir, self.staged)
        self.prepared_at = datetime.now(UTC)
        self.report.data_checksum = report.checksum
        details = {"ratings": report.ratings, "watches": report.watches, "new_ratings": report.new_ratings,
                   "changed_ratings": report.changed_ratings, "new_watches": report.new_watches,
                   "rejected": report.rejected, "checksum": report.checksum}
        latest = latest_version(self.layout, self.mysql)
        if latest is not None:
            details["latest_version"] = latest.number
            if latest.data_checksum == report.checksum:
                log.info("no new data", extra=kv(latest_version=latest.number, checksum=report.checksum[:12]))
                raise PipelineStop("no_new_data", EXIT_OK,
                                   f"no new data: the data is that of version {latest.number}")
        return details

    def checks(self) -> dict[str, Any]:
        new = int(self.prepared.new_ratings + self.prepared.changed_ratings)
        result = run_checks(self.staged, new, self.o.limits)
        drift = self._data_report(result)
        if not result.passed:
            raise PipelineStop("checks_failed", EXIT_CHECKS, "data checks failed: " + result.summary())
        if drift is not None and drift.drifted and self.o.drift.refuse:
            raise PipelineStop("checks_failed", EXIT_CHECKS, "data drift (PIPELINE_REFUSE_ON_DRIFT): "
                               + drift.summary())
        details = result.to_dict()
        if drift is not None:
            details["drift"] = {"drifted": drift.drifted, "summary": drift.summary(),
                                **{c.name: c.value for c in drift.checks}}
        return details

    def _data_report(self, checks: Any) -> Any:
        """Drift of the window against the latest version's data, gauges, and the data-quality page."""
        from auto_deployment.monitor import drift as drift_mod
        from auto_deployment.monitor import report as pages

        current = load_tables(self.staged)
        reference = (load_tables(self.layout.data_dir, ("ratings",)).ratings
                     if (self.layout.data_dir / "ratings.csv").exists() else None)
        if reference is not None and reference.empty:
            reference = None
        drift = None
        if reference is not None:
            drift = drift_mod.compute(reference, drift_mod.window_of(reference, current.ratings), self.o.drift)
            drift_mod.write_gauges(drift, self.layout.run_dir / "metrics" / drift_mod.TEXTFILE)
            log.info("drift measured", extra=kv(run=self.report.run_id, drifted=drift.drifted,
                                                **{c.name: c.value for c in drift.checks}))
        p = self.prepared
        summary = pages.data_summary(
            current, reference, events=p.events, rejected=p.rejected, ratings_from_events=p.ratings_from_events,
            checks=checks, limits=self.o.limits, drift=drift, data_dir=str(self.staged), run_id=self.report.run_id)
        self.report.reports.update(pages.write_pair(self.reports_dir, "data", summary, pages.data_page(summary)))
        return drift

    def evaluate(self) -> dict[str, Any]:
        from auto_deployment.model.evaluate import evaluate
        from auto_deployment.monitor import report as pages

        report = evaluate(load_tables(self.staged, MODEL_TABLES), self.o.params)
        summary = pages.evaluation_summary(report, run_id=self.report.run_id)
        self.report.reports.update(pages.write_pair(self.reports_dir, "evaluation", summary,
                                                    pages.evaluation_page(summary)))
        self.metrics = {"rmse": report["rmse"], "mae": report["mae"], "n_test": report["n_test"],
                        **{k: v for k, v in report["ranking"].items() if k != "users"},
                        "ndcg_lift": report.get("ndcg_lift")}
        self.report.rmse = report["rmse"]
        return dict(self.metrics)

    def gate(self) -> dict[str, Any]:
        rmse, threshold = self.metrics["rmse"], self.o.rmse_gate
        if not rmse < threshold:
            raise PipelineStop("refused", EXIT_GATE, f"RMSE {rmse:.4f} is not below the gate {threshold:g}")
        return {"rmse": rmse, "threshold": threshold}

    def train(self) -> dict[str, Any]:
        from auto_deployment.model.train import train_bundle

        self.version = next_version(self.layout, self.mysql)
        self.bundle = self.work / "bundle"
        model = train_bundle(self.staged, self.bundle, self.version, self.o.params, self.metrics)
        if self.reports_dir.is_dir():  # versioned with the bundle (not in its checksums: not served)
            shutil.copytree(self.reports_dir, self.bundle / "reports")
        return {"version": self.version, "train_size": model.metadata.get("train_size"),
                "fit_seconds": model.metadata.get("fit_seconds")}

    def make_version(self) -> dict[str, Any]:
        assert self.version is not None and self.bundle is not None
        result = create_version(self.layout, self.version, self.staged, self.bundle, self.metrics, self.mysql,
                                work_dir=self.work, data_created=self.prepared_at)
        self.report.version = result.version
        return result.to_dict()

    def release(self) -> dict[str, Any]:
        assert self.version is not None
        if self.o.release_settings is None:
            raise ValueError("a release needs the release settings (Options.release_settings)")
        settings = self.o.release_settings.with_release(observe_s=self.o.observe_s)
        self.release_result = result = run_release(self.version, settings, self.stop)
        return result.to_dict()  # a promotion committed version.txt itself: `commit`

    # -- the whole run ------------------------------------------------------------------------------

    def execute(self) -> RunReport:
        report = self.report
        started = time.perf_counter()
        log.info("pipeline run started", extra=kv(run=report.run_id, source=self.o.source,
                                                  gate=self.o.rmse_gate, release=self.o.release))
        _write_report(report)
        try:
            self.step("collect", self.collect)
            self.step("prepare", self.prepare)
            self.step("checks", self.checks)
            self.step("evaluate", self.evaluate)
            self.step("gate", self.gate)
            self.step("train", self.train)
            self.step("version", self.make_version)
            report.outcome, report.exit_code = "versioned", EXIT_OK
            if self.o.release:
                self.step("release", self.release)
                assert self.release_result is not None
                if self.release_result.outcome == PROMOTED:
                    report.outcome = "released"
                else:
                    report.outcome, report.exit_code = "release_aborted", EXIT_RELEASE
                    report.reason = self.release_result.reason
        except PipelineStop as stop:
            report.outcome, report.exit_code, report.reason = stop.outcome, stop.exit_code, stop.reason
            if stop.outcome in ("refused", "checks_failed", "failed"):
                report.failed_step = report.steps[-1].name if report.steps else ""
        if report.outcome != "no_new_data" and (report.outcome != "interrupted" or report.version is not None):
            self._notify()
        if not self.o.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        report.state, report.finished = "finished", now_iso()
        report.seconds = round(time.perf_counter() - started, 3)
        _write_report(report)
        log.info("pipeline run finished", extra=kv(run=report.run_id, outcome=report.outcome,
                                                   exit_code=report.exit_code, version=report.version,
                                                   seconds=report.seconds, report=report.path))
        return report

    def _notify(self) -> None:
        r = self.report
        started = time.perf_counter()
        assert self.o.notify is not None
        delivery = Notifier(self.o.notify).send_notice(run_notice(run_summary(r, self.metrics, self.release_result)))
        r.steps.append(StepRecord("notify", "ok" if not delivery.failed else "failed",
                                  round(time.perf_counter() - started, 3),
                                  {"sent": delivery.sent, "skipped": delivery.skipped, "failed": delivery.failed}))


def run_summary(report: RunReport, metrics: dict[str, Any], release: ReleaseResult | None = None) -> RunSummary:
    """What the run's notice says, from its report, its offline metrics and its release's result."""
    version_step = report.step("version")
    commit = version_step.details.get("commit", "") if version_step and version_step.status == "ok" else ""
    return RunSummary(
        run_id=report.run_id, outcome=report.outcome, reason=report.reason, failed_step=report.failed_step,
        version=report.version, rmse=report.rmse, rmse_gate=report.rmse_gate, ndcg=metrics.get("ndcg@20"),
        data_checksum=report.data_checksum, commit=commit or "", release=release,
    )


def run_release(version: int, settings: ReleaseSettings, stop: threading.Event) -> ReleaseResult:
    """The canary release of `version`, without a notice of its own: the run's notice carries its result."""
    from auto_deployment.release.controller import ReleaseRefused
    from auto_deployment.release.state import ReleaseLocked
    from auto_deployment.release.wiring import release_version

    try:
        return release_version(version, settings, notify=False, stop=stop)
    except (ReleaseRefused, ReleaseLocked) as exc:
        return ReleaseResult(candidate=version, previous=None, outcome=FAILED, reason=f"release refused: {exc}")


def _short(details: dict[str, Any]) -> dict[str, Any]:
    """Scalar details only, for one log line."""
    return {k: v for k, v in details.items() if isinstance(v, int | float | str) and len(str(v)) <= 80}


def run_pipeline(options: Options, *, stop: threading.Event | None = None, source: Any | None = None) -> RunReport:
    """One run under `<run>/pipeline.lock`; raises `app.files.LockHeld` when another process runs the pipeline."""
    assert options.layout is not None, "Options.from_args (or the caller) gives the layout"
    with exclusive_lock(options.layout.run_dir / LOCK_NAME, f"pid={os.getpid()}"):
        if options.mysql is not None:  # a run killed in its version step: before numbers and "no new data"
            try:
                repair_interrupted(options.layout, options.mysql)
            except (VersionError, OSError, ValueError) as exc:  # the version step tries again, and fails if it must
                log.error("interrupted version not repaired yet", extra=kv(error=exc))
        return _Run(options, stop or threading.Event(), source).execute()


# --- command line ----------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one run (the scheduler passes them on to each run)."""
    parser.add_argument("--source", default="kafka",
                        help="where events come from: kafka (default), file:PATH, stdin, or none (event store as is)")
    parser.add_argument("--collect", default=None, metavar="DURATION",
                        help="how long to collect from Kafka, e.g. 15m, 30s (default PIPELINE_COLLECT_S)")
    parser.add_argument("--events-dir", type=Path, default=None, help="event store (default <data>/events)")
    parser.add_argument("--rmse-gate", type=float, default=None,
                        help="version only if RMSE is below this (default PIPELINE_RMSE_GATE)")
    parser.add_argument("--min-new-ratings", type=int, default=None,
                        help="data check: fewest new ratings (default PIPELINE_MIN_NEW_RATINGS)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter")
    parser.add_argument("--no-release", action="store_true", help="version only; no canary release")
    parser.add_argument("--observe", default=None, metavar="DURATION",
                        help="canary observation window, e.g. 30s, 12h (default RELEASE_OBSERVE_S)")
    parser.add_argument("--keep-work", action="store_true", help="keep the staging directory of the run")


def run_argv(args: argparse.Namespace) -> list[str]:
    """The `run` command line equivalent to parsed run options (for a run in a subprocess)."""
    argv = ["--source", args.source]
    for flag, value in (("--collect", args.collect), ("--events-dir", args.events_dir),
                        ("--rmse-gate", args.rmse_gate), ("--min-new-ratings", args.min_new_ratings),
                        ("--observe", args.observe)):
        if value is not None:
            argv += [flag, str(value)]
    for pair in args.param:
        argv += ["--param", pair]
    if args.no_release:
        argv.append("--no-release")
    if args.keep_work:
        argv.append("--keep-work")
    return argv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        options = Options.from_args(args)
    except ValueError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("stop requested: finishing the current step", extra=kv(signal=signal.Signals(signum).name))
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = run_pipeline(options, stop=stop)
    except LockHeld as exc:
        log.warning("run skipped: the pipeline is already running", extra=kv(reason=exc))
        return EXIT_LOCKED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(json.dumps({k: v for k, v in report.to_dict().items() if k != "steps"}
                     | {"steps": {s.name: {"status": s.status, "seconds": s.seconds} for s in report.steps}},
                     indent=2, default=str))
    return int(report.exit_code if report.exit_code is not None else EXIT_FAILED)

