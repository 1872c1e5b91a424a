"""Fault matrix: each fault injected under steady load through NGINX, on a native stack started for the run.

`python -m bench faults` brings the whole native stack up with the project's own `ops.stack` in a
private directory on free loopback ports, then for each entry of `FAULTS` (one small entry per fault,
in order): sends an open-loop load at `BENCH_FAULT_RATE` req/s through NGINX (half known users, half
fresh user ids that exist nowhere else, one request each, so their provenance rows can be counted
exactly: every user id is one answer; only fresh ones for spool-full, so its lost rows compare one to
one with the rows the slots counted dropped), injects the fault, holds it, heals it, waits until the stack
is healthy again, stops the load and waits for provenance to settle. One row per fault:

* failed: requests that got no 200 within the client's 800 ms (simulator.load.CLIENT_TIMEOUT_S);
* p99 ms: of requests sent from the injection until recovery (latency from the scheduled send);
* rows lost / duplicated: fresh users answered 200 with no `reccom` row / with more than one
  (read with the auditor account, `store.served_lists`);
* recover s: from the end of the fault until every slot answers /ready, NGINX /health, MariaDB a
  login, every spool is empty and requests stop failing. Requests failing before the injection are
  counted apart ("before"): on a shared 2-core machine a stall of every server longer than NGINX's
  300 ms read timeout fails requests with no fault at all, so the baseline is printed beside each row;
* seen: alerts Prometheus reported (pending or firing) during the fault and recovery, and the
  provenance counters of the slots (`provenance_rows_total` outcomes other than written,
  `provenance_failures_total`) that moved.

Three faults hit the release and the pipeline rather than serving (the load still runs, and the
columns above are measured as for the others); each says in an "outcome" line what happened to its part,
and its "recover s" is its own (said in that line):

* prometheus-release: ``python -m auto_deployment release`` of a healthy candidate (the stable bundle
  copied as the next version) on short windows; Prometheus stopped once it observes the canary; the
  release must end without promoting (inconclusive, held, aborted at the limit); Prometheus started again.
* kafka-collect: the stack's own broker (``ops/kafka.sh``, free ports), the simulator's Kafka sink
  publishing distinct lines, a collection (``python -m auto_deployment ingest --source kafka``, the
  pipeline's collect step) running; the broker stopped for the hold, started again; lines acknowledged
  by the broker are compared with the lines in the event store's committed files.
* kill-pipeline: ``python -m auto_deployment run`` in a throwaway repository (git, DVC, the stack's
  MariaDB) SIGKILLed once its bundle is in models/; then the next run: no half version may remain.

Quick mode (``python -m bench faults --quick`` or ``BENCH_FAULT_QUICK=1``) holds each lasting fault
``BENCH_FAULT_HOLD_QUICK`` s (default 8) instead of ``BENCH_FAULT_HOLD`` (default 60) and shortens the
steady phases; ``BENCH_FAULTS=kill-worker,nginx-reload`` (or ``--only kill-worker,nginx-reload``) runs only
the named faults; ``BENCH_FAULT_DUMP=dir``
keeps every request (time from injection, status, latency, user) and the stack's logs per fault;
``BENCH_FAULT_JSON=file`` also writes the rows as JSON. Alerts have
``for:`` windows of minutes, so quick mode mostly shows them pending, if at all; the counters move.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

from app import store
from app.contracts import bundle, pointer
from app.contracts.topology import Topology
from app.files import write_json_atomic
from app.settings import ROOT, MySQL
from bench.table import render
from ops.services import (
    Stack,
    environment,
    kafka,
    mariadb,
    program_pids,
    prometheus_slots_up,
    supervisorctl,
    supervisord_pid,
)
from simulator.load import CLIENT_TIMEOUT_S
from tests.fixtures.ports import free_ports

FRESH_BASE = 900_000_000  # fresh user ids: fault k uses FRESH_BASE + k·10^7 + n (no model knows them)
KNOWN_USERS = 200  # the even requests ask for users 1..KNOWN_USERS (the default world has 2,000)
SPOOL_FULL_BYTES = 16 * 1024  # "disk full" for the spool-full fault: no file of the worker grows past this


# ---------------------------------------------------------------------- settings (read once, here)
@dataclass(frozen=True)
class Plan:
    rate: float  # requests/s through NGINX
    hold_s: float  # how long a lasting fault lasts
    before_s: float  # steady load before the injection
    after_s: float  # load kept after recovery
    recover_limit_s: float  # give up waiting for recovery after this long
    settle_s: float  # how long provenance may take to land once the stack is healthy
    only: tuple[str, ...]
    dump_dir: str = ""  # BENCH_FAULT_DUMP: write each fault's requests and the stack's logs there
    json_path: str = ""  # BENCH_FAULT_JSON: also write the rows there as JSON (for tests and tooling)

    @classmethod
    def from_args(cls, argv: Sequence[str] = ()) -> Plan:
        quick = "--quick" in argv or os.environ.get("BENCH_FAULT_QUICK", "") not in ("", "0")
        hold = float(os.environ.get("BENCH_FAULT_HOLD_QUICK" if quick else "BENCH_FAULT_HOLD", "8" if quick else "60"))
        names = os.environ.get("BENCH_FAULTS", "")
        if "--only" in argv and argv.index("--only") + 1 < len(argv):  # --only NAME[,NAME]: wins over BENCH_FAULTS
            names = argv[argv.index("--only") + 1]
        only = tuple(n for n in names.split(",") if n)
        return cls(
            rate=float(os.environ.get("BENCH_FAULT_RATE", "100")),
            hold_s=hold,
            before_s=3.0 if quick else 10.0,
            after_s=2.0 if quick else 5.0,
            recover_limit_s=90.0 if quick else 180.0,
            settle_s=60.0 if quick else 120.0,
            only=only,
            dump_dir=os.environ.get("BENCH_FAULT_DUMP", ""),
            json_path=os.environ.get("BENCH_FAULT_JSON", ""),
        )


# ---------------------------------------------------------------------- the stack under test
@dataclass
class Ctx:
    """The running stack a fault acts on, and what the fault left for its heal step."""

    stack: Stack
    mysql: MySQL
    hold_s: float
    state: dict = field(default_factory=dict)

    @property
    def stable(self) -> str:
        return self.stack.topology.stable[0].name

    def slot_pid(self, slot: str) -> int:
        return program_pids(self.stack)[slot]

    def workers(self, slot: str) -> list[int]:
        return slot_workers(self.stack, slot)

    def mariadb_pid(self) -> int:
        return int((self.stack.run_dir / "mariadb" / "mariadb.pid").read_text().split()[0])


def slot_workers(stack: Stack, slot: str) -> list[int]:
    """Pids of the Gunicorn workers of `slot` (children of its master)."""
    pid = program_pids(stack)[slot]
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------- the faults
def kill_worker(ctx: Ctx) -> str:
    victim = ctx.workers(ctx.stable)[0]
    os.kill(victim, signal.SIGKILL)
    return f"{ctx.stable} worker {victim}"


def kill_slot(ctx: Ctx) -> str:
    master = ctx.slot_pid(ctx.stable)
    os.killpg(master, signal.SIGKILL)  # supervisord starts each program in its own process group
    return f"{ctx.stable} master {master} and its workers"


def reload_nginx(ctx: Ctx) -> str:
    pid = program_pids(ctx.stack)["nginx"]
    os.kill(pid, signal.SIGHUP)
    return f"nginx master {pid}"


def stop_mariadb(ctx: Ctx) -> str:
    done = mariadb(ctx.stack, "stop")
    return f"ops/mariadb.sh stop: exit {done.returncode}"


def start_mariadb(ctx: Ctx) -> None:
    done = mariadb(ctx.stack, "start")
    if done.returncode != 0:
        raise RuntimeError(f"MariaDB did not start again: {done.stdout}{done.stderr}")


def freeze_mariadb(ctx: Ctx) -> str:
    pid = ctx.mariadb_pid()
    os.kill(pid, signal.SIGSTOP)
    ctx.state["frozen"] = pid
    return f"mariadbd {pid} SIGSTOP"


def thaw_mariadb(ctx: Ctx) -> None:
    os.kill(ctx.state.pop("frozen"), signal.SIGCONT)


def fill_spool(ctx: Ctx) -> str:
    """MariaDB stopped and the stable slot's workers may write no file past SPOOL_FULL_BYTES (RLIMIT_FSIZE).

    A full disk as one process sees it: writes past the limit fail with EFBIG (Python ignores SIGXFSZ).
    Only the soft limit is lowered, so an unprivileged run can raise it back.
    """
    stop_mariadb(ctx)
    limited = {}
    for pid in ctx.workers(ctx.stable):
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        limit = SPOOL_FULL_BYTES if hard == resource.RLIM_INFINITY else min(SPOOL_FULL_BYTES, hard)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
        limited[pid] = soft
    ctx.state["limited"] = limited
    return f"MariaDB stopped; {ctx.stable} workers {sorted(limited)} limited to {SPOOL_FULL_BYTES // 1024} KiB files"


def unfill_spool(ctx: Ctx) -> None:
    for pid, soft in ctx.state.pop("limited").items():
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]))
    start_mariadb(ctx)


def poison_spool(ctx: Ctx) -> str:
    """A spool file of a slot's writer with one unparsable row between two good ones (issue 12 finding 1)."""
    spool = ctx.stack.run_dir / "spool" / ctx.stable
    spool.mkdir(parents=True, exist_ok=True)
    good = '{"row_id":"%s","request_id":"poison-%s","served_at_ms":%d,"user_id":%d,"version_number":1,' \
           '"slot":"%s","host":"bench","latency_ms":1.0,"movies":"1,2,3"}\n'
    now = int(time.time() * 1000)
    users = (FRESH_BASE - 2, FRESH_BASE - 1)
    body = (good % (f"poison-a-{now}", "a", now, users[0], ctx.stable) + '{"served_at_ms":1e400}\n'
            + good % (f"poison-b-{now}", "b", now, users[1], ctx.stable))
    path = spool / f"{time.time_ns()}-bench-poison.jsonl"
    path.write_text(body)
    ctx.state["extra_users"] = (users, now)
    return "a spool file: 2 good rows around 1 poison line"


