"""The arithmetic of the checks on hand-made figures: the 5xx ratio's confidence bound and the baseline comparison.

Hand-computed references: with 0 failures in n requests the one-sided 95% Clopper–Pearson bound is
1 - 0.05^(1/n), so a 1% limit needs n >= ln(0.05)/ln(0.99) = 298.07 → 299; with 1 failure in 100 the
bound p solves (1-p)^100 + 100 p (1-p)^99 = 0.05 → p = 0.04656; with 3 in 1000 it is close to the
Poisson bound 7.754/1000.
"""

from __future__ import annotations

import math

import pytest
from scipy.stats import binom

from app.settings import Release
from auto_deployment.release.checks import (
    INCONCLUSIVE,
    PASSED,
    Tail,
    clean_sample,
    default_checks,
    judge,
    upper_bound,
)
from auto_deployment.release.metrics import Figures, NoData

GATE = Release(observe_s=1.0, max_latency_ms=500, max_error_ratio=0.01, min_requests=20, runtime="native",
               slot_urls="", deploy_timeout_s=30)


def figures(**values: float) -> Figures:
    return Figures({"latency_ms": 12.0, "p99_ms": 20.0, "error_ratio": 0.0, "requests": 400.0, "errors": 0.0,
                    **values}, "30s")


def by_name(verdict) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.text) for r in verdict.results}


@pytest.mark.parametrize(("failures", "requests", "expected"), [
    (0, 1, 0.95),
    (0, 20, 1 - 0.05 ** (1 / 20)),  # 0.1391: 20 clean requests only say "under 14%"
    (0, 298, 0.0100031),
    (0, 299, 0.0099695),
    (1, 100, 0.04656),
    (3, 1000, 0.007724),
])
def test_upper_bound_is_clopper_pearson(failures, requests, expected):
    bound = upper_bound(failures, requests, 0.95)
    assert bound == pytest.approx(expected, rel=2e-3)
    assert binom.cdf(failures, requests, bound) == pytest.approx(0.05, abs=1e-6)  # the bound's definition


def test_clean_sample_for_a_one_percent_limit_is_299():
    assert math.log(0.05) / math.log(0.99) == pytest.approx(298.07, abs=0.01)
    assert clean_sample(0.01, 0.95) == 299
    assert upper_bound(0, 298) > 0.01 >= upper_bound(0, 299)
    assert clean_sample(0.05, 0.95) == 59 and clean_sample(0.01, 0.99) == 459
    assert upper_bound(0, 0) == 1.0 and upper_bound(5, 5) == 1.0


def test_too_few_clean_requests_are_inconclusive_never_a_pass():
    checks = default_checks(GATE, Tail(p99_min_requests=200))  # here only the 5xx ratio's sample is short
    stable = figures(requests=2000.0)
    few = judge(checks, figures(requests=298.0), stable)
    assert not few.passed
    status, text = by_name(few)["error_ratio"]
    assert status == INCONCLUSIVE
    assert "too few requests to claim it: 95% upper bound 0.0100 > 0.01 over 298 requests" in text
    assert "it takes 299" in text
    assert few.reason == text  # the only check that is not passed decides the abort
    enough = judge(checks, figures(requests=299.0), stable)
    assert enough.passed, enough.reason
    assert by_name(enough)["error_ratio"] == (
        PASSED, "5xx ratio 0.0000 <= 0.01 (95% upper bound 0.0100 over 299 requests)")


def test_a_canary_failing_ten_percent_of_twenty_requests_is_not_promoted():
    # the case: 20 requests that all succeeded (0.9^20 = 12% of such canaries) no longer pass
    verdict = judge(default_checks(GATE), figures(requests=20.0), figures(requests=2000.0))
    assert not verdict.passed and by_name(verdict)["error_ratio"][0] == INCONCLUSIVE


def test_an_observed_5xx_ratio_over_the_limit_fails_at_once_whatever_the_sample():
    verdict = judge(default_checks(GATE), figures(requests=20.0, errors=2.0, error_ratio=0.1), figures())
    assert by_name(verdict)["error_ratio"] == ("failed", "5xx ratio 0.1000 > 0.01")
    assert verdict.status == "failed"  # the p99's sample is too small to say anything: the failure decides
    assert verdict.reason == "too few canary requests for p99 latency vs stable: 20 < 300; 5xx ratio 0.1000 > 0.01"


def test_a_ratio_within_the_limit_with_failures_needs_more_than_the_clean_sample():
    # 1% observed over 1000 requests: the bound (0.0169) is over the limit, so it may not pass yet
    verdict = judge(default_checks(GATE), figures(requests=1000.0, errors=10.0, error_ratio=0.01), figures())
    assert by_name(verdict)["error_ratio"][0] == INCONCLUSIVE
    ok = judge(default_checks(GATE), figures(requests=5000.0, errors=10.0, error_ratio=0.002), figures())
    assert ok.passed, ok.reason


