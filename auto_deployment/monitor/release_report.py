"""The release report: each traffic step and each check's value over time, canary beside stable.

Rendered from the release's state (``<run>/release/state.json``, whose ``series`` holds every analysis
interval) so it needs nothing but that file: the controller writes it when a release ends
(``<run>/pipeline/releases/release-<candidate>-<started>.html`` beside its JSON, where the console links
it), and ``python -m auto_deployment report release`` renders it on demand, also for a running release.
This module reads plain dicts and never imports the release package (the release imports monitor).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from markupsafe import Markup

from app.clock import now_iso
from app.files import write_json_atomic
from auto_deployment.monitor import html

# the figures plotted canary vs stable: (key in the interval's figures, title, unit)
CURVES = (("latency_ms", "average latency of successful /recommend", "ms"),
          ("p99_ms", "p99 latency", "ms"),
          ("error_ratio", "5xx ratio", ""),
          ("requests", "requests in the window", ""))
STATUS_COLOR = {"passed": "#4e9a06", "failed": "#cc0000", "inconclusive": "#c4a000"}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def check_series(series: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{check name: [{elapsed_s, step, value, limit, status}]} in interval order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for point in series:
        for check in point.get("checks", []):
            out.setdefault(check["name"], []).append({
                "elapsed_s": point["elapsed_s"], "step": point["step"], "value": _num(check.get("value")),
                "limit": _num(check.get("limit")), "status": check.get("status")})
    return out


def _step_bands(ax: Any, series: Sequence[Mapping[str, Any]]) -> None:
    """Shade each traffic step and name it, so a value is read against the weight it was measured at."""
    starts: list[tuple[float, str]] = []
    for point in series:
        if not starts or starts[-1][1] != point["step"]:
            starts.append((point["elapsed_s"], point["step"]))
    end = series[-1]["elapsed_s"] if series else 0.0
    for i, (start, name) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else end
        if i % 2:
            ax.axvspan(start, stop, color="#eeeeec", zorder=0)
        ax.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), va="bottom", fontsize=7)


def check_plot(name: str, points: list[dict[str, Any]], series: Sequence[Mapping[str, Any]]) -> Markup:
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    _step_bands(ax, series)
    xs = [p["elapsed_s"] for p in points]
    ax.plot(xs, [p["value"] if p["value"] is not None else math.nan for p in points], color=html.COLORS[0],
            label="value")
    for p in points:
        if p["value"] is not None:
            ax.plot(p["elapsed_s"], p["value"], "o", ms=3, color=STATUS_COLOR.get(p["status"], "#555753"))
    ax.step(xs, [p["limit"] if p["limit"] is not None else math.nan for p in points], where="post",
            color=html.COLORS[3], linestyle="--", label="limit")
    ax.set_xlabel("seconds since the canary started")
    ax.set_title(name, loc="left")
    ax.legend(fontsize=7, loc="best")
    return html.svg(fig)


def curve_plot(key: str, title: str, unit: str, series: Sequence[Mapping[str, Any]]) -> Markup:
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    _step_bands(ax, series)
    xs = [p["elapsed_s"] for p in series]
    for i, role in enumerate(("canary", "stable")):
        ys = [_num((p.get(role) or {}).get(key)) for p in series]
        ax.plot(xs, [y if y is not None else math.nan for y in ys], marker=".", color=html.COLORS[1 - i], label=role)
    ax.set_xlabel("seconds since the canary started")
    ax.set_ylabel(unit)
    ax.set_title(f"{title}: canary vs stable", loc="left")
    ax.legend(fontsize=7, loc="best")
    return html.svg(fig)


def report_data(state: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows, as JSON (embedded in the page and written beside it)."""
    series = list(state.get("series") or [])
    return {
        "generated": now_iso(), "candidate": state.get("candidate"), "previous": state.get("previous"),
        "outcome": state.get("outcome") or "running", "reason": state.get("reason", ""),
        "decided_by": state.get("decided_by"), "started_at": state.get("started_at"),
        "finished_at": state.get("finished_at"), "steps": state.get("step_log") or [],
        "controls": state.get("controls") or [], "series": series, "checks": check_series(series),
        "gate": state.get("gate") or {},
    }


def page(state: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    data = report_data(state)
    series = data["series"]
    plots: dict[str, Markup] = {}
    if series:
        for name, points in data["checks"].items():
            plots[f"check:{name}"] = check_plot(name, points, series)
        for key, title, unit in CURVES:
            if any(_num((p.get("canary") or {}).get(key)) is not None for p in series):
                plots[f"curve:{key}"] = curve_plot(key, title, unit, series)
    return html.render("release.html.j2", data, plots), data


def file_stem(state: Mapping[str, Any]) -> str:
    started = re.sub(r"[^0-9A-Za-z]", "", str(state.get("started_at") or "unknown"))[:15]
    return f"release-{state.get('candidate')}-{started}"


def write(state: Mapping[str, Any], folder: Path) -> Path:
    """Write `<stem>.html` and `<stem>.json` into `folder`; returns the HTML path."""
    text, data = page(state)
    stem = file_stem(state)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{stem}.json", data)
    return html.write(folder / f"{stem}.html", text)
