"""Drift of the collected window against the training data of the serving version.

What a run compares (window = the ratings the event store brought that the reference lacks or changed):

* **rating distribution** over the five values 1..5;
* **movie popularity**: movies are ranked by their raters in the reference and cut into ten bins that
  each hold about a tenth of the reference's ratings (most popular first); the window's ratings of
  known movies are spread over the same bins. A window that piles onto the blockbusters, or wanders
  into the tail, moves mass between bins;
* **unknown users and movies**: share of the window's ratings whose user, or movie, the reference
  never saw (the model serves them a fallback);
* **activity per user**: ratings per active user in the window against ratings per active user in the
  reference's last stretch of the same length.

Each distribution is compared with the population stability index
PSI = Σ (w − r)·ln(w / r) (a zero share is replaced by 1e-4, Evidently's convention) and the
Jensen-Shannon distance (base 2, in [0, 1]; scipy). Evidently's drift presets were the reference:
they compute these same two statistics, but Evidently pulls in a large dependency tree (plotly,
nltk, pydantic pins, litestar...) for four numbers; numpy + scipy are already ours.

Thresholds come from the environment (``DriftLimits.from_env``; defaults are the usual rules of thumb:
PSI above 0.2 is a significant shift, a JS distance above 0.1 is Evidently's default). A window with
fewer than ``DRIFT_MIN_RATINGS`` ratings is reported but never flagged: a handful of ratings always looks
shifted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from app.settings import Drift

EPS = 1e-4
RATING_VALUES = (1, 2, 3, 4, 5)
POPULARITY_BINS = 10
GAUGE_PREFIX = "movierec_drift"
TEXTFILE = "drift.prom"


# The thresholds are a section of app.settings (one place for every variable and its default).
DriftLimits = Drift


@dataclass
class DriftCheck:
    """One statistic against its threshold."""

    name: str
    value: float | None
    threshold: float
    drifted: bool


@dataclass
class DriftReport:
    window_ratings: int
    reference_ratings: int
    enough_data: bool
    min_ratings: int = 0
    checks: list[DriftCheck] = field(default_factory=list)
    distributions: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    activity: dict[str, float | None] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return self.enough_data and any(c.drifted for c in self.checks)

    def value(self, name: str) -> float | None:
        return next((c.value for c in self.checks if c.name == name), None)

    def summary(self) -> str:
        bad = [f"{c.name} {c.value:.3f} > {c.threshold:g}" for c in self.checks if c.drifted and c.value is not None]
        if not self.enough_data:
            return f"too few ratings to judge drift ({self.window_ratings} < {self.min_ratings})"
        return "drift: " + ", ".join(bad) if bad else "no drift"

    def to_dict(self) -> dict[str, Any]:
        return {"drifted": self.drifted, "summary": self.summary(), **asdict(self)}


# --- statistics ------------------------------------------------------------------------------------


def shares(counts: np.ndarray | list[float]) -> np.ndarray:
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    return c / total if total else np.zeros_like(c)


def psi(reference: np.ndarray | list[float], window: np.ndarray | list[float]) -> float:
    """Population stability index of two share vectors (zero shares become `EPS`)."""
    r = np.where(np.asarray(reference, float) > 0, reference, EPS)
    w = np.where(np.asarray(window, float) > 0, window, EPS)
    return float(np.sum((w - r) * np.log(w / r)))


def js_distance(reference: np.ndarray | list[float], window: np.ndarray | list[float]) -> float:
    """Jensen-Shannon distance, base 2 (0 identical, 1 disjoint)."""
    value = float(jensenshannon(np.asarray(reference, float), np.asarray(window, float), base=2))
    return 0.0 if math.isnan(value) else value


def rating_counts(ratings: pd.DataFrame) -> np.ndarray:
    r = pd.to_numeric(ratings["rating"], errors="coerce").round()
    return np.array([int((r == v).sum()) for v in RATING_VALUES], dtype=float)


def popularity_bins(reference: pd.DataFrame, bins: int = POPULARITY_BINS) -> dict[str, int]:
    """Movie → bin 0 (most rated) .. bins-1: a movie's bin is where its cumulative share of ratings starts."""
    counts = reference.groupby(reference["movie_id"].astype(str)).size()
    ranked = counts.reset_index(name="n").sort_values(["n", "movie_id"], ascending=[False, True])
    start = (ranked["n"].cumsum() - ranked["n"]) / max(1, int(ranked["n"].sum()))
    return dict(zip(ranked["movie_id"], np.minimum((start * bins).astype(int), bins - 1), strict=True))


def popularity_counts(ratings: pd.DataFrame, bin_of: dict[str, int], bins: int = POPULARITY_BINS) -> np.ndarray:
    codes = ratings["movie_id"].astype(str).map(bin_of).dropna().astype(int)
    return np.bincount(codes.to_numpy(), minlength=bins).astype(float)