def corrupt_bundle(ctx: Ctx) -> str:
    """A new version (own metadata and checksums) whose ids.json was damaged afterwards, pointed to by the canary."""
    models = ctx.stack.models_dir
    current = max(int(p.name) for p in models.iterdir() if p.name.isdigit())
    broken = models / str(current + 1)
    shutil.copytree(models / str(current), broken)
    meta = bundle.read_metadata(broken)
    write_json_atomic(broken / bundle.METADATA, {**meta, "version": current + 1})
    bundle.write_checksums(broken, bundle.listed_files(broken))
    target = broken / "ids.json"
    target.write_bytes(target.read_bytes()[:-5] + b"xxxxx")
    canary = ctx.stack.topology.canary.name
    ctx.state["pointer"] = (canary, pointer.read_number(ctx.stack.pointer(canary)))
    pointer.write_number(ctx.stack.pointer(canary), current + 1)
    return f"{canary} pointed at version {current + 1} (ids.json damaged after its checksums were written)"


def restore_pointer(ctx: Ctx) -> None:
    slot, version = ctx.state.pop("pointer")
    pointer.write_number(ctx.stack.pointer(slot), version)


# ------------------------------------------------ faults of the release and the pipeline (issue 12, second part)
# Each puts what the fault did to its own part in ctx.state["outcome"], and, where "recover s" means something
# else than the serving stack's health, its own figure in ctx.state["recover_s"] (said in the outcome).
RELEASE_ENV = {"RELEASE_STEPS": "shadow,50", "RELEASE_INTERVAL_S": "1", "RELEASE_INCONCLUSIVE_LIMIT": "10",
               "RELEASE_MIN_REQUESTS": "20", "GIT_REMOTE": "", "SMTP_HOST": "", "SLACK_WEBHOOK_URL": ""}
