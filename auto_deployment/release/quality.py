"""Model quality online for the release checks: the canary's lists against the stable slots' lists.

What the release exists for is better lists, so a canary is also judged by what users did after its
lists: the event log's recommendation lines joined with the same users' later watch lines, each list
attributed by provenance (the ``reccom`` row that served it: version and slot) exactly as ``report
online`` does (`auto_deployment.monitor.online_eval`, reused, not re-implemented). Over the analysis
window, `QualityFigures` counts per role the settled lists (``quality_lists``) and those followed by a
watched listed movie (``quality_hits``); `checks.ProportionCheck` compares the two hit rates with a
one-sided two-proportion z-test. `WithQuality` adds these figures to Prometheus's.

Enabled by ``RELEASE_EVENT_LOG`` (the simulator's / clients' event log; empty = no quality check);
``RELEASE_QUALITY_MIN_LISTS`` (200) is the fewest lists per side before the test may judge.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.contracts.events import RateEvent, RecommendationEvent, WatchEvent
from app.contracts.topology import Topology
from app.logs import kv
from auto_deployment.monitor.online_eval import Attributor, _ts, evaluate_lists, read_events
from auto_deployment.release.checks import ProportionCheck
from auto_deployment.release.metrics import Figures, Measurement, MetricsQuery, NoData

log = logging.getLogger(__name__)

Event = RecommendationEvent | WatchEvent | RateEvent
LISTS, HITS = "quality_lists", "quality_hits"
TAIL_MB = 64.0  # the end of the event log that is read each interval (hours of lists at the demo's rates)


@dataclass(frozen=True)
class Quality:
    """Settings (env, read once at the edge by `wiring.ReleaseSettings.from_env`)."""

    event_log: Path | None = None  # RELEASE_EVENT_LOG; None: no quality check
    min_lists: int = 200  # RELEASE_QUALITY_MIN_LISTS
    confidence: float = 0.95  # RELEASE_QUALITY_CONFIDENCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Quality:
        env = os.environ if environ is None else environ
        path = env.get("RELEASE_EVENT_LOG", "").strip()
        try:
            return cls(Path(path) if path else None, int(env.get("RELEASE_QUALITY_MIN_LISTS", "200")),
                       float(env.get("RELEASE_QUALITY_CONFIDENCE", "0.95")))
        except ValueError as exc:
            raise ValueError(f"release quality settings: {exc}") from exc

    def check(self) -> ProportionCheck:
        return ProportionCheck("quality_vs_stable", hits=HITS, sample=LISTS, min_sample=self.min_lists,
                               confidence=self.confidence, label="hit rate vs stable")


def log_events(path: Path, megabytes: float = TAIL_MB) -> Callable[[], Iterable[Event]]:
    """The events of the last `megabytes` of the log at `path`, read anew at each call."""

    def read() -> Iterable[Event]:
        with open(path, encoding="utf-8", errors="replace") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > megabytes * 1024 * 1024:
                fh.seek(size - int(megabytes * 1024 * 1024))
                fh.readline()  # from a whole line on
            return list(read_events(fh))

    return read


class QualityFigures:
    """Hit rate figures of one role and version over a window, from the event log and provenance."""

    def __init__(self, events: Callable[[], Iterable[Event]], attributor: Attributor, topology: Topology,
                 settle_s: float = 10.0) -> None:
        self.events = events
        self.attributor = attributor
        self.topology = topology
        self.settle_s = settle_s

    def figures(self, role: str, version: int, window_s: float, at: float) -> Measurement:
        try:
            recs, outcomes = evaluate_lists(self.events(), settle_s=self.settle_s, now=at)
        except OSError as exc:
            return NoData(f"event log unreadable: {exc}")
        chosen = [(rec, out) for rec, out in zip(recs, outcomes, strict=True) if at - window_s <= _ts(rec.time) <= at]
        groups = self.attributor.attribute([rec for rec, _ in chosen])
        slots = {s.name for s in self.topology.slots if s.role == role}
        mine = [out for (rec_version, slot), (_, out) in zip(groups, chosen, strict=True)
                if slot in slots and rec_version == str(version)]
        return Figures({LISTS: float(len(mine)), HITS: float(sum(o.hit for o in mine))}, f"{window_s:.0f}s", at)


class WithQuality:
    """Prometheus's figures plus the quality figures (missing ones leave the quality check inconclusive)."""

    def __init__(self, metrics: MetricsQuery, quality: QualityFigures) -> None:
        self.metrics = metrics
        self.quality = quality

    def figures(self, role: str, version: int, window_s: float, at: float | None = None) -> Measurement:
        base = self.metrics.figures(role, version, window_s, at)
        if not isinstance(base, Figures):
            return base
        extra = self.quality.figures(role, version, window_s, base.at)
        if not isinstance(extra, Figures):
            log.warning("release: no quality figures", extra=kv(role=role, version=version, reason=extra.reason))
            return base
        return Figures({**base.values, **extra.values}, base.window, base.at)

