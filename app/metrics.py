"""Prometheus metrics of an inference server, correct with several Gunicorn workers.

Gunicorn runs N worker processes; each keeps its own counters. prometheus-client's multiprocess
mode makes every worker write its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
(``Serving.metrics_dir``) and ``/metrics`` (any worker) sums the files of all workers. Rules that
follow from it, and where they are kept:

* the variable must be set before ``prometheus_client`` is first imported in the process
  (``gunicorn.conf.py`` sets it at the top; :func:`ensure_multiproc_dir` does it for other runners);
* the directory is wiped when the Gunicorn master starts (``on_starting``) and a dead worker's
  live gauges are dropped (``child_exit`` → :func:`mark_worker_dead`); so each slot needs a
  directory of its own (the default, ``<run_dir>/metrics/<slot>``).

What the release controller and alerts query (names and labels are a contract):

* ``recommend_latency_seconds{slot,version,status,traffic}`` histogram of ``/recommend`` answers, buckets
  from 1 ms to 1 s; average latency of a slot = ``sum(rate(..._sum{slot="canary",status="200"}[W]))
  / sum(rate(..._count{...}[W]))``;
* ``recommend_requests_total{slot,version,status,traffic}``: error ratio = 5xx / all (4xx are the client's); the
  series of every status in `STATUSES` exist at 0 from the moment a version is swapped in (`ServingMetrics.touch`);
  ``traffic`` is ``live``, or ``shadow`` for the copies NGINX mirrors to the canary during a release's shadow
  step (their answers are discarded: alerts on what users see filter ``traffic="live"``);
* ``recommend_cold_start_total{slot,version}``: answers that used the cold-start ranking;
* ``provenance_rows_total{slot,outcome}``, outcome ``written`` | ``spooled`` | ``dead_lettered`` | ``dropped`` |
  ``adopted`` (every row ends written, dead-lettered or dropped; ``spooled`` counts rows passing through the disk,
  ``adopted`` rows a live worker recovered from a killed worker's journal);
* ``provenance_failures_total{slot,kind}``: one per failure of the writer (``app.provenance.FAILURE_KINDS``:
  mysql, queue_full, spool_full, spool_write, spool_list, spool_file, dead_letter_write, writer, journal (a row
  could not be journalled), orphan_journal (a killed worker's journal was found and adopted));
* gauges of the provenance writer: ``provenance_queue_rows`` (rows in memory, summed over live workers),
  ``provenance_spool_bytes``, ``provenance_spool_limit_bytes``, ``provenance_spool_oldest_age_seconds``
  (the slot's spool directory, max over live workers) and ``provenance_writer_heartbeat_timestamp_seconds``
  (last cycle of the writer thread, min over live workers: a stuck or dead thread shows as an old value);
* ``model_info{slot,version}`` = 1 for each version some live worker serves (``livemax``: the max
  over *live* workers, so a worker that died or moved on to another version stops counting, and
  there is no ``pid`` label to aggregate away; ``max`` would keep a dead worker's 1 forever,
  ``liveall`` would give one series per worker).

prometheus-flask-exporter adds ``flask_http_request_duration_seconds`` and
``flask_http_request_total`` for every route, grouped by URL rule (never by path: one series per
user id would explode) and labelled with the slot and the model version that answered.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from app.provenance import FAILURE_KINDS, ROW_OUTCOMES
from app.settings import Serving

# Fine-grained where our answers live (a few ms), coarser up to the client's 800 ms limit and 1 s.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0,
)
NO_VERSION = "none"
OUTCOMES = ROW_OUTCOMES  # provenance_rows_total{outcome}
STATUSES = ("200", "400", "500", "503")  # what /recommend answers; each series exists at 0 from the swap on
LIVE, SHADOW = "live", "shadow"
TRAFFIC = (LIVE, SHADOW)  # recommend_*{traffic}: users' requests, or NGINX's mirrored copies (shadow step)


def ensure_multiproc_dir(serving: Serving) -> bool:
    """Point prometheus-client at the multiprocess directory if that is still possible.

    Returns True when multiprocess mode is on. It can only be switched on before the first import
    of ``prometheus_client`` in this process; under Gunicorn the config file has done it already.
    """
    import sys

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and "prometheus_client" not in sys.modules:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = serving.metrics_dir
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return False
    Path(directory).mkdir(parents=True, exist_ok=True)
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def wipe_multiproc_dir(directory: str | Path) -> int:
    """Remove the value files of a previous run (Gunicorn ``on_starting``); returns how many."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for f in path.glob("*.db"):
        f.unlink(missing_ok=True)
        removed += 1
    return removed


