"""The quality check as the controller runs it: repeated every interval (its error spread over the looks a release
plans, Bonferroni) and sitting out shadow steps, where no user sees the canary's lists."""

from __future__ import annotations

import pytest
from scipy.stats import norm

from auto_deployment.release.checks import FAILED, PASSED, Check, ProportionCheck
from auto_deployment.release.controller import Analysis
from auto_deployment.release.metrics import Figures
from auto_deployment.release.quality import HITS, LISTS
from auto_deployment.release.steps import Progression, parse_steps
from auto_deployment.release.wiring import spread_checks

QUALITY = ProportionCheck("quality_vs_stable", hits=HITS, sample=LISTS, min_sample=200, label="hit rate vs stable")
LATENCY = Check("latency", metric="latency_ms", op="<", threshold=500.0, min_requests=1)


def fig(hits: float, lists: float) -> Figures:
    return Figures({HITS: hits, LISTS: lists}, "60s")


def test_the_critical_z_is_the_one_sided_quantile_at_the_per_look_level():
    assert QUALITY.critical == pytest.approx(1.6449, abs=1e-4)  # one look: 95 % one-sided
    # 20 looks: 0.05 / 20 = 0.0025 per look, z(0.9975) = 2.807
    assert QUALITY.spread_over(20).critical == pytest.approx(norm.ppf(0.9975), abs=1e-9)
    assert QUALITY.spread_over(20).critical == pytest.approx(2.807, abs=1e-3)
    assert QUALITY.spread_over(0).looks == 1  # never fewer than one look


def test_a_difference_that_fails_one_look_passes_when_the_release_looks_twenty_times():
    # canary 40/400 against stable 240/1600: z = 2.578 by hand (test_quality.test_worse_z_by_hand)
    once = QUALITY.evaluate(fig(40, 400), fig(240, 1600))
    assert once.status == FAILED
    spread = QUALITY.spread_over(20).evaluate(fig(40, 400), fig(240, 1600))
    assert spread.status == PASSED and "<= 2.807: not worse at 95% over 20 looks" in spread.text
    # a clearly worse canary still fails: 20/400 (0.05) against 0.15, z > 5
    assert QUALITY.spread_over(20).evaluate(fig(20, 400), fig(240, 1600)).status == FAILED


def test_live_looks_count_the_intervals_of_the_steps_that_are_not_shadow():
    # steps shadow, 20 %, 50 % over 300 s: 100 s a step; interval 10 s: 10 looks in each of the 2 live steps
    analysis = Analysis(300.0, (LATENCY, QUALITY), Progression(parse_steps("shadow,20,50"), interval_s=10.0))
    assert analysis.live_looks == 20
    # the interval is never more than half a step: 60 s over 4 steps = 15 s steps, interval 7.5 s, 2 looks a step
    short = Analysis(60.0, (QUALITY,), Progression(parse_steps("shadow,5,20,50"), interval_s=60.0))
    assert short.interval_s == 7.5 and short.live_looks == 3 * 2


def test_spread_checks_sets_the_looks_of_statistical_checks_only():
    analysis = spread_checks(Analysis(300.0, (LATENCY, QUALITY), Progression(parse_steps("shadow,20,50"),
                                                                              interval_s=10.0)))
    latency, quality = analysis.checks
    assert latency == LATENCY and quality.looks == 20


def test_live_only_checks_sit_out_a_shadow_step_and_judge_live_ones():
    analysis = Analysis(300.0, (LATENCY, QUALITY), Progression(parse_steps("shadow,20"), interval_s=10.0))
    shadow, live = analysis.progression.steps
    assert analysis.checks_for(shadow) == (LATENCY,)
    assert analysis.checks_for(live) == (LATENCY, QUALITY)