RELEASE_OBSERVE = "20s"  # two steps of 10 s: Prometheus is stopped in the first
KAFKA_RATE = 200  # event lines/s published during the Kafka fault
KAFKA_MOVIE = "bench+kafka+fault+2026"  # line n: user 1 + n % 1000, minute n // 1000: every line its own key


def _wait(predicate: Callable[[], bool], limit_s: float, step_s: float = 0.2) -> float | None:
    """Seconds until `predicate()` held (None: it did not within `limit_s`)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(step_s)
    return None


def new_candidate(ctx: Ctx) -> None:
    """A healthy candidate: the stable bundle copied as the next version (own metadata and checksums)."""
    models = ctx.stack.models_dir
    stable = pointer.read_number(ctx.stack.version_file) or pointer.read_number(ctx.stack.pointer(ctx.stable))
    candidate = max(int(p.name) for p in models.iterdir() if p.name.isdigit()) + 1
    shutil.copytree(models / str(stable), models / str(candidate))
    meta = bundle.read_metadata(models / str(candidate))
    write_json_atomic(models / str(candidate) / bundle.METADATA, {**meta, "version": candidate})
    bundle.write_checksums(models / str(candidate), bundle.listed_files(models / str(candidate)))
    ctx.state.update(candidate=candidate, stable=stable)


def release_then_stop_prometheus(ctx: Ctx) -> str:
    """`python -m auto_deployment release` of the candidate; Prometheus stopped once it observes the canary."""
    from auto_deployment.release.state import OBSERVE, StateStore

    stack, candidate = ctx.stack, ctx.state["candidate"]
    env = {**stack.env, **RELEASE_ENV, "MOVIEREC_REPO_DIR": str(stack.run_dir.parent)}
    out = stack.run_dir.parent / f"release-{candidate}"
    ctx.state["files"] = files = (open(f"{out}.out", "w"), open(f"{out}.err", "w"))  # noqa: SIM115 (closed in heal)
    ctx.state["release"] = proc = subprocess.Popen(
        [sys.executable, "-m", "auto_deployment", "release", "--candidate", str(candidate), "--observe",
         RELEASE_OBSERVE], cwd=ROOT, env=env, stdout=files[0], stderr=files[1])
    store_ = StateStore(stack.run_dir)

    def observing() -> bool:
        state = store_.load()
        return proc.poll() is not None or (state is not None and state.candidate == candidate
                                           and state.state == OBSERVE)

    waited = _wait(observing, 180)
    if proc.poll() is not None or waited is None:
        return f"release of v{candidate} never reached OBSERVE (exit {proc.poll()}); Prometheus left running"
    stopped = supervisorctl(stack, "stop", "prometheus")
    ctx.state["stopped"] = time.monotonic()
    return (f"release of v{candidate} (steps {RELEASE_ENV['RELEASE_STEPS']}, window {RELEASE_OBSERVE}, checks every "
            f"1 s, inconclusive limit {RELEASE_ENV['RELEASE_INCONCLUSIVE_LIMIT']}) in OBSERVE after {waited:.0f} s; "
            f"Prometheus stopped (supervisorctl exit {stopped.returncode})")


def finish_release_start_prometheus(ctx: Ctx) -> None:
    """Wait for the release's own decision (Prometheus still down), then start Prometheus again."""
    stack, proc = ctx.stack, ctx.state["release"]
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    decided_s = time.monotonic() - ctx.state.get("stopped", time.monotonic())
    for f in ctx.state.pop("files"):
        f.close()
    out = stack.run_dir.parent / f"release-{ctx.state['candidate']}"
    try:
        report = json.loads(Path(f"{out}.out").read_text())
    except ValueError:
        report = {"outcome": "error", "reason": Path(f"{out}.err").read_text()[-300:]}
    held = Path(f"{out}.err").read_text().count("step held (")
    supervisorctl(stack, "start", "prometheus")
    up = _wait(lambda: "canary" in prometheus_slots_up(stack), 120, 0.5)
    ctx.state["recover_s"] = up if up is not None else float("nan")
    serving = {slot: pointer.read_number(stack.pointer(slot)) for slot in stack.slots}
    stable = pointer.read_number(stack.version_file)
    promoted = report.get("outcome") == "promoted" or stable == ctx.state["candidate"]
    ctx.state["outcome"] = (
        f"{'PROMOTED' if promoted else 'not promoted'}: release {report.get('outcome')} (exit {code}) "
        f"{decided_s:.0f} s after Prometheus stopped, step held {held} interval(s) first, "
        f"\"{str(report.get('reason', ''))[:110]}\"; version.txt v{stable}, slots serve "
        + ",".join(f"{k} v{v}" for k, v in sorted(serving.items()))
        + "; recover s = from starting Prometheus again until it scraped the canary; alerts cannot be seen while "
          "Prometheus is down (nothing else watches it)")


