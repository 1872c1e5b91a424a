"""Data checks of the retraining pipeline: what must hold before a model may learn from `data/`.

Every check runs (none stops the others) so that a refused run reports *every* problem at once:

* ``schema``: each table has its columns, key columns are filled and of the right kind, keys are
  unique (one rating per user and movie, one row per user and per movie);
* ``ranges``: ratings in 1..5, timestamps neither negative nor in the future, ages 0..120, gender
  M/F, vote averages 0..10, runtimes and minutes not negative, a watch not ending before it began;
* ``unknown``: ratings of users or movies the catalogue does not know stay under a share
  (`PIPELINE_MAX_UNKNOWN_SHARE`); the model could train on them, but nothing protects a user of
  unknown age from adult titles or describes a movie nobody catalogued;
* ``new_ratings``: at least `PIPELINE_MIN_NEW_RATINGS` ratings are new or changed since the data of
  the last version, otherwise a new version would learn nothing new.

Tables are read raw (no type casting), so that a malformed file is reported by the schema check
instead of crashing the loader.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.contracts.tables import FILES, MOVIES, RATINGS, USERS, WATCHES
from app.settings import Pipeline

COLUMNS = {"ratings": RATINGS, "watches": WATCHES, "users": USERS, "movies": MOVIES}
KEYS = {"ratings": ["user_id", "movie_id"], "watches": ["user_id", "movie_id"], "users": ["user_id"],
        "movies": ["movie_id"]}
FUTURE_SLACK_S = 86_400  # clocks of producers drift; a day ahead is still plausible, more is a bug
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class CheckLimits:
    """Thresholds of the checks (defaults from `app.settings.Pipeline`)."""

    min_new_ratings: int = 1
    max_unknown_share: float = 0.01

    @classmethod
    def from_settings(cls, settings: Pipeline | None = None) -> CheckLimits:
        s = settings or Pipeline.from_env()
        return cls(min_new_ratings=s.min_new_ratings, max_unknown_share=s.max_unknown_share)


@dataclass
class CheckResult:
    """One check: passed or not, and each problem found (a sentence with counts and examples)."""

    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)


@dataclass
class ChecksReport:
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line per failed check and problem: the reason a refused run gives to people."""
        if self.passed:
            return "all data checks passed: " + ", ".join(r.name for r in self.results)
        return "; ".join(f"{r.name}: {', '.join(r.problems)}" for r in self.failed)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failed": [r.name for r in self.failed],
                "results": [asdict(r) for r in self.results]}


def read_raw(data_dir: Path) -> dict[str, pd.DataFrame | None]:
    """The four tables as they are on disk (movie ids as text, nothing cast); None for a missing file."""
    out: dict[str, pd.DataFrame | None] = {}
    for name, filename in FILES.items():
        path = Path(data_dir) / filename
        out[name] = pd.read_csv(path, dtype={"movie_id": "str"}, low_memory=False) if path.exists() else None
    return out


def _examples(values: pd.Series) -> str:
    shown = [str(v) for v in values.head(MAX_EXAMPLES).tolist()]
    return ", ".join(shown)


def _integral(series: pd.Series) -> pd.Series:
    """True where the value is a whole number (as int or float or numeric text)."""
    numeric = pd.to_numeric(series, errors="coerce")
    return numeric.notna() & np.isfinite(numeric) & (numeric == np.floor(numeric))


# --- the checks ------------------------------------------------------------------------------------


def check_schema(tables: dict[str, pd.DataFrame | None]) -> CheckResult:
    """Columns present, key columns filled and typed, keys unique; a ratings table is required."""
    problems: list[str] = []
    for name, columns in COLUMNS.items():
        frame = tables.get(name)
        if frame is None:
            if name == "ratings":
                problems.append("ratings table missing")
            continue
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            problems.append(f"{name} lacks columns {missing}")
            continue
        for key in KEYS[name]:
            empty = frame[key].isna() | (frame[key].astype(str).str.strip() == "")
            if empty.any():
                problems.append(f"{name}.{key} empty in {int(empty.sum())} rows")
        if "user_id" in KEYS[name]:
            bad = frame["user_id"].notna() & ~(_integral(frame["user_id"]) & (pd.to_numeric(
                frame["user_id"], errors="coerce") >= 0))
            if bad.any():
                problems.append(f"{name}.user_id not a non-negative integer in {int(bad.sum())} rows "
                                f"(e.g. {_examples(frame.loc[bad, 'user_id'])})")
        duplicated = frame.duplicated(KEYS[name], keep=False)
        if duplicated.any():
            problems.append(f"{name} has {int(duplicated.sum())} rows sharing a key {KEYS[name]}")
    ratings = tables.get("ratings")
    if ratings is not None and "rating" in ratings.columns:
        bad = pd.to_numeric(ratings["rating"], errors="coerce").isna()
        if bad.any():
            problems.append(f"ratings.rating not a number in {int(bad.sum())} rows "
                            f"(e.g. {_examples(ratings.loc[bad, 'rating'])})")
    if ratings is not None and "timestamp" in ratings.columns:
        bad = ~_integral(ratings["timestamp"])
        if bad.any():
            problems.append(f"ratings.timestamp not an integer in {int(bad.sum())} rows")
    if ratings is not None and not problems and ratings.empty:
        problems.append("ratings table is empty")
    return CheckResult("schema", not problems, problems)


