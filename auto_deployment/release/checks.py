"""The canary's checks, given as data: each a named criterion on one figure (design section 6).

A check names the figure it judges (a key of `metrics.QUERIES`), how the canary's value must compare
(``<``, ``<=``, ``>``, ``>=``) and with what: a fixed `threshold`, or `vs_stable` times the stable
replicas' value over the same window. `min_requests` is the sample a check needs before it may pass;
below it a value within the limit is *inconclusive*, which is never a pass, while a value over it fails
(eight answers all slower than 500 ms are a slow canary: the safe direction needs no large sample).
Adding a check is one entry in the tuple `default_checks` returns (plus one query in ``metrics.py``
when it needs a new figure), e.g.::

    Check("p99", metric="p99_ms", op="<=", vs_stable=1.5, min_requests=300,
          label="p99 latency", unit=" ms")

A ratio of failures can also be judged by its one-sided upper confidence bound (`count` names the
figure of failures, `confidence` the level): it passes only if the bound is within the limit, so "the
canary fails less than 1% of its requests" is claimed with 95% confidence, never from a lucky handful.
The bound is Clopper–Pearson's (exact, conservative): with k failures in n requests it is the
`confidence` quantile of Beta(k + 1, n - k); for k = 0 that is ``1 - (1 - confidence) ** (1 / n)``, so
claiming < 1% at 95% takes n >= ln(0.05) / ln(0.99) = 298.07, i.e. 299 clean requests (`clean_sample`).
Fewer is *inconclusive*; an observed ratio over the limit fails at once, whatever the sample.

`judge` runs every check and names each failed one, so the reason of an abort is complete. An
inconclusive check blocks promotion like a failed one (at the end of the window the release aborts
with the check's reason): that includes a comparison with stable when stable has no figures, since
"no worse than stable" cannot be claimed without them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scipy.stats import beta, norm

from app.settings import Release
from auto_deployment.release.metrics import Figures, Measurement

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}


@dataclass(frozen=True)
class Check:
    """One criterion: the canary's `metric` `op` (`threshold` | `vs_stable` × stable's `metric`)."""

    name: str
    metric: str
    op: str
    threshold: float | None = None
    vs_stable: float | None = None
    min_requests: int = 0
    label: str = ""  # words of the verdict ("average latency"); the name when empty
    unit: str = ""  # appended to the numbers (" ms")
    digits: str = ".1f"  # format of the measured value
    passed_text: str = "{label} {value}{unit} {op} {limit}{unit}"
    failed_text: str = "{label} {value}{unit} {op} {limit}{unit}"
    count: str | None = None  # figure of failures: `metric` (a ratio of `requests`) is judged by its upper bound
    confidence: float = 0.95  # level of that bound
    slack: float = 0.0  # added to a `vs_stable` limit: a difference below it is noise, not a regression
    fail_needs_sample: bool = False  # a tail (p99) of a small sample is its maximum: below `min_requests` it
    # can neither pass nor fail (an average or a ratio over the limit fails whatever the sample)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"check {self.name}: operator {self.op!r} is not one of {', '.join(_OPS)}")
        if (self.threshold is None) == (self.vs_stable is None):
            raise ValueError(f"check {self.name}: give exactly one of threshold or vs_stable")
        if self.count is not None and (self.op not in ("<", "<=") or self.threshold is None):
            raise ValueError(f"check {self.name}: an upper confidence bound needs < or <= and a threshold")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"check {self.name}: confidence {self.confidence} is not between 0 and 1")

    def evaluate(self, canary: Figures, stable: Measurement | None) -> CheckResult:
        """This check's verdict on the canary's figures (and stable's, for a comparison)."""
        value = canary.get(self.metric)
        if value is None:
            return self._result(INCONCLUSIVE, None, None, f"{self._label} unknown: no figure {self.metric!r}")
        requests = canary.get("requests") or 0.0
        few = (f"too few canary requests for {self._label}: {requests:.0f} < {self.min_requests}"
               if requests < self.min_requests else "")
        if self.threshold is not None:
            limit, limit_text = float(self.threshold), f"{self.threshold:g}"
        else:
            base = stable.get(self.metric) if isinstance(stable, Figures) else None
            if base is None:
                why = stable.reason if stable is not None and not isinstance(stable, Figures) else "no figure"
                return self._result(INCONCLUSIVE, value, None, f"{self._label}: no stable figure to compare ({why})")
            stable_requests = stable.get("requests") or 0.0
            if stable_requests < self.min_requests:
                return self._result(INCONCLUSIVE, value, None, f"too few stable requests for {self._label}: "
                                                               f"{stable_requests:.0f} < {self.min_requests}")
            limit = float(self.vs_stable) * base + self.slack
            limit_text = f"{self.vs_stable:g} × stable {base:{self.digits}}"
            if self.slack:
                limit_text += f"{self.unit} + {self.slack:g}"
        ok = _OPS[self.op](value, limit)
        template, op = (self.passed_text, self.op) if ok else (self.failed_text, _NEGATED[self.op])
        text = template.format(label=self._label, value=format(value, self.digits), unit=self.unit, op=op,
                               limit=limit_text)
        if few and (ok or self.fail_needs_sample):  # a small sample may show a failure, never a pass
            return self._result(INCONCLUSIVE, value, limit, few)
        if ok and self.count is not None:
            return self._bounded(value, limit, text, canary.get(self.count), requests)
        return self._result(PASSED if ok else FAILED, value, limit, text)

    def _bounded(self, value: float, limit: float, text: str, failures: float | None, requests: float) -> CheckResult:
        """An observed ratio within the limit passes only if its upper confidence bound is too."""
        if failures is None:
            return self._result(INCONCLUSIVE, value, limit, f"{self._label} unknown: no figure {self.count!r}")
        bound = upper_bound(failures, requests, self.confidence)
        level = f"{100 * self.confidence:g}%"
        if _OPS[self.op](bound, limit):
            return self._result(PASSED, value, limit,
                                f"{text} ({level} upper bound {bound:.4f} over {requests:.0f} requests)")
        need = clean_sample(limit, self.confidence)
        return self._result(INCONCLUSIVE, value, limit,
                            f"{text} but too few requests to claim it: {level} upper bound {bound:.4f} "
                            f"{_NEGATED[self.op]} {limit:g} over {requests:.0f} requests "
                            f"({failures:.0f} failed; with none failed it takes {need})")

    @property
    def _label(self) -> str:
        return self.label or self.name

    def _result(self, status: str, value: float | None, limit: float | None, text: str) -> CheckResult:
        return CheckResult(self.name, status, value, limit, text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """What one check found: kept in the state file, shown by `release --status` and in notices."""

    name: str
    status: str  # passed | failed | inconclusive
    value: float | None
    limit: float | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The analysis: promote only when every check passed; `reason` names every other one."""

    passed: bool
    reason: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        """passed; failed when any check failed (a small sample may show a failure); else inconclusive
        (no data, too small a sample): what `steps.next_move` judges an interval by."""
        if self.passed:
            return PASSED
        return FAILED if any(r.status == FAILED for r in self.results) else INCONCLUSIVE


def upper_bound(failures: float, requests: float, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound of a failure ratio: exact, so small samples are never flattered.

    Beta(k + 1, n - k)'s `confidence` quantile; with k = 0 it is ``1 - (1 - confidence) ** (1 / n)``.
    Prometheus's ``increase()`` extrapolates, so k and n may be fractional: the Beta distribution takes them.
    """
    if requests <= 0:
        return 1.0
    k = min(max(failures, 0.0), requests)
    if k >= requests:
        return 1.0
    return float(beta.ppf(confidence, k + 1.0, requests - k))


def clean_sample(limit: float, confidence: float = 0.95) -> int:
    """Fewest requests, none failed, whose upper bound is within `limit`: 299 for 1% at 95%."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - limit))


@dataclass(frozen=True)
class ProportionCheck:
    """The canary's share of successes (`hits` of `sample`) must not be *significantly* below stable's.

    Used for model quality online (``quality.py``): a list is a success when its user watched a listed movie
    afterwards (the hit rate of ``report online``). One-sided two-proportion z-test with the pooled rate
    (`worse_z`): each list is one Bernoulli outcome and both samples are hundreds of lists, where the normal
    approximation is sound, the statistic is closed-form and checkable by hand, and its limit can be shown as
    a rate. (Mann–Whitney would suit the per-list score, but that score is mostly zeros — nothing watched —
    and ties make its p-value an approximation too, with nothing gained for a yes/no outcome.) It fails when
    z > z(`confidence`) (1.645 at 95 %): the canary is worse with that confidence. Below `min_sample` lists
    on either side it is inconclusive, never a pass.

    The test is repeated every interval on a growing sample, and each look is another chance to abort a canary as
    good as stable (bench release: 3 of 10 equal canaries aborted at 95 % per look). `looks` is how many times a
    release may run it (`Analysis.live_looks`); each look tests at 1 - (1 - confidence) / looks (Bonferroni), so
    the chance that this check wrongly aborts a release stays within 1 - confidence. Conservative, since the looks
    share most of their data; a sequential boundary would be sharper, Bonferroni is the one checkable by hand.
    `live_only`: the canary serves no user in a shadow step, so it has no lists to judge there and the check
    sits the step out instead of holding it.
    """

    name: str
    hits: str
    sample: str
    min_sample: int
    confidence: float = 0.95
    label: str = ""
    looks: int = 1
    live_only: bool = True

    @property
    def critical(self) -> float:
        """The z a look must exceed to fail: the one-sided quantile at the per-look level."""
        return float(norm.ppf(1.0 - (1.0 - self.confidence) / max(1, self.looks)))

    def spread_over(self, looks: int) -> ProportionCheck:
        """The same check with its error rate spread over `looks` looks."""
        return replace(self, looks=max(1, int(looks)))

    def evaluate(self, canary: Figures, stable: Measurement | None) -> CheckResult:
        label = self.label or self.name
        hits_c, n_c = canary.get(self.hits), canary.get(self.sample)
        if hits_c is None or n_c is None:
            return CheckResult(self.name, INCONCLUSIVE, None, None, f"{label} unknown: no figure {self.sample!r}")
        if not isinstance(stable, Figures) or stable.get(self.hits) is None or stable.get(self.sample) is None:
            return CheckResult(self.name, INCONCLUSIVE, None, None, f"{label}: no stable figure to compare")
        hits_s, n_s = float(stable[self.hits]), float(stable[self.sample])
        rate_c = hits_c / n_c if n_c else None
        if n_c < self.min_sample or n_s < self.min_sample:
            return CheckResult(self.name, INCONCLUSIVE, rate_c, None,
                               f"too few lists for {label}: canary {n_c:.0f}, stable {n_s:.0f} < {self.min_sample}")
        z, se = worse_z(hits_c, n_c, hits_s, n_s)
        critical = self.critical
        rate_s = hits_s / n_s
        floor = rate_s - critical * se  # the lowest canary rate not significantly worse
        level = f"{100 * self.confidence:g}%" + (f" over {self.looks} looks" if self.looks > 1 else "")
        text = (f"{label} {rate_c:.3f} over {n_c:.0f} lists vs stable {rate_s:.3f} over {n_s:.0f} "
                f"(one-sided z = {z:.2f}")
        if z > critical:
            return CheckResult(self.name, FAILED, rate_c, floor, f"{text} > {critical:.3f}: worse at {level})")
        return CheckResult(self.name, PASSED, rate_c, floor, f"{text} <= {critical:.3f}: not worse at {level})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worse_z(hits_c: float, n_c: float, hits_s: float, n_s: float) -> tuple[float, float]:
    """(z, standard error) of "the canary's rate is below stable's", pooled: z = (p_s - p_c) / se,
    se = sqrt(p (1 - p) (1/n_c + 1/n_s)) with p = (hits_c + hits_s) / (n_c + n_s). Equal rates of 0 or 1: z = 0."""
    pooled = (hits_c + hits_s) / (n_c + n_s)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_c + 1.0 / n_s))
    if se == 0.0:
        return 0.0, 0.0
    return (hits_s / n_s - hits_c / n_c) / se, se


@dataclass(frozen=True)
class Tail:
    """The p99 comparison with stable (`app.settings.Release`, read once by `wiring.ReleaseSettings.from_env`)."""

    p99_vs_stable: float = 2.0  # RELEASE_P99_VS_STABLE: canary p99 at most stable's × this ...
    p99_slack_ms: float = 10.0  # RELEASE_P99_SLACK_MS: ... + this (a p99 within one bucket of a few ms is noise)
    p99_min_requests: int = 300  # RELEASE_P99_MIN_REQUESTS: below, a p99 is the max of a handful (3 of 300
    # answers may be slow before p99 moves: a few cold or preempted requests are not a regression)

    @classmethod
    def from_settings(cls, release: Release) -> Tail:
        """The p99 settings of `app.settings.Release` (read once at the edge)."""
        return cls(release.p99_vs_stable, release.p99_slack_ms, release.p99_min_requests)


def default_checks(release: Release, tail: Tail | None = None) -> tuple[Check, ...]:
    """The card's gate and its baseline (settings): average latency < 500 ms and no worse than stable's ×
    `latency_vs_stable` (+ a noise floor), p99 no worse than stable's × `tail.p99_vs_stable` (+ its floor),
    5xx ratio <= 1% with `confidence`. The latency checks need `min_requests` answers (an average of a
    handful means little), the p99 `tail.p99_min_requests`; the error check derives its own sample.
    """
    tail = tail or Tail()
    return (
        Check("latency", metric="latency_ms", op="<", threshold=release.max_latency_ms,
              min_requests=release.min_requests, label="average latency", unit=" ms"),
        Check("latency_vs_stable", metric="latency_ms", op="<=", vs_stable=release.latency_vs_stable,
              slack=release.latency_slack_ms, min_requests=release.min_requests,
              label="average latency vs stable", unit=" ms", digits=".2f"),
        Check("p99_vs_stable", metric="p99_ms", op="<=", vs_stable=tail.p99_vs_stable, slack=tail.p99_slack_ms,
              min_requests=max(tail.p99_min_requests, release.min_requests), label="p99 latency vs stable",
              unit=" ms", digits=".2f", fail_needs_sample=True),
        Check("error_ratio", metric="error_ratio", op="<=", threshold=release.max_error_ratio,
              count="errors", confidence=release.confidence, label="5xx ratio", digits=".4f"),
    )


def judge(checks: Iterable[Check | ProportionCheck], canary: Measurement, stable: Measurement | None = None) -> Verdict:
    """Run every check on the canary's figures: (pass?, why, each result). No data is never a pass."""
    if not isinstance(canary, Figures):
        return Verdict(False, f"no data from Prometheus: {canary.reason}")
    results = [check.evaluate(canary, stable) for check in checks]
    failures = [r.text for r in results if r.status != PASSED]
    if failures:
        return Verdict(False, "; ".join(failures), results)
    return Verdict(True, ", ".join(r.text for r in results), results)
