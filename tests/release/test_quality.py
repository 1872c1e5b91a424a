"""Model quality online as a release check: the one-sided two-proportion z-test against hand-computed values,
and the hit-rate figures of each role from hand-made events (the lists attributed as provenance would)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from scipy.stats import norm

from app.contracts.events import RecommendationEvent, WatchEvent
from app.contracts.topology import Topology
from app.settings import Release
from auto_deployment.release.checks import FAILED, INCONCLUSIVE, PASSED, ProportionCheck, worse_z
from auto_deployment.release.metrics import Figures, NoData
from auto_deployment.release.quality import HITS, LISTS, Quality, QualityFigures, WithQuality


def test_worse_z_by_hand():
    # canary 40 hits of 400 lists (0.10), stable 240 of 1600 (0.15): pooled p = 280/2000 = 0.14,
    # se = sqrt(0.14 · 0.86 · (1/400 + 1/1600)) = sqrt(0.1204 · 0.003125) = 0.019397, z = 0.05 / 0.019397 = 2.578
    z, se = worse_z(40, 400, 240, 1600)
    assert se == pytest.approx(0.019397, abs=1e-6) and z == pytest.approx(2.5777, abs=1e-4)
    # canary 56/400 (0.14): pooled 296/2000 = 0.148, se = sqrt(0.148 · 0.852 · 0.003125) = 0.019851, z = 0.5038
    z, se = worse_z(56, 400, 240, 1600)
    assert se == pytest.approx(0.019851, abs=1e-6) and z == pytest.approx(0.5038, abs=1e-4)
    assert worse_z(0, 300, 0, 300) == (0.0, 0.0)  # nobody watched anything on either side: no difference
    assert worse_z(60, 300, 40, 300)[0] < 0  # a better canary has a negative z


CHECK = ProportionCheck("quality_vs_stable", hits=HITS, sample=LISTS, min_sample=200, label="hit rate vs stable")


def fig(hits: float, lists: float) -> Figures:
    return Figures({HITS: hits, LISTS: lists}, "60s")


def test_the_quality_check_fails_only_a_canary_worse_at_95_percent():
    assert norm.ppf(0.95) == pytest.approx(1.6449, abs=1e-4)
    bad = CHECK.evaluate(fig(40, 400), fig(240, 1600))
    assert bad.status == FAILED and "z = 2.58 > 1.645: worse at 95%" in bad.text
    # its limit is the lowest rate that would not be worse: 0.15 - 1.645 × 0.019397 = 0.1181
    assert bad.value == 0.1 and bad.limit == pytest.approx(0.15 - norm.ppf(0.95) * 0.019397, abs=1e-5)
    close = CHECK.evaluate(fig(56, 400), fig(240, 1600))
    assert close.status == PASSED and "z = 0.50 <= 1.645: not worse at 95%" in close.text
    few = CHECK.evaluate(fig(0, 150), fig(240, 1600))  # even a canary with no hit at all: too few lists yet
    assert few.status == INCONCLUSIVE and "too few lists" in few.text
    assert CHECK.evaluate(fig(40, 400), NoData("down")).status == INCONCLUSIVE
    assert CHECK.evaluate(Figures({}, "60s"), fig(1, 1)).status == INCONCLUSIVE


def test_quality_settings(monkeypatch):
    for name in ("RELEASE_EVENT_LOG", "RELEASE_QUALITY_MIN_LISTS", "RELEASE_QUALITY_CONFIDENCE"):
        monkeypatch.delenv(name, raising=False)
    default = Quality.from_settings(Release.from_env())
    assert (default.event_log, default.min_lists, default.confidence) == (None, 200, 0.95)
    monkeypatch.setenv("RELEASE_EVENT_LOG", "/tmp/events.log")
    monkeypatch.setenv("RELEASE_QUALITY_MIN_LISTS", "50")
    q = Quality.from_settings(Release.from_env())
    assert str(q.event_log) == "/tmp/events.log" and q.check().min_sample == 50


class ByServer:
    """Provenance stand-in: each list's server field names "version/slot"."""

    def attribute(self, recs):
        return [tuple(r.server.split("/")) for r in recs]


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_quality_figures_count_each_roles_lists_and_hits_in_the_window():
    t0 = 1_800_000_000.0
    events = []
    # canary (version 2): 4 lists in the window, one watched; stable (version 1): 3 lists, two watched
    for i, (server, watched) in enumerate([("2/canary", True), ("2/canary", False), ("2/canary", False),
                                           ("2/canary", False), ("1/stable_1", True), ("1/stable_2", True),
                                           ("1/stable_1", False)]):
        user, when = 100 + i, t0 + 10 * i
        events.append(RecommendationEvent(_at(when), user, server, 200, ("m1", "m2"), 3.0))
        if watched:
            events.append(WatchEvent(_at(when + 5), user, "m2", 0))
    events.append(RecommendationEvent(_at(t0 - 500), 99, "2/canary", 200, ("m1",), 3.0))  # before the window
    events.append(RecommendationEvent(_at(t0 + 75), 98, "1/canary", 200, ("m1",), 3.0))  # old version on canary
    quality = QualityFigures(lambda: events, ByServer(), Topology(), settle_s=0.0)
    at = t0 + 100
    assert quality.figures("canary", 2, 200, at).values == {LISTS: 4.0, HITS: 1.0}
    assert quality.figures("stable", 1, 200, at).values == {LISTS: 3.0, HITS: 2.0}

    class Prom:
        def figures(self, role, version, window_s, at=None):
            return Figures({"requests": 10.0}, "200s", at)

    merged = WithQuality(Prom(), quality).figures("canary", 2, 200, at)
    assert merged.values == {"requests": 10.0, LISTS: 4.0, HITS: 1.0}
    assert math.isclose(merged.at, at)