def _out_of(frame: pd.DataFrame | None, column: str, low: float, high: float, what: str,
            problems: list[str], table: str) -> None:
    """Record rows whose numeric `column` is outside [low, high] (missing values are allowed)."""
    if frame is None or column not in frame.columns:
        return
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.notna() & ((values < low) | (values > high))
    if bad.any():
        problems.append(f"{table}.{column} {what} in {int(bad.sum())} rows (e.g. {_examples(frame.loc[bad, column])})")


def check_ranges(tables: dict[str, pd.DataFrame | None], now: float | None = None) -> CheckResult:
    """Values inside their domain; `now` (epoch seconds) bounds timestamps from above."""
    latest = (time.time() if now is None else now) + FUTURE_SLACK_S
    problems: list[str] = []
    ratings, watches, users, movies = (tables.get(n) for n in ("ratings", "watches", "users", "movies"))
    _out_of(ratings, "rating", 1, 5, "outside 1..5", problems, "ratings")
    _out_of(ratings, "timestamp", 0, latest, "negative or in the future", problems, "ratings")
    _out_of(watches, "minutes", 0, float("inf"), "negative", problems, "watches")
    _out_of(watches, "first_seen", 0, latest, "negative or in the future", problems, "watches")
    _out_of(watches, "last_seen", 0, latest, "negative or in the future", problems, "watches")
    if watches is not None and {"first_seen", "last_seen"} <= set(watches.columns):
        first = pd.to_numeric(watches["first_seen"], errors="coerce")
        last = pd.to_numeric(watches["last_seen"], errors="coerce")
        bad = first.notna() & last.notna() & (last < first)
        if bad.any():
            problems.append(f"watches end before they begin in {int(bad.sum())} rows")
    _out_of(users, "age", 0, 120, "outside 0..120", problems, "users")
    if users is not None and "gender" in users.columns:
        bad = users["gender"].notna() & ~users["gender"].astype(str).isin(["M", "F"])
        if bad.any():
            problems.append(
                f"users.gender not M/F in {int(bad.sum())} rows (e.g. {_examples(users.loc[bad, 'gender'])})")
    _out_of(movies, "vote_average", 0, 10, "outside 0..10", problems, "movies")
    _out_of(movies, "vote_count", 0, float("inf"), "negative", problems, "movies")
    _out_of(movies, "runtime", 0, float("inf"), "negative", problems, "movies")
    return CheckResult("ranges", not problems, problems)


def check_unknown(tables: dict[str, pd.DataFrame | None], limits: CheckLimits) -> CheckResult:
    """Share of ratings whose user or movie the catalogue lacks, against `max_unknown_share`."""
    ratings, users, movies = tables.get("ratings"), tables.get("users"), tables.get("movies")
    if ratings is None or ratings.empty or not {"user_id", "movie_id"} <= set(ratings.columns):
        return CheckResult("unknown", True, details={"ratings": 0})
    problems: list[str] = []
    details: dict[str, object] = {"ratings": len(ratings)}
    lookups: list[tuple[str, str, pd.DataFrame | None, Callable[[pd.Series], pd.Series]]] = [
        ("users", "user_id", users, lambda s: pd.to_numeric(s, errors="coerce")),
        ("movies", "movie_id", movies, lambda s: s.astype(str)),
    ]
    for table, key, catalogue, norm in lookups:
        has_catalogue = catalogue is not None and key in catalogue.columns
        known = set(norm(catalogue[key]).dropna().tolist()) if has_catalogue else set()
        unknown = ~norm(ratings[key]).isin(known)
        share = float(unknown.mean())
        details[f"unknown_{table}_ratings"] = int(unknown.sum())
        details[f"unknown_{table}_share"] = round(share, 6)
        if share > limits.max_unknown_share:
            problems.append(
                f"{int(unknown.sum())} ratings ({share:.1%}) by {table} not in the catalogue, at most "
                f"{limits.max_unknown_share:.1%} allowed "
                f"(e.g. {_examples(ratings.loc[unknown, key].drop_duplicates())})"
            )
    return CheckResult("unknown", not problems, problems, details)


def check_new_ratings(new_ratings: int, limits: CheckLimits) -> CheckResult:
    """Enough ratings new or changed since the last version's data."""
    ok = new_ratings >= limits.min_new_ratings
    problems = [] if ok else [f"{new_ratings} new ratings, at least {limits.min_new_ratings} required"]
    return CheckResult("new_ratings", ok, problems, {"new_ratings": new_ratings})


def run_checks(data_dir: Path, new_ratings: int, limits: CheckLimits | None = None,
               now: float | None = None) -> ChecksReport:
    """Every check over the tables of `data_dir`; `new_ratings` comes from the prepare report."""
    limits = limits or CheckLimits.from_settings()
    try:
        tables = read_raw(data_dir)
    except (OSError, ValueError) as exc:  # unreadable CSV: nothing else can be checked
        return ChecksReport([CheckResult("schema", False, [f"tables unreadable: {exc}"]),
                             check_new_ratings(new_ratings, limits)])
    return ChecksReport([
        check_schema(tables),
        check_ranges(tables, now),
        check_unknown(tables, limits),
        check_new_ratings(new_ratings, limits),
    ])
