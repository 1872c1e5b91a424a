"""What Prometheus says about the slots of one role over a window: one named figure per PromQL query.

The checks (``checks.py``) name the figure they judge; every figure is one entry of `QUERIES`, so a
check that needs a new number adds one query here. Figures are asked about one role (the canary, or
the stable replicas together, with selectors from the topology) serving one model version, over the
check window: ``rate()`` over the window, never a lifetime average, and filtered by the version label
so that requests the canary answered with the old model before the deploy do not count. Anything
short of a full answer — Prometheus unreachable, an HTTP or query error, an empty or NaN result —
is a typed `NoData` whose reason says what was missing: the controller never promotes blind.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from app.clock import format_duration
from app.contracts.topology import Topology
from app.logs import kv

log = logging.getLogger(__name__)

# One PromQL template per figure. `{sel}` is the role's slots and the version, `{ok}` the same restricted to
# answers that succeeded (200), `{bad}` to the server's failures (5xx: a 400 for `/recommend/bad1` is the
# client's mistake and never counts against the canary, as in Flagger's request-success-rate), `{window}`
# the range. A figure with no failed request at all has no series, not a zero: `or vector(0)` supplies it.
#
# Latency is measured where the client sees it (the card: "average latency of successful /recommend < 500 ms"):
# NGINX's time for the server that answered, from its access log through mtail (monitoring/mtail/nginx.mtail,
# `{edge_ok}`: successful /recommend answers of the role's slots and version). It holds what the handler's own
# histogram cannot see (Gunicorn's queue, the socket, NGINX) and none of the warm-up requests the deployer sends
# to a slot directly. Live answers and, in a shadow step, the canary's mirrored copies (labelled traffic="shadow"
# and only ever answered by the canary, so the stable side is live traffic alone). mtail runs natively (supervisor)
# and in compose (service edge-metrics); where it does not (a stack without it, or mtail down) the NGINX series do
# not exist and `or` falls back to the servers' own histogram, same labels.
def _average(metric: str, ok: str) -> str:
    """Mean of the successful answers of a histogram over the window, in ms (a ratio of rates, not of lifetimes)."""
    return f"1000 * sum(rate({metric}_sum{{{{{ok}}}}}[{{window}}])) / sum(rate({metric}_count{{{{{ok}}}}}[{{window}}]))"


def _p99(metric: str, ok: str) -> str:
    """p99 of successful answers from the histogram's buckets (linear within the bucket that holds it)."""
    return f"1000 * histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{{{ok}}}}}[{{window}}])))"


_EDGE, _HANDLER = "nginx_upstream_response_seconds", "recommend_latency_seconds"
QUERIES: dict[str, str] = {
    "latency_ms": f"({_average(_EDGE, '{edge_ok}')}) or ({_average(_HANDLER, '{ok}')})",
    "error_ratio": (
        "(sum(rate(recommend_requests_total{{{bad}}}[{window}])) or vector(0))"
        " / sum(rate(recommend_requests_total{{{sel}}}[{window}]))"
    ),
    "p99_ms": f"({_p99(_EDGE, '{edge_ok}')}) or ({_p99(_HANDLER, '{ok}')})",
    "requests": "sum(increase(recommend_requests_total{{{sel}}}[{window}]))",
    "errors": "sum(increase(recommend_requests_total{{{bad}}}[{window}])) or vector(0)",
}


@dataclass(frozen=True)
class Figures:
    """The figures of one role over `window` (a Prometheus range) ending at `at` (unix seconds)."""

    values: Mapping[str, float]
    window: str
    at: float = 0.0

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def get(self, name: str) -> float | None:
        return self.values.get(name)

    def as_dict(self) -> dict[str, float | str]:
        """Flat JSON shape kept in the state file, the `releases` row and the notice."""
        return {**self.values, "window": self.window, "at": self.at}


@dataclass(frozen=True)
class NoData:
    """No trustworthy answer; `reason` says why (shown in logs, the releases row and the notice)."""

    reason: str


Measurement = Figures | NoData


class MetricsQuery(Protocol):
    """What the release controller needs from a metrics backend."""

    def figures(self, role: str, version: int, window_s: float, at: float | None = None) -> Measurement: ...


