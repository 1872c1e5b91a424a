"""What Prometheus says about a slot over a window: average latency, error ratio, request count.

The release gate (design section 6) asks about the canary serving the candidate version over the
observation window: ``rate()`` over the window, never a lifetime average, and filtered by the
version label so that requests the canary answered with the old model before the deploy do not
count. Anything short of a full answer — Prometheus unreachable, an HTTP or query error, an empty or
NaN result — is a typed `NoData` whose reason says what was missing: the controller aborts on it
and never promotes blind.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from typing import Protocol

from app.logs import kv

log = logging.getLogger(__name__)

CANARY_SELECTOR = 'slot="canary"'
STABLE_SELECTOR = 'slot=~"stable_1|stable_2"'


@dataclass(frozen=True)
class Figures:
    """What the gate looks at, over `window` (a Prometheus duration) ending at `at` (unix seconds)."""

    latency_ms: float
    error_ratio: float
    requests: float
    errors: float
    window: str
    at: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class NoData:
    """No trustworthy answer; `reason` says why (shown in logs, the releases row and the notice)."""

    reason: str


Measurement = Figures | NoData


class MetricsQuery(Protocol):
    """What the release controller needs from a metrics backend."""

    def figures(self, selector: str, version: int, window_s: float, at: float | None = None) -> Measurement: ...


def prom_duration(seconds: float) -> str:
    """Whole seconds as a Prometheus range (`30s`, `15m`, `12h`); at least 1 s."""
    whole = max(1, round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def queries(selector: str, version: int, window: str) -> dict[str, str]:
    """The PromQL of each figure, for `selector` (e.g. `slot="canary"`) and one model version."""
    sel = f'{selector},version="{int(version)}"'
    ok = f'{sel},status="200"'
    bad = f'{sel},status!="200"'
    return {
        "latency_s": (
            f"sum(rate(recommend_latency_seconds_sum{{{ok}}}[{window}]))"
            f" / sum(rate(recommend_latency_seconds_count{{{ok}}}[{window}]))"
        ),
        # no failed request at all means no series, not a zero: `or vector(0)` supplies the zero.
        "error_ratio": (
            f"(sum(rate(recommend_requests_total{{{bad}}}[{window}])) or vector(0))"
            f" / sum(rate(recommend_requests_total{{{sel}}}[{window}]))"
        ),
        "requests": f"sum(increase(recommend_requests_total{{{sel}}}[{window}]))",
        "errors": f"sum(increase(recommend_requests_total{{{bad}}}[{window}])) or vector(0)",
    }


class QueryFailed(Exception):
    """One query gave no usable number."""


class Prometheus:
    """`MetricsQuery` over the Prometheus HTTP API (`/api/v1/query`, instant queries)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def figures(self, selector: str, version: int, window_s: float, at: float | None = None) -> Measurement:
        """Latency/error ratio/request count of `selector` serving `version`, over the window ending `at`."""
        at = time.time() if at is None else at
        window = prom_duration(window_s)
        values: dict[str, float] = {}
        for name, promql in queries(selector, version, window).items():
            try:
                values[name] = self.scalar(promql, at)
            except QueryFailed as exc:
                reason = f"no data for {name} of {selector} version {version} over {window}: {exc}"
                log.warning("metrics: no data", extra=kv(selector=selector, version=version, figure=name, reason=exc))
                return NoData(reason)
        return Figures(
            latency_ms=values["latency_s"] * 1000.0,
            error_ratio=values["error_ratio"],
            requests=values["requests"],
            errors=values["errors"],
            window=window,
            at=at,
        )

    def canary(self, version: int, window_s: float, at: float | None = None) -> Measurement:
        return self.figures(CANARY_SELECTOR, version, window_s, at)

    def stable(self, version: int, window_s: float, at: float | None = None) -> Measurement:
        return self.figures(STABLE_SELECTOR, version, window_s, at)

    def scalar(self, promql: str, at: float) -> float:
        """The single value of an instant query; `QueryFailed` if unreachable, an error, empty or NaN."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=self.timeout_s) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            raise QueryFailed(f"Prometheus answered HTTP {exc.code}{detail}") from exc
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise QueryFailed(f"Prometheus at {self.url} unreachable ({getattr(exc, 'reason', exc)})") from exc
        except json.JSONDecodeError as exc:
            raise QueryFailed(f"Prometheus answered something that is not JSON ({exc})") from exc
        if payload.get("status") != "success":
            raise QueryFailed(f"query failed: {payload.get('errorType')}: {payload.get('error')}")
        result = payload.get("data", {}).get("result", [])
        if not result:
            raise QueryFailed("empty result (no matching series in the window)")
        if len(result) != 1:
            raise QueryFailed(f"{len(result)} series where one was expected")
        value = float(result[0]["value"][1])
        if math.isnan(value) or math.isinf(value):
            raise QueryFailed(f"result is {value} (no traffic in the window)")
        return value


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        return ""
    return f": {body.get('error')}" if body.get("error") else ""