def _pipeline_versions(repo: Path, models: Path, rows: set[int]) -> tuple[set[int], list[str]]:
    """(versions of the repo, traces of versions that are not whole: bundle, .dvc, tracking row, commit)."""
    bundles = {int(p.name) for p in models.glob("*") if p.name.isdigit()}
    dvc_files = {int(p.name[:-4]) for p in models.glob("*.dvc")}
    log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout
    committed = {int(s.split()[2].rstrip(":")) for s in log.splitlines() if s.startswith("model version ")}
    problems = []
    for n in sorted(bundles | dvc_files | committed | rows):
        have = {"bundle": n in bundles, ".dvc": n in dvc_files, "row": n in rows, "commit": n in committed}
        if not all(have.values()):
            problems.append(f"v{n} " + "/".join(k for k, v in have.items() if v) + " without "
                            + "/".join(k for k, v in have.items() if not v))
        elif bundle.problem(models / str(n)) is not None:
            problems.append(f"v{n} bundle does not verify")
    return bundles | committed | rows, problems


def _new_rows(ctx: Ctx) -> set[int]:
    return {int(r["version_number"]) for r in store.tracking_rows(ctx.mysql)} - ctx.state["rows_before"]


def pipeline_repo(ctx: Ctx) -> None:
    """A throwaway versioning repository (git, DVC, bare origin, an event log of new ratings); MySQL the stack's."""
    from tests.fixtures.datasets import build_small_world
    from tests.fixtures.mariadb import settings_env
    from tests.fixtures.pipeline import build_pipeline_repo

    where = ctx.stack.run_dir.parent / f"pipeline-{time.time_ns()}"
    where.mkdir()
    repo = build_pipeline_repo(where, build_small_world())
    ctx.state.update(repo=repo, env={**repo.env, **settings_env(ctx.mysql)},
                     rows_before={int(r["version_number"]) for r in store.tracking_rows(ctx.mysql)})


