"""The canary's checks, given as data: each a named criterion on one figure (design section 6).

A check names the figure it judges (a key of `metrics.QUERIES`), how the canary's value must compare
(``<``, ``<=``, ``>``, ``>=``) and with what: a fixed `threshold`, or `vs_stable` times the stable
replicas' value over the same window. `min_requests` is the sample a check needs before it may judge;
below it the check is *inconclusive*, which is never a pass. Adding a check is one entry in the tuple
`default_checks` returns (plus one query in ``metrics.py`` when it needs a new figure), e.g.::

    Check("p99", metric="p99_ms", op="<=", vs_stable=1.5, min_requests=300,
          label="p99 latency", unit=" ms")

`judge` runs every check and names each failed one, so the reason of an abort is complete.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

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

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"check {self.name}: operator {self.op!r} is not one of {', '.join(_OPS)}")
        if (self.threshold is None) == (self.vs_stable is None):
            raise ValueError(f"check {self.name}: give exactly one of threshold or vs_stable")

    def evaluate(self, canary: Figures, stable: Measurement | None) -> CheckResult:
        """This check's verdict on the canary's figures (and stable's, for a comparison)."""
        value = canary.get(self.metric)
        if value is None:
            return self._result(INCONCLUSIVE, None, None, f"{self._label} unknown: no figure {self.metric!r}")
        requests = canary.get("requests") or 0.0
        if requests < self.min_requests:
            return self._result(INCONCLUSIVE, value, None,
                                f"too few canary requests for {self._label}: {requests:.0f} < {self.min_requests}")
        if self.threshold is not None:
            limit, limit_text = float(self.threshold), f"{self.threshold:g}"
        else:
            base = stable.get(self.metric) if isinstance(stable, Figures) else None
            if base is None:
                why = stable.reason if stable is not None and not isinstance(stable, Figures) else "no figure"
                return self._result(INCONCLUSIVE, value, None, f"{self._label}: no stable figure to compare ({why})")
            limit = float(self.vs_stable) * base
            limit_text = f"{self.vs_stable:g} × stable {base:{self.digits}}"
        ok = _OPS[self.op](value, limit)
        template, op = (self.passed_text, self.op) if ok else (self.failed_text, _NEGATED[self.op])
        text = template.format(label=self._label, value=format(value, self.digits), unit=self.unit, op=op,
                               limit=limit_text)
        return self._result(PASSED if ok else FAILED, value, limit, text)

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


def default_checks(release: Release) -> tuple[Check, ...]:
    """The card's gate: average latency < 500 ms, error ratio <= 1%, at least 20 requests (settings)."""
    return (
        Check("latency", metric="latency_ms", op="<", threshold=release.max_latency_ms,
              label="average latency", unit=" ms"),
        Check("error_ratio", metric="error_ratio", op="<=", threshold=release.max_error_ratio,
              label="error ratio", digits=".4f"),
        Check("requests", metric="requests", op=">=", threshold=release.min_requests, digits=".0f",
              passed_text="{value} requests {op} {limit}", failed_text="too few canary requests: {value} {op} {limit}"),
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
