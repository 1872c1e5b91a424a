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
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import beta

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
        if ok and few:  # a small sample may show a failure, never a pass
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


def default_checks(release: Release) -> tuple[Check, ...]:
    """The card's gate and its baseline (settings): average latency < 500 ms and no worse than stable's ×
    `latency_vs_stable` (+ a noise floor), 5xx ratio <= 1% with `confidence`. The latency checks need
    `min_requests` answers (an average of a handful means little); the error check derives its own sample.
    """
    return (
        Check("latency", metric="latency_ms", op="<", threshold=release.max_latency_ms,
              min_requests=release.min_requests, label="average latency", unit=" ms"),
        Check("latency_vs_stable", metric="latency_ms", op="<=", vs_stable=release.latency_vs_stable,
              slack=release.latency_slack_ms, min_requests=release.min_requests,
              label="average latency vs stable", unit=" ms", digits=".2f"),
        Check("error_ratio", metric="error_ratio", op="<=", threshold=release.max_error_ratio,
              count="errors", confidence=release.confidence, label="5xx ratio", digits=".4f"),
    )


def judge(checks: Iterable[Check], canary: Measurement, stable: Measurement | None = None) -> Verdict:
    """Run every check on the canary's figures: (pass?, why, each result). No data is never a pass."""
    if not isinstance(canary, Figures):
        return Verdict(False, f"no data from Prometheus: {canary.reason}")
    results = [check.evaluate(canary, stable) for check in checks]
    failures = [r.text for r in results if r.status != PASSED]
    if failures:
        return Verdict(False, "; ".join(failures), results)
    return Verdict(True, ", ".join(r.text for r in results), results)