def kill_pipeline_in_version_step(ctx: Ctx) -> str:
    """`python -m auto_deployment run` SIGKILLed once its bundle is in models/: DVC, tracking, git still to come."""
    repo = ctx.state["repo"]
    proc = subprocess.Popen([sys.executable, "-m", "auto_deployment", "run", "--source", f"file:{repo.events_log}",
                             "--no-release"], cwd=ROOT, env=ctx.state["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    started = time.monotonic()
    seen = _wait(lambda: proc.poll() is not None or any(p.name.isdigit() for p in repo.models_dir.glob("*")),
                 300, 0.005)
    if proc.poll() is not None or seen is None:
        proc.kill()
        return f"the run ended (exit {proc.wait()}) before its version step: nothing killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, left = _pipeline_versions(repo.repo, repo.models_dir, _new_rows(ctx))
    ctx.state["left"] = left
    return (f"run SIGKILLed {time.monotonic() - started:.1f} s after its start, right after models/<n> appeared "
            f"(version step: dvc add/push, tracking row, git commit/push still to come)")


def next_pipeline_run(ctx: Ctx) -> None:
    repo = ctx.state["repo"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "auto_deployment", "run", "--source", "none", "--no-release"],
                          cwd=ROOT, env=ctx.state["env"], capture_output=True, text=True, timeout=900)
    ctx.state["recover_s"] = time.monotonic() - started
    versions, problems = _pipeline_versions(repo.repo, repo.models_dir, _new_rows(ctx))
    repaired = [line.split("done=", 1)[-1].split(" pid=")[0].strip('" ') for line in done.stderr.splitlines()
                if "repaired an interrupted version" in line]
    version_txt = pointer.read_number(repo.repo / "version.txt")
    ctx.state["outcome"] = (
        f"left by the kill: {'; '.join(ctx.state.get('left', [])) or 'nothing'}; next run exit {done.returncode}, "
        f"repair: {repaired[0] if repaired else 'none'}; versions now {sorted(versions)}, half versions: "
        f"{'; '.join(problems) or 'none'}; version.txt {version_txt} (never released); "
        "recover s = the next run, start to end")


def _kafka_collected(events_dir: Path) -> Counter:
    """How many times each produced line (user, minute) is in the event store's committed watch files."""
    from auto_deployment.data.ingest import committed_files

    seen: Counter = Counter()
    for _name, handle in committed_files(events_dir, "watch"):
        with handle:
            for line in handle.read().decode().splitlines()[1:]:
                parts = line.split(",")
                if len(parts) == 4 and parts[2] == KAFKA_MOVIE:
                    seen[(int(parts[1]), int(parts[3]))] += 1
    return seen


class Producer:
    """The simulator's Kafka sink publishing KAFKA_RATE distinct event lines/s until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from simulator.kafka_sink import KafkaSink

        self.sink = KafkaSink(bootstrap, topic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from datetime import UTC, datetime

        from app.contracts.events import WatchEvent, format_line

        n, start = 0, time.monotonic()
        while not self._stop.is_set():
            if n >= (time.monotonic() - start) * KAFKA_RATE:
                time.sleep(0.01)
                continue
            self.sink.send(format_line(WatchEvent(datetime.now(UTC), 1 + n % 1000, KAFKA_MOVIE, n // 1000)))
            n += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.sink.flush(120)


def kafka_broker(ctx: Ctx) -> None:
    """The stack's own broker (`ops/kafka.sh` under its run dir, free ports), up before the load starts."""
    done = kafka(ctx.stack, "start")
    if done.returncode != 0:
        raise RuntimeError(f"Kafka did not start: {done.stdout}{done.stderr}")


def stop_kafka_while_collecting(ctx: Ctx) -> str:
    """A collection (`ingest --source kafka`, the pipeline's collect step) running; the broker stopped under it."""
    stack = ctx.stack
    bootstrap, topic = f"127.0.0.1:{stack.env['KAFKA_PORT']}", f"faults-{time.time_ns()}"
    events = stack.run_dir.parent / topic
    window = ctx.hold_s + 90  # ends well after the broker is back and the producer has stopped
    ctx.state.update(events=events, window=window, producer=Producer(bootstrap, topic))
    ctx.state["env"] = env = {**stack.env, "KAFKA_BOOTSTRAP": bootstrap, "KAFKA_TOPIC": topic, "KAFKA_GROUP": topic}
    ctx.state["err"] = err = open(f"{events}.log", "w")  # noqa: SIM115 (closed in heal)
    ctx.state["collector"] = subprocess.Popen(
        [sys.executable, "-m", "auto_deployment", "ingest", "--source", "kafka", "--for", f"{window:.0f}s",
         "--events-dir", str(events)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    flowing = _wait(lambda: sum(_kafka_collected(events).values()) > 0, 60, 0.5)
    started = time.monotonic()
    done = kafka(stack, "stop")
    ctx.state["stopped_at"] = sum(_kafka_collected(events).values())
    ctx.state["stop_began"] = started
    return (f"collector (ingest --source kafka, window {window:.0f} s) storing events "
            f"{'NOT YET' if flowing is None else f'after {flowing:.0f} s'}, {KAFKA_RATE} lines/s published; "
            f"broker stopped (ops/kafka.sh stop, exit {done.returncode}, {time.monotonic() - started:.0f} s) with "
            f"{ctx.state['stopped_at']} lines stored")


def restart_kafka_and_count(ctx: Ctx) -> None:
    stack, events = ctx.stack, ctx.state["events"]
    starting = time.monotonic()
    done = kafka(stack, "start")
    down_s, start_s = time.monotonic() - ctx.state["stop_began"], time.monotonic() - starting
    before = sum(_kafka_collected(events).values())
    back = _wait(lambda: sum(_kafka_collected(events).values()) > before, 120, 0.2)
    ctx.state["recover_s"] = back if back is not None else float("nan")
    time.sleep(3)
    producer = ctx.state["producer"]
    undelivered = producer.stop()
    sink = producer.sink
    collector = ctx.state["collector"]
    try:
        out, _ = collector.communicate(timeout=ctx.state["window"] + 120)
    except subprocess.TimeoutExpired:
        collector.kill()
        out, _ = collector.communicate()
    ctx.state.pop("err").close()
    seen = _kafka_collected(events)
    logged = Path(f"{events}.log").read_text()
    waits = logged.count("kafka broker unreachable, waiting")
    again = [line.split("waited_s=")[-1].split()[0] for line in logged.splitlines() if "reachable again" in line]
    lost = sink.delivered - len(seen)
    later = ""
    if lost > 0:  # not collected in this window: still in the topic for the next collection, or lost?
        second = subprocess.run([sys.executable, "-m", "auto_deployment", "ingest", "--source", "kafka", "--for", "20s",
                                "--events-dir", str(events)], cwd=ROOT, env=ctx.state["env"],
                               capture_output=True, text=True, timeout=300)
        seen = _kafka_collected(events)
        later = f" (a second collection, exit {second.returncode}, then found {sink.delivered - len(seen)} missing)"
    again_s = ",".join(again) or "never"
    ctx.state["outcome"] = (
        f"collection {'completed' if collector.returncode == 0 else 'FAILED'} (exit {collector.returncode}); "
        f"broker away {down_s:.0f} s (ops/kafka.sh start exit {done.returncode}, {start_s:.0f} s of it); "
        f"published {sink.sent}, acknowledged {sink.delivered}, failed "
        f"{sink.failed}, undelivered {undelivered}; collected {sum(seen.values())} lines = {len(seen)} distinct: "
        f"not collected in the window {max(lost, 0)}{later}, duplicated {sum(seen.values()) - len(seen)} "
        "(each line is its own (user, minute) key; counted in the committed watch files of the event store); "
        "operator sees: "
        f"'kafka broker unreachable, waiting' x{waits}, 'kafka broker reachable again' waited_s={again_s}, "
        f"ingest report {'printed' if out.strip() else 'missing'}; recover s = broker start until the collector "
        "stored events again")


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: how to inject it, how to heal it (None: it heals itself), how long it lasts."""

    key: str
    title: str
    inject: Callable[[Ctx], str]
    heal: Callable[[Ctx], None] | None = None
    lasting: bool = False  # held for the plan's hold_s before `heal`
    all_fresh: bool = False  # every request a fresh user, so rows lost compare one to one with rows dropped
    setup: Callable[[Ctx], None] | None = None  # before the load starts (a bundle, a repository, a broker)


FAULTS: tuple[Fault, ...] = (
    Fault("kill-worker", "SIGKILL one stable worker", kill_worker),
    Fault("kill-slot", "SIGKILL a whole stable slot", kill_slot),
    Fault("nginx-reload", "NGINX reload (SIGHUP)", reload_nginx),
    Fault("mariadb-stop", "MariaDB stopped", stop_mariadb, start_mariadb, lasting=True),
    Fault("mariadb-freeze", "MariaDB frozen (SIGSTOP)", freeze_mariadb, thaw_mariadb, lasting=True),
    Fault("spool-full", "spool disk full while MariaDB is stopped", fill_spool, unfill_spool, lasting=True,
          all_fresh=True),
    Fault("poison-line", "a poison line in a slot's spool", poison_spool),
    Fault("corrupt-bundle", "a corrupt bundle pointed to by the canary", corrupt_bundle, restore_pointer,
          lasting=True),
    Fault("prometheus-release", "Prometheus stopped during a release", release_then_stop_prometheus,
          finish_release_start_prometheus, setup=new_candidate),
    Fault("kafka-collect", "Kafka broker stopped during a collection", stop_kafka_while_collecting,
          restart_kafka_and_count, lasting=True, setup=kafka_broker),
    Fault("kill-pipeline", "pipeline SIGKILLed in its version step", kill_pipeline_in_version_step,
          next_pipeline_run, setup=pipeline_repo),
)


# ---------------------------------------------------------------------- load
@dataclass
class Shot:
    n: int
    user: int
    fresh: bool
    due: float  # monotonic time it was scheduled for
    status: int = -1  # 0 = timeout / connection error
    latency_ms: float = float("nan")


class Load:
    """Open-loop load through NGINX until stopped: request n is due at start + n / rate."""

    def __init__(self, url: str, rate: float, fresh_base: int, tag: str, all_fresh: bool = False) -> None:
        self.url, self.rate, self.fresh_base, self.tag = url, rate, fresh_base, tag
        self.all_fresh = all_fresh
        self.shots: list[Shot] = []
        self._stop = threading.Event()
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, name=f"load-{tag}", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> list[Shot]:
        self._stop.set()
        self._thread.join()
        return self.shots

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _one(self, shot: Shot) -> None:
        delay = shot.due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        headers = {"X-Request-Id": f"fault-{self.tag}-{shot.n}"}
        try:
            r = self._session().get(f"{self.url}/recommend/{shot.user}", headers=headers, timeout=CLIENT_TIMEOUT_S)
            status = r.status_code
        except requests.RequestException:
            status = 0
        shot.latency_ms = (time.monotonic() - shot.due) * 1e3  # from the scheduled send: queueing counts
        shot.status = status if shot.latency_ms <= CLIENT_TIMEOUT_S * 1e3 else 0

    def _run(self) -> None:
        rng = np.random.default_rng(11)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=48) as pool:
            n = 0
            while not self._stop.is_set():
                due = start + n / self.rate
                ahead = due - time.monotonic() - 0.5
                if ahead > 0:
                    time.sleep(min(ahead, 0.1))
                    continue
                fresh = self.all_fresh or n % 2 == 1
                user = self.fresh_base + n if fresh else int(rng.integers(1, KNOWN_USERS + 1))
                shot = Shot(n, user, fresh, due)
                self.shots.append(shot)
                pool.submit(self._one, shot)
                n += 1


# ---------------------------------------------------------------------- observation
def _get(url: str, timeout: float = 1.0) -> requests.Response | None:
    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None


def counters(stack: Stack) -> Counter:
    """Provenance counters summed over every slot's /metrics (outcome / failure kind → value)."""
    total: Counter = Counter()
    for slot in stack.slots:
        r = _get(f"{stack.slot_url(slot)}/metrics", 2.0)
        if r is None or r.status_code != 200:
            continue
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == "provenance_rows_total":
                    total[f"rows {sample.labels.get('outcome')}"] += sample.value
                elif sample.name == "provenance_failures_total":
                    total[f"failure {sample.labels.get('kind')}"] += sample.value
                elif sample.name in ("provenance_spool_bytes", "provenance_queue_rows"):
                    total[f"gauge {sample.name}"] += sample.value
    return total


def spool_bytes(stack: Stack) -> int:
    """Bytes of rows waiting in the slots' spools (read from disk: a slot that is down still has its spool)."""
    total = 0
    for slot in stack.slots:
        for path in (stack.run_dir / "spool" / slot).glob("*.jsonl"):
            try:
                total += path.stat().st_size
            except OSError:
                continue
    return total


def healthy(ctx: Ctx) -> tuple[bool, str]:
    stack = ctx.stack
    for slot in stack.slots:
        r = _get(f"{stack.slot_url(slot)}/ready")
        if r is None or r.status_code != 200:
            return False, f"{slot} not ready"
    r = _get(f"{stack.nginx_url}/health")
    if r is None or r.status_code != 200:
        return False, "nginx /health"
    try:
        store.close(store.connect(ctx.mysql, "auditor", timeout_s=1.0))
    except store.DatabaseError as exc:
        return False, f"MariaDB: {exc}"
    if spool_bytes(stack):
        return False, "spool not empty"
    return True, ""


class AlertWatch:
    """Alerts Prometheus reports while it runs that were not already active when it started (name → state)."""

    def __init__(self, stack: Stack) -> None:
        self.url = f"{stack.prometheus_url}/api/v1/alerts"
        self.seen: dict[str, str] = {}
        self.before = set(self._poll())  # already pending or firing: not this fault's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AlertWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> dict[str, str]:
        r = _get(self.url, 2.0)
        if r is None or r.status_code != 200:
            return {}
        try:
            alerts = r.json()["data"]["alerts"]
            return {a["labels"]["alertname"]: a["state"] for a in alerts}
        except (ValueError, KeyError, TypeError):
            return {}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, state in self._poll().items():
                if name not in self.before and self.seen.get(name) != "firing":
                    self.seen[name] = state


# ---------------------------------------------------------------------- one fault
@dataclass
class Row:
    title: str
    detail: str
    requests: int
    failed: int  # sent from the injection on
    failed_outside: int  # sent before the injection: the machine's own noise
    p99_ms: float
    lost: int
    duplicated: int
    second_answers: int
    recover_s: float
    seen: str
    load: float  # 1-minute load average of the machine at the end
    outcome: str = "n/a"  # what the fault did to its own part (release, collection, pipeline); n/a for serving faults


def provenance(mysql: MySQL, shots: list[Shot], since_ms: int, settle_s: float) -> tuple[int, int, int]:
    """(lost, duplicated, second answers) among the fresh users, once rows stop arriving.

    lost: answered 200 but no row. duplicated: the same answer stored twice (same slot and served_at_ms).
    second answers: another slot answered the same request too (NGINX tried the next server after its
    300 ms read timeout and both answered; both rows are kept by design, app/sql/003_reccom_row_id.sql).
    """
    answered = {s.user for s in shots if s.fresh and s.status == 200}
    fresh_all = {s.user for s in shots if s.fresh}
    deadline = time.monotonic() + settle_s
    last, stable_for = -1, 0
    lost, dup, second = len(answered), 0, 0
    while True:
        try:
            rows = store.served_lists(mysql, sorted(fresh_all), since_ms, int(time.time() * 1000) + 60_000)
        except store.DatabaseError:
            rows = None
        if rows is not None:
            per_user = Counter(u for u, *_ in rows)
            per_answer = Counter((u, served, slot) for u, _m, served, _v, slot in rows)
            lost = sum(1 for u in answered if per_user[u] == 0)
            dup = sum(n - 1 for n in per_answer.values() if n > 1)
            second = sum(n - 1 for n in per_user.values() if n > 1) - dup
            stable_for = stable_for + 1 if len(rows) == last else 0
            last = len(rows)
            if lost == 0 or stable_for >= 5:
                return lost, dup, second
        if time.monotonic() > deadline:
            return lost, dup, second
        time.sleep(1.0)


def run_fault(ctx: Ctx, fault: Fault, index: int, plan: Plan) -> Row:
    stack = ctx.stack
    ctx.state.clear()
    if fault.setup is not None:
        fault.setup(ctx)
    since_ms = int(time.time() * 1000) - 1000
    before = counters(stack)
    load = Load(stack.nginx_url, plan.rate, FRESH_BASE + index * 10_000_000, fault.key, fault.all_fresh).start()
    with AlertWatch(stack) as alerts:
        time.sleep(plan.before_s)
        injected = time.monotonic()
        detail = fault.inject(ctx)
        if fault.lasting:
            time.sleep(plan.hold_s)
        if fault.heal is not None:
            fault.heal(ctx)
        ended = time.monotonic()
        time.sleep(0.5)
        recovered = float("nan")
        deadline = ended + plan.recover_limit_s
        while time.monotonic() < deadline:
            if healthy(ctx)[0]:
                recovered = time.monotonic()
                break
            time.sleep(0.5)
        time.sleep(plan.after_s)
        shots = load.stop()
        after = counters(stack)
    done = [s for s in shots if s.status >= 0]
    if plan.dump_dir:  # every request and the stack's logs, to study a row
        out = Path(plan.dump_dir) / fault.key
        out.mkdir(parents=True, exist_ok=True)
        (out / "shots.tsv").write_text("".join(
            f"{s.due - injected:.3f}\t{s.status}\t{s.latency_ms:.1f}\t{s.user}\n" for s in done))
        shutil.copytree(stack.log_dir, out / "logs", dirs_exist_ok=True)
    window = [s for s in done if s.due >= injected]  # the fault and everything after it: a slot that comes back
    failed = sum(s.status != 200 for s in window)  # can still stall the others while it boots
    if failed and recovered == recovered:  # recovered once requests stop failing too
        recovered = max(recovered, max(s.due for s in window if s.status != 200))
    p99 = float(np.percentile([s.latency_ms for s in window], 99)) if window else float("nan")
    lost, dup, second = provenance(ctx.mysql, done, since_ms, plan.settle_s)
    if "extra_users" in ctx.state:  # rows the fault itself put in a spool: did they land?
        users, at = ctx.state["extra_users"]
        landed = {u for u, *_ in store.served_lists(ctx.mysql, users, at - 1, at + 1)}
        detail += f"; its good rows in MySQL: {len(landed)} of {len(users)}"
    moved = {k: after[k] - before[k] for k in after.keys() | before.keys()
             if not k.startswith(("rows written", "gauge")) and after[k] != before[k]}
    seen = [f"{name} ({state})" for name, state in sorted(alerts.seen.items())]
    seen += [f"{k} +{v:g}" for k, v in sorted(moved.items())]
    recover_s = (recovered - ended) if recovered == recovered else float("nan")
    return Row(fault.title, detail, len(done), failed, sum(s.status != 200 for s in done) - failed, p99, lost, dup,
               second, float(ctx.state.get("recover_s", recover_s)), "; ".join(seen) or "-", os.getloadavg()[0],
               ctx.state.get("outcome", "n/a"))


# ---------------------------------------------------------------------- stack life cycle
def stack_environ(base: Path) -> dict[str, str]:
    """A stack of its own under `base`, every port free now (as bench.server does)."""
    topology = Topology()
    ports = free_ports(len(topology.slots) + 8)
    slot_ports, ports = ports[: len(topology.slots)], ports[len(topology.slots):]
    kafka_ports = ports[6:8]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MOVIEREC_", "PROMETHEUS_", "MYSQL_", "SLACK_", "SMTP_", "MAIL_", "ALERT_"))}
    env.update(
        PYTHONPATH=str(ROOT), MOVIEREC_RUN_DIR=str(base / "run"), MOVIEREC_DATA_DIR=str(base / "data"),
        MOVIEREC_MODELS_DIR=str(base / "models"), MOVIEREC_VERSION_FILE=str(base / "version.txt"),
        MOVIEREC_SLOT_PORTS=",".join(map(str, slot_ports)), NGINX_PORT=str(ports[0]),
        NGINX_STATUS_PORT=str(ports[1]), PROMETHEUS_PORT=str(ports[2]), ALERTMANAGER_PORT=str(ports[3]),
        MYSQL_PORT=str(ports[4]), ONLINE_EVAL_PORT=str(ports[5]),
        KAFKA_PORT=str(kafka_ports[0]), KAFKA_CONTROLLER_PORT=str(kafka_ports[1]),  # the kafka-collect fault's broker
    )
    return env


def measure(stack: Stack, plan: Plan, faults: Sequence[Fault] = FAULTS) -> list[Row]:
    """Run `faults` one after another on a running stack; the stack is healthy again between them."""
    with environment(stack.env):
        mysql = MySQL.from_env()
    ctx = Ctx(stack, mysql, plan.hold_s)
    rows = []
    for index, fault in enumerate(faults):
        if plan.only and fault.key not in plan.only:
            continue
        print(f"[bench faults] {fault.key} ...", file=sys.stderr, flush=True)
        rows.append(run_fault(ctx, fault, index + 1, plan))
        ok, why = healthy(ctx)
        if not ok:
            rows[-1].seen += f"; NOT healthy afterwards: {why}"
            break
    return rows


def table(rows: list[Row], plan: Plan) -> str:
    return render(
        f"Fault matrix: load {plan.rate:.0f} req/s through NGINX, lasting faults held {plan.hold_s:.0f} s",
        ["fault", "requests", "failed", "before", "p99 ms", "rows lost", "dup", "2nd answers", "recover s",
         "load", "alerts / counters moved"],
        [[r.title, r.requests, r.failed, r.failed_outside, r.p99_ms, r.lost, r.duplicated, r.second_answers,
          r.recover_s, r.load, r.seen] for r in rows],
        note="failed: no 200 within 800 ms, sent from the injection on (before: sent before it, the machine's own "
             "noise); p99 over the same requests; rows lost: fresh users answered 200 with no "
             "reccom row; dup: one answer stored twice; 2nd answers: NGINX also asked another server after its "
             "300 ms read timeout and both answered (both rows kept by design); recover s: from the fault's end "
             "until every slot is ready, MariaDB answers, every spool is empty and requests stop failing; load: "
             "1-min load average of the machine (2 cores) at the end.\n"
             + "\n".join(f"  {r.title}: {r.detail}" + (f"\n    outcome: {r.outcome}" if r.outcome != "n/a" else "")
                         for r in rows),
    )


def run(argv: Sequence[str] | None = None) -> str:
    """The matrix as a table (`python -m bench faults`; `python -m bench.faults --quick` for quick mode)."""
    argv = sys.argv[1:] if argv is None else argv
    plan = Plan.from_args(argv)
    base = Path(tempfile.mkdtemp(prefix="movierec-faults-"))
    env = stack_environ(base)
    up = subprocess.run([sys.executable, "-m", "ops.stack", "up"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
    stack = Stack.from_env(env)
    try:
        if up.returncode != 0:
            return f"bench faults: the stack did not come up:\n{up.stdout}{up.stderr}\n"
        rows = measure(stack, plan)
        if plan.json_path:
            Path(plan.json_path).write_text(json.dumps(
                {"plan": dataclasses.asdict(plan), "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
        return table(rows, plan)
    finally:
        down(stack, env)
        shutil.rmtree(base, ignore_errors=True)


def down(stack: Stack, env: dict[str, str]) -> None:
    """`ops.stack down`, after undoing a freeze a failed run may have left."""
    pid_file = stack.run_dir / "mariadb" / "mariadb.pid"
    if pid_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGCONT)
    if supervisord_pid(stack) is not None or pid_file.is_file():
        subprocess.run([sys.executable, "-m", "ops.stack", "down"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)


def main(argv: Sequence[str]) -> int:
    print(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