def test_canary_latency_is_compared_with_stable_times_the_factor_plus_the_noise_floor():
    checks = default_checks(GATE)  # factor 1.5, slack 5 ms
    passed = judge(checks, figures(latency_ms=34.0), figures(latency_ms=20.0))
    assert by_name(passed)["latency_vs_stable"] == (
        PASSED, "average latency vs stable 34.00 ms <= 1.5 × stable 20.00 ms + 5 ms")
    slow = judge(checks, figures(latency_ms=36.0), figures(latency_ms=20.0))
    assert not slow.passed
    assert slow.reason == "average latency vs stable 36.00 ms > 1.5 × stable 20.00 ms + 5 ms"
    # sub-millisecond handlers: twice as slow is scheduler noise, inside the floor
    assert judge(checks, figures(latency_ms=0.09), figures(latency_ms=0.04)).passed


def test_stable_without_figures_or_sample_makes_the_comparison_inconclusive_and_blocks_promotion():
    checks = default_checks(GATE)
    down = judge(checks, figures(), NoData("Prometheus answered HTTP 503"))
    assert not down.passed
    assert by_name(down)["latency_vs_stable"] == (
        INCONCLUSIVE, "average latency vs stable: no stable figure to compare (Prometheus answered HTTP 503)")
    idle = judge(checks, figures(), figures(requests=3.0))
    assert not idle.passed
    assert by_name(idle)["latency_vs_stable"] == (
        INCONCLUSIVE, "too few stable requests for average latency vs stable: 3 < 20")


def test_the_new_settings_have_defaults_and_environment_variables(monkeypatch):
    assert (GATE.confidence, GATE.latency_vs_stable, GATE.latency_slack_ms) == (0.95, 1.5, 5.0)
    monkeypatch.setenv("RELEASE_LATENCY_VS_STABLE", "1.2")
    monkeypatch.setenv("RELEASE_CONFIDENCE", "0.99")
    monkeypatch.setenv("RELEASE_LATENCY_SLACK_MS", "0")
    release = Release.from_env()
    assert (release.confidence, release.latency_vs_stable, release.latency_slack_ms) == (0.99, 1.2, 0.0)


def test_a_small_sample_can_fail_a_check_but_never_pass_it():
    # a slow canary that NGINX stopped sending to after its timeouts: 8 answers, all 700 ms
    slow = judge(default_checks(GATE), figures(requests=8.0, latency_ms=700.0), figures(latency_ms=20.0))
    assert by_name(slow)["latency"] == ("failed", "average latency 700.0 ms >= 500 ms")
    fast = judge(default_checks(GATE), figures(requests=8.0, latency_ms=3.0), figures(latency_ms=20.0))
    assert by_name(fast)["latency"] == (INCONCLUSIVE, "too few canary requests for average latency: 8 < 20")
    assert not fast.passed


def test_p99_is_compared_with_stable_by_a_ratio_and_a_noise_floor():
    checks = default_checks(GATE)  # p99 at most 2 × stable + 10 ms, from 300 answers on
    stable = figures(p99_ms=30.0)
    ok = by_name(judge(checks, figures(p99_ms=70.0), stable))["p99_vs_stable"]
    assert ok == (PASSED, "p99 latency vs stable 70.00 ms <= 2 × stable 30.00 ms + 10 ms")  # limit 70
    slow = by_name(judge(checks, figures(p99_ms=70.01), stable))["p99_vs_stable"]
    assert slow[0] == "failed" and "> 2 × stable 30.00 ms + 10 ms" in slow[1]
    few = by_name(judge(checks, figures(p99_ms=1.0, requests=299.0), stable))["p99_vs_stable"]
    assert few == (INCONCLUSIVE, "too few canary requests for p99 latency vs stable: 299 < 300")
    # a p99 of a small sample is its few slowest answers (a cold start): it cannot fail either, unlike an average
    cold = by_name(judge(checks, figures(p99_ms=700.0, latency_ms=700.0, requests=50.0), stable))
    assert cold["p99_vs_stable"][0] == INCONCLUSIVE and cold["latency"][0] == "failed"


def test_p99_settings_have_documented_defaults_and_read_the_environment(monkeypatch):
    for name in ("RELEASE_P99_VS_STABLE", "RELEASE_P99_SLACK_MS", "RELEASE_P99_MIN_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    assert Tail.from_settings(Release.from_env()) == Tail(2.0, 10.0, 300)
    monkeypatch.setenv("RELEASE_P99_VS_STABLE", "1.25")
    monkeypatch.setenv("RELEASE_P99_MIN_REQUESTS", "50")
    assert Tail.from_settings(Release.from_env()) == Tail(1.25, 10.0, 50)