def activity(reference: pd.DataFrame, window: pd.DataFrame) -> dict[str, float | None]:
    """Ratings per active user: the window's, and the reference's over its last stretch of equal length."""
    if window.empty:
        return {"window": None, "reference": None, "ratio": None, "span_s": None}
    w_ts = pd.to_numeric(window["timestamp"], errors="coerce")
    span = float(w_ts.max() - w_ts.min())
    per_window = len(window) / window["user_id"].nunique()
    r_ts = pd.to_numeric(reference["timestamp"], errors="coerce")
    recent = reference[r_ts >= r_ts.max() - span] if len(reference) else reference
    per_reference = len(recent) / recent["user_id"].nunique() if len(recent) else None
    ratio = per_window / per_reference if per_reference else None
    return {"window": float(per_window), "reference": per_reference, "ratio": ratio, "span_s": span}


def window_of(reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The rows of `current` the reference lacks or holds with another rating or time."""
    keys = ["user_id", "movie_id"]
    ref = reference[[*keys, "rating", "timestamp"]].astype({"user_id": "int64", "movie_id": "str"})
    cur = current.astype({"user_id": "int64", "movie_id": "str"})
    both = cur.merge(ref, on=keys, how="left", suffixes=("", "_ref"), indicator=True)
    changed = (both["_merge"] == "left_only") | (both["rating"] != both["rating_ref"]) | (
        both["timestamp"] != both["timestamp_ref"])
    return cur[changed.to_numpy()].reset_index(drop=True)


def compute(reference: pd.DataFrame, window: pd.DataFrame, limits: DriftLimits | None = None) -> DriftReport:
    """Every drift statistic of `window` (ratings rows) against `reference` (the training ratings)."""
    limits = limits or DriftLimits()
    report = DriftReport(window_ratings=len(window), reference_ratings=len(reference),
                         enough_data=len(window) >= limits.min_ratings, min_ratings=limits.min_ratings)
    ref_ratings, win_ratings = shares(rating_counts(reference)), shares(rating_counts(window))
    bin_of = popularity_bins(reference) if len(reference) else {}
    ref_pop = shares(popularity_counts(reference, bin_of))
    win_pop = shares(popularity_counts(window, bin_of))
    report.distributions = {
        "rating": {"reference": ref_ratings.tolist(), "window": win_ratings.tolist()},
        "popularity": {"reference": ref_pop.tolist(), "window": win_pop.tolist()},
    }
    known_users = set(pd.to_numeric(reference["user_id"]).astype("int64").tolist())
    known_movies = set(reference["movie_id"].astype(str).tolist())
    unknown_users = float((~window["user_id"].astype("int64").isin(known_users)).mean()) if len(window) else None
    unknown_movies = float((~window["movie_id"].astype(str).isin(known_movies)).mean()) if len(window) else None
    report.activity = activity(reference, window)
    ratio = report.activity["ratio"]
    spread = max(ratio, 1 / ratio) if ratio else None

    def check(name: str, value: float | None, threshold: float) -> None:
        report.checks.append(DriftCheck(name, value, threshold, bool(value is not None and value > threshold)))

    have_window = len(window) > 0 and len(reference) > 0
    check("rating_psi", psi(ref_ratings, win_ratings) if have_window else None, limits.psi_max)
    check("rating_js", js_distance(ref_ratings, win_ratings) if have_window else None, limits.js_max)
    has_pop = have_window and win_pop.sum() > 0
    check("popularity_psi", psi(ref_pop, win_pop) if has_pop else None, limits.psi_max)
    check("popularity_js", js_distance(ref_pop, win_pop) if has_pop else None, limits.js_max)
    check("unknown_users_share", unknown_users, limits.unknown_users_max)
    check("unknown_movies_share", unknown_movies, limits.unknown_movies_max)
    check("activity_ratio", spread, limits.activity_ratio_max)
    return report


# --- Prometheus ------------------------------------------------------------------------------------


def write_gauges(report: DriftReport, path: Path) -> None:
    """The report as gauges in a Prometheus text file (node-exporter textfile collector format).

    Written atomically by `prometheus_client.write_to_textfile`; `report drift --serve` exposes the
    same file over HTTP, the way the online-evaluation exporter does, for a Prometheus without
    node-exporter.
    """
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    value = Gauge(f"{GAUGE_PREFIX}_value", "drift statistic of the last collected window", ["check"],
                  registry=registry)
    threshold = Gauge(f"{GAUGE_PREFIX}_threshold", "threshold of the drift statistic", ["check"], registry=registry)
    for c in report.checks:
        if c.value is not None:
            value.labels(check=c.name).set(c.value)
        threshold.labels(check=c.name).set(c.threshold)
    Gauge(f"{GAUGE_PREFIX}_detected", "1 when the last window drifted (enough data and a check over threshold)",
          registry=registry).set(1 if report.drifted else 0)
    Gauge(f"{GAUGE_PREFIX}_window_ratings", "ratings in the last collected window", registry=registry).set(
        report.window_ratings)
    Gauge(f"{GAUGE_PREFIX}_last_run_timestamp_seconds", "when drift was last computed", registry=registry
          ).set_to_current_time()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