def queries(selector: str, version: int, window: str) -> dict[str, str]:
    """The PromQL of each figure, for a slot `selector` (``slot="canary"``) and one model version."""
    sel = f'{selector},version="{int(version)}"'
    labels = {"sel": sel, "ok": f'{sel},status="200"', "bad": f'{sel},status=~"5.."', "window": window,
              "edge_ok": f'{sel},route="recommend",status_class="2xx"'}
    return {name: template.format(**labels) for name, template in QUERIES.items()}


class QueryFailed(Exception):
    """One query gave no usable number."""


class Prometheus:
    """`MetricsQuery` over the Prometheus HTTP API (`/api/v1/query`, instant queries)."""

    def __init__(self, url: str, topology: Topology, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.topology = topology
        self.timeout_s = timeout_s

    def figures(self, role: str, version: int, window_s: float, at: float | None = None) -> Measurement:
        """Every figure of `QUERIES` for the slots playing `role` and serving `version`, over the window ending `at`."""
        at = time.time() if at is None else at
        window = format_duration(window_s)
        selector = self.topology.selector(role)
        values: dict[str, float] = {}
        for name, promql in queries(selector, version, window).items():
            try:
                values[name] = self.scalar(promql, at)
            except QueryFailed as exc:
                reason = f"no data for {name} of {selector} version {version} over {window}: {exc}"
                log.warning("metrics: no data", extra=kv(selector=selector, version=version, figure=name, reason=exc))
                return NoData(reason)
        return Figures(values, window, at)

    def scalar(self, promql: str, at: float) -> float:
        """The single value of an instant query; `QueryFailed` if unreachable, an error, empty, NaN or malformed."""
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            raise QueryFailed(f"Prometheus answered HTTP {exc.code}{detail}") from exc
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise QueryFailed(f"Prometheus at {self.url} unreachable ({getattr(exc, 'reason', exc)})") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:  # reset mid-body, bad status line, ...
            raise QueryFailed(f"Prometheus answer could not be read ({type(exc).__name__}: {exc})") from exc
        return parse_scalar(body)


def parse_scalar(body: bytes | str) -> float:
    """The one finite value of an instant-query answer body; `QueryFailed` naming what is wrong with anything else.

    Prometheus (or a proxy in front of it) can answer anything: every shape is checked before it is used, so a
    bad reply is one `NoData` of one observation, never an exception that ends the release's observation.
    """
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise QueryFailed(f"Prometheus answered something that is not JSON ({_short(exc)})") from exc
    if not isinstance(payload, dict):
        raise QueryFailed(f"Prometheus answered JSON {type(payload).__name__}, not an object")
    if payload.get("status") != "success":
        raise QueryFailed(f"query failed: {_short(payload.get('errorType'))}: {_short(payload.get('error'))}")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise QueryFailed(f"answer without a data object (data is {_short(data)})")
    result = data.get("result")
    if not isinstance(result, list):
        raise QueryFailed(f"answer without a result list (result is {_short(result)})")
    if not result:
        raise QueryFailed("empty result (no matching series in the window)")
    if len(result) != 1:
        raise QueryFailed(f"{len(result)} series where one was expected")
    sample = result[0].get("value") if isinstance(result[0], dict) else None
    if not isinstance(sample, list) or len(sample) != 2:
        raise QueryFailed(f"series without a [time, value] pair (value is {_short(sample)})")
    raw = sample[1]
    if not isinstance(raw, str):  # Prometheus sends sample values as strings ("1.5", "NaN", "+Inf")
        raise QueryFailed(f"sample value {_short(raw)} is not a string number")
    try:
        value = float(raw)
    except ValueError as exc:
        raise QueryFailed(f"sample value {_short(raw)} is not a number") from exc
    if math.isnan(value) or math.isinf(value):
        raise QueryFailed(f"result is {value} (no traffic in the window)")
    return value


def _short(value: object, limit: int = 80) -> str:
    """A bounded repr for a reason: a hostile answer must not flood the log or the releases row."""
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """Prometheus's own error message from an HTTP error body, if the body is a JSON object that has one."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, RecursionError, OSError, http.client.HTTPException):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return f": {_short(error)}" if error else ""
