"""Model quality online for the release checks: the canary's lists against the stable slots' lists.

What the release exists for is better lists, so a canary is also judged by what users did after its
lists: the event log's recommendation lines joined with the same users' later watch lines, each list
attributed by provenance (the ``reccom`` row that served it: version and slot) exactly as ``report
online`` does (`auto_deployment.monitor.online_eval`, reused, not re-implemented). Over the analysis
window, `QualityFigures` counts per role the settled lists (``quality_lists``) and those followed by a
watched listed movie (``quality_hits``); `checks.ProportionCheck` compares the two hit rates with a
one-sided two-proportion z-test. `WithQuality` adds these figures to Prometheus's.

Enabled by ``RELEASE_EVENT_LOG`` (the simulator's / clients' event log; empty = no quality check);
``RELEASE_QUALITY_MIN_LISTS`` (200) is the fewest lists per side before the test may judge. Both are
read with the other release settings in `app.settings.Release`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from app.contracts.events import RateEvent, RecommendationEvent, WatchEvent
from app.contracts.topology import Topology
from app.logs import kv
from app.settings import Release
from auto_deployment.monitor.online_eval import Attributor, _ts, evaluate_lists, read_events
from auto_deployment.release.checks import ProportionCheck
from auto_deployment.release.metrics import Figures, Measurement, MetricsQuery, NoData

log = logging.getLogger(__name__)

Event = RecommendationEvent | WatchEvent | RateEvent
LISTS, HITS = "quality_lists", "quality_hits"
TAIL_MB = 64.0  # the end of the event log that is read each interval (hours of lists at the demo's rates)


@dataclass(frozen=True)
class Quality:
    """Settings (`app.settings.Release`, read once at the edge by `wiring.ReleaseSettings.from_env`)."""

    event_log: Path | None = None  # RELEASE_EVENT_LOG; None: no quality check
    min_lists: int = 200  # RELEASE_QUALITY_MIN_LISTS
    confidence: float = 0.95  # RELEASE_QUALITY_CONFIDENCE

    @classmethod
    def from_settings(cls, release: Release) -> Quality:
        path = release.event_log.strip()
        return cls(Path(path) if path else None, release.quality_min_lists, release.quality_confidence)

    def check(self) -> ProportionCheck:
        return ProportionCheck("quality_vs_stable", hits=HITS, sample=LISTS, min_sample=self.min_lists,
                               confidence=self.confidence, label="hit rate vs stable")


def log_events(path: Path, megabytes: float = TAIL_MB) -> Callable[[], Iterable[Event]]:
    """The events of the last `megabytes` of the log at `path`, at each call.

    Only the whole lines appended since the previous call are parsed: the analysis reads the log every
    interval, twice (canary and stable), and parsing the whole tail again took seconds per interval at
    20 sessions/s (bench release). A log that shrank (rotated, truncated) is read anew.
    """
    limit = int(megabytes * 1024 * 1024)
    kept: deque[tuple[int, Event]] = deque()  # (bytes of its line, event), oldest first
    seen = {"offset": 0, "bytes": 0}

    def read() -> Iterable[Event]:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < seen["offset"] or size - seen["offset"] > limit:  # rotated, or more new than the tail
                kept.clear()
                seen.update(offset=max(0, size - limit), bytes=0)
                if seen["offset"]:
                    fh.seek(seen["offset"] - 1)
                    seen["offset"] += len(fh.readline()) - 1  # from a whole line on
            fh.seek(seen["offset"])
            data = fh.read(size - seen["offset"])
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        seen["offset"] += len(whole)
        for line in whole.splitlines(keepends=True):
            for event in read_events([line.decode("utf-8", errors="replace")]):
                kept.append((len(line), event))
                seen["bytes"] += len(line)
        while seen["bytes"] > limit and kept:
            seen["bytes"] -= kept.popleft()[0]
        return [event for _, event in kept]

    return read


class QualityFigures:
    """Hit rate figures of one role and version over a window, from the event log and provenance."""

    def __init__(self, events: Callable[[], Iterable[Event]], attributor: Attributor, topology: Topology,
                 settle_s: float = 10.0) -> None:
        self.events = events
        self.attributor = attributor
        self.topology = topology
        self.settle_s = settle_s
        self._last: tuple[tuple[float, float], list, list] | None = None  # one interval's lists, for both roles

    def figures(self, role: str, version: int, window_s: float, at: float) -> Measurement:
        if self._last is not None and self._last[0] == (at, window_s):
            chosen, groups = self._last[1], self._last[2]
        else:
            try:
                recs, outcomes = evaluate_lists(self.events(), settle_s=self.settle_s, now=at)
            except OSError as exc:
                return NoData(f"event log unreadable: {exc}")
            chosen = [(rec, out) for rec, out in zip(recs, outcomes, strict=True)
                      if at - window_s <= _ts(rec.time) <= at]
            groups = self.attributor.attribute([rec for rec, _ in chosen])
            self._last = ((at, window_s), chosen, groups)
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