def mark_worker_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited (Gunicorn ``child_exit``)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class ServingMetrics:
    """Our own metrics, labelled with the slot; created once per process (module-level objects)."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        m = _objects()
        self._latency = m["latency"]
        self._requests = m["requests"]
        self._cold = m["cold"]
        self._provenance = m["provenance"]
        self._failures = m["provenance_failures"]
        self._gauges = {name: m[f"provenance_{name}"] for name in _PROVENANCE_GAUGES}
        self._model_info = m["model_info"]
        self._refused = m["model_refused"]
        for serving in ("yes", "no"):  # born at zero: the first refusal is an increase, not a new series
            self._refused.labels(slot=slot, serving=serving)

    def observe_recommend(self, version: str, status: int, seconds: float, cold: bool = False,
                          shadow: bool = False) -> None:
        labels = {"slot": self.slot, "version": version or NO_VERSION, "status": str(status),
                  "traffic": SHADOW if shadow else LIVE}
        self._latency.labels(**labels).observe(seconds)
        self._requests.labels(**labels).inc()
        if cold and status == 200 and not shadow:
            self._cold.labels(slot=self.slot, version=labels["version"]).inc()

    def provenance_event(self, name: str, value: float) -> None:
        """`on_event` callback of the provenance writer: row outcomes, ``failure.<kind>`` and gauges."""
        if name in OUTCOMES:
            if value > 0:
                self._provenance.labels(slot=self.slot, outcome=name).inc(value)
        elif name.startswith("failure."):
            self._failures.labels(slot=self.slot, kind=name.removeprefix("failure.")).inc(value)
        elif name in self._gauges:
            self._gauges[name].labels(slot=self.slot).set(value)

    def model_refused(self, still_serving: bool) -> None:
        """`on_refuse` callback of the model slot: one refused load (the slot logs why)."""
        self._refused.labels(slot=self.slot, serving="yes" if still_serving else "no").inc()

    def model_swapped(self, old_version: str | None, new_version: str) -> None:
        if old_version is not None and old_version != new_version:
            self._model_info.labels(slot=self.slot, version=old_version).set(0)
        self._model_info.labels(slot=self.slot, version=new_version).set(1)

    def touch(self, version: str | None) -> None:
        """Create the zero-valued series up front so rate() and ratios work from the first scrape.

        A counter series is born at its first increment, so ``increase()`` over a window that holds its
        birth misses the first burst (37 canary 400s once showed as 0). Called when a version is swapped
        in: Prometheus then scrapes a 0 for every (slot, version, status) `/recommend` can answer before
        the version's first request, and the release checks see its first errors.
        """
        v = version or NO_VERSION
        for status in STATUSES:
            for traffic in TRAFFIC:
                labels = {"slot": self.slot, "version": v, "status": status, "traffic": traffic}
                self._requests.labels(**labels)
                self._latency.labels(**labels)
        for outcome in OUTCOMES:
            self._provenance.labels(slot=self.slot, outcome=outcome)
        for kind in FAILURE_KINDS:
            self._failures.labels(slot=self.slot, kind=kind)
        self._cold.labels(slot=self.slot, version=v)


_OBJECTS: dict[str, object] = {}
# writer event -> (help, multiprocess mode): one spool directory per slot, so its size is a max, not a sum
_PROVENANCE_GAUGES = {
    "queue_rows": ("Provenance rows waiting in memory for the writer thread", "livesum"),
    "spool_bytes": ("Bytes in the slot's provenance spool directory (rows MySQL has not got yet)", "livemax"),
    "spool_limit_bytes": ("Cap of the provenance spool directory; rows past it are dropped", "livemax"),
    "spool_oldest_age_seconds": ("Age of the oldest spooled provenance row (0 when the spool is empty)", "livemax"),
    "heartbeat_seconds": ("Unix time of the provenance writer thread's last cycle (oldest live worker)", "livemin"),
}
_GAUGE_NAMES = {"heartbeat_seconds": "provenance_writer_heartbeat_timestamp_seconds"}


def _objects() -> dict:
    """The metric objects, created on first use (after the multiprocess directory is decided)."""
    if not _OBJECTS:
        from prometheus_client import Counter, Gauge, Histogram

        _OBJECTS.update(
            latency=Histogram(
                "recommend_latency_seconds",
                "Time to answer GET /recommend/<user>, by slot, model version, HTTP status and traffic (live|shadow)",
                ["slot", "version", "status", "traffic"],
                buckets=LATENCY_BUCKETS,
            ),
            requests=Counter(
                "recommend_requests_total",
                "Answers to GET /recommend/<user>, by slot, model version, HTTP status and traffic (live|shadow)",
                ["slot", "version", "status", "traffic"],
            ),
            cold=Counter(
                "recommend_cold_start_total",
                "Answers that used the cold-start ranking (unknown user or too few ratings)",
                ["slot", "version"],
            ),
            provenance=Counter(
                "provenance_rows_total",
                "Provenance rows by outcome: written to MySQL, spooled to disk, dead-lettered, dropped",
                ["slot", "outcome"],
            ),
            provenance_failures=Counter(
                "provenance_failures_total",
                "Failures of the provenance writer by kind (MySQL, spool full or unwritable, bad spool file...)",
                ["slot", "kind"],
            ),
            **{
                f"provenance_{name}": Gauge(
                    _GAUGE_NAMES.get(name, f"provenance_{name}"), text, ["slot"], multiprocess_mode=mode
                )
                for name, (text, mode) in _PROVENANCE_GAUGES.items()
            },
            model_refused=Counter(
                "model_load_refused_total",
                "Bundles a worker refused to load (missing, broken, tampered, checksum unlike tracking): it keeps "
                "serving what it had, or answers 503 when it had nothing",
                ["slot", "serving"],  # serving: "yes" while an older version still answers, "no" when none does
            ),
            model_info=Gauge(
                "model_info",
                "1 for each model version a live worker of the slot serves",
                ["slot", "version"],
                multiprocess_mode="livemax",
            ),
        )
    return _OBJECTS


def install_exporter(app: Flask, serving: Serving, version_of_response) -> object:
    """prometheus-flask-exporter on `app`, with `/metrics`; multiprocess when the directory is set.

    ``version_of_response(response) -> str`` labels each request with the version that answered.
    """
    multiproc = ensure_multiproc_dir(serving)
    kwargs = dict(
        group_by="url_rule",
        buckets=LATENCY_BUCKETS,
        default_labels={"slot": serving.slot, "version": version_of_response},
        excluded_paths=["^/metrics$"],
    )
    if multiproc:
        from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

        exporter = GunicornInternalPrometheusMetrics(app, **kwargs)
    else:
        from prometheus_flask_exporter import PrometheusMetrics

        exporter = PrometheusMetrics(app, **kwargs)
    return exporter
