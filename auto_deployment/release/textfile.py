"""The release controller's own metrics, as a Prometheus textfile (issue 11).

A release runs in a short-lived process (the CLI, the retraining run), so it is not scraped itself: like
the pipeline's drift gauges, it writes ``<run>/metrics/release.prom`` (atomically, `app.files`) on every
transition and every analysis interval, and the online-evaluation exporter, which Prometheus already
scrapes, serves every ``*.prom`` of that folder (`auto_deployment.monitor.online_eval.TextfileCollector`).
The Grafana dashboard's "Release" row reads these names:

=============================================  ==============================================================
``release_active``                             1 while a release is in progress, 0 once it is DONE
``release_info{candidate,previous,state,...}`` 1: the release in progress (or the last one) and its state
``release_step{step}``                         1-based index of the traffic step being observed
``release_steps``                              number of steps of the release
``release_canary_weight``                      share of live requests served by the canary (0 in shadow)
``release_shadow``                             1 while every live request is mirrored to the canary
``release_paused``, ``release_awaiting_approval``  1 while paused / waiting for ``release --approve``
``release_check_value{check}``                 each check's value in the last interval (omitted when unknown)
``release_check_limit{check}``                 its limit in that interval (omitted when it had none)
``release_check_verdict{check}``               1 passed, 0 failed, -1 inconclusive
``releases_total{event}``                      releases started, promoted, aborted, failed (counters, kept in
                                               ``<run>/release/counters.json`` across release processes)
=============================================  ==============================================================

The step and weight series are written only once a step's weights are applied, the check series only
while a release is in progress, so a stat panel shows "no data" between releases rather than a stale step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from app.files import write_json_atomic, write_text_atomic
from app.logs import kv
from auto_deployment.release.state import AWAIT_APPROVAL, DONE, OBSERVE, ReleaseState

log = logging.getLogger(__name__)

VERDICT_VALUE = {"passed": 1, "failed": 0, "inconclusive": -1}
EVENTS = ("started", "promoted", "aborted", "failed")


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value))


class _Text:
    """Families in the text exposition format, each with its HELP and TYPE once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, object], float]]) -> None:
        if not samples:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{sample}{_labels(labels)} {_number(value)}" for sample, labels, value in samples]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(state: ReleaseState | None, counts: dict[str, int]) -> str:
    """The textfile of `state` (None: no release has run) with the release counters `counts`."""
    out = _Text()
    active = state is not None and state.state != DONE
    out.family("release_active", "gauge", "1 while a release is in progress", [("release_active", {}, float(active))])
    if state is not None:
        step_names = [s.get("name", "") for s in (state.gate or {}).get("steps") or []]
        info = {"candidate": state.candidate, "previous": state.previous, "state": state.state,
                "outcome": state.outcome or ""}
        out.family("release_info", "gauge", "the release in progress or the last one, and its state",
                   [("release_info", info, 1.0)])
        if state.state in (OBSERVE, AWAIT_APPROVAL) and state.step_started is not None and step_names:
            index = min(state.step, len(step_names) - 1)
            step = (state.gate or {})["steps"][index]
            out.family("release_step", "gauge", "1-based index of the traffic step observed",
                       [("release_step", {"step": step_names[index]}, float(index + 1))])
            out.family("release_steps", "gauge", "number of traffic steps of the release",
                       [("release_steps", {}, float(len(step_names)))])
            weight = 0.0 if step.get("shadow") else float(step.get("share", 0.0))
            out.family("release_canary_weight", "gauge", "share of live requests served by the canary",
                       [("release_canary_weight", {}, weight)])
            out.family("release_shadow", "gauge", "1 while live requests are mirrored to the canary",
                       [("release_shadow", {}, float(bool(step.get("shadow"))))])
        if active:
            out.family("release_paused", "gauge", "1 while the release is paused by hand",
                       [("release_paused", {}, float(state.paused_at is not None))])
            out.family("release_awaiting_approval", "gauge", "1 while the release waits for release --approve",
                       [("release_awaiting_approval", {}, float(state.awaiting_since is not None))])
            checks = state.checks or []
            out.family("release_check_value", "gauge", "each check's value in the last interval",
                       [("release_check_value", {"check": c["name"]}, float(c["value"]))
                        for c in checks if c.get("value") is not None])
            out.family("release_check_limit", "gauge", "each check's limit in the last interval",
                       [("release_check_limit", {"check": c["name"]}, float(c["limit"]))
                        for c in checks if c.get("limit") is not None])
            out.family("release_check_verdict", "gauge", "each check's verdict: 1 passed, 0 failed, -1 inconclusive",
                       [("release_check_verdict", {"check": c["name"]}, float(VERDICT_VALUE[c["status"]]))
                        for c in checks if c.get("status") in VERDICT_VALUE])
    out.family("releases", "counter", "releases started, promoted, aborted and failed",
               [("releases_total", {"event": event}, float(counts.get(event, 0))) for event in EVENTS])
    return out.text()


class ReleaseMetrics:
    """Writes ``<run>/metrics/release.prom``; never raises into the release (a metric is not worth a rollback)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics" / "release.prom"
        self.counts_path = Path(run_dir) / "release" / "counters.json"

    def counts(self) -> dict[str, int]:
        try:
            data: Any = json.loads(self.counts_path.read_text())
            return {event: int(data.get(event, 0)) for event in EVENTS}
        except (OSError, ValueError, TypeError, AttributeError):
            return dict.fromkeys(EVENTS, 0)

    def count(self, state: ReleaseState, event: str) -> None:
        """Add one `event` of this release to the counters, once (the state remembers what it counted)."""
        if event in state.counted:
            return
        counts = self.counts()
        counts[event] = counts.get(event, 0) + 1
        try:
            write_json_atomic(self.counts_path, counts)
        except OSError as exc:
            log.error("release: counters not written", extra=kv(path=self.counts_path, reason=exc))
            return
        state.counted.append(event)

    def write(self, state: ReleaseState | None) -> None:
        try:
            write_text_atomic(self.path, render(state, self.counts()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.error("release: metrics textfile not written", extra=kv(path=self.path, reason=exc))
