"""`python -m auto_deployment report <what>`: reports for operators.

  online       online evaluation per model version and slot (score, hit rate, average rating)
  data         data quality: what the event store brings to data/ (events, rejected lines, duplicates,
               new users and movies, ratings), every check with value and threshold, drift
  evaluation   offline evaluation: RMSE/MAE with intervals, lists beside popularity, fairness
  drift        serve the drift gauges of the last pipeline run to Prometheus

`data` and `evaluation` print text, `--json` the figures, `--html PATH` a self-contained page with
plots. Every pipeline run writes both pages and their JSON under `<run>/pipeline/<run id>/` and, for a
run that makes a version, into `models/<version>/reports/` (versioned by DVC with the bundle).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from app.contracts.tables import MODEL_TABLES, REJECTED_COUNTS, Tables, load_tables
from app.logs import kv
from app.settings import Paths
from auto_deployment.data.checks import CheckLimits, ChecksReport, run_checks
from auto_deployment.monitor import drift as drift_mod
from auto_deployment.monitor import online_eval

log = logging.getLogger(__name__)

DATA_HTML, DATA_JSON = "data.html", "data.json"
EVALUATION_HTML, EVALUATION_JSON = "evaluation.html", "evaluation.json"


# --- data quality ----------------------------------------------------------------------------------


def check_rows(checks: ChecksReport | None, limits: CheckLimits,
               drift: drift_mod.DriftReport | None = None) -> list[dict[str, Any]]:
    """Each check as (name, value, comparison, threshold, passed, problems) for the page."""
    rows: list[dict[str, Any]] = []
    for r in checks.results if checks else []:
        if r.name == "unknown":
            for table in ("users", "movies"):
                share = r.details.get(f"unknown_{table}_share")
                rows.append({"name": f"unknown_{table}_share", "value": share, "op": "≤",
                             "threshold": limits.max_unknown_share,
                             "passed": share is None or share <= limits.max_unknown_share,
                             "problems": [p for p in r.problems if f"by {table}" in p]})
        elif r.name == "new_ratings":
            rows.append({"name": r.name, "value": r.details.get("new_ratings"), "op": "≥",
                         "threshold": limits.min_new_ratings, "passed": r.passed, "problems": r.problems})
        else:
            rows.append({"name": r.name, "value": len(r.problems), "op": "=", "threshold": 0, "passed": r.passed,
                         "problems": r.problems})
    if drift is not None:
        drifted = [c.name for c in drift.checks if c.drifted]
        rows.append({"name": "drift", "value": len(drifted) if drift.enough_data else None, "op": "=",
                     "threshold": 0, "passed": not drift.drifted,
                     "problems": [drift.summary()] if drift.drifted or not drift.enough_data else []})
    return rows


def _rating_counts(ratings: pd.DataFrame) -> dict[str, int]:
    counts = drift_mod.rating_counts(ratings) if len(ratings) else [0] * len(drift_mod.RATING_VALUES)
    return {str(v): int(n) for v, n in zip(drift_mod.RATING_VALUES, counts, strict=True)}


def data_summary(current: Tables, reference: pd.DataFrame | None, *, events: dict[str, int],
                 rejected: dict[str, int], ratings_from_events: int | None, checks: ChecksReport | None,
                 limits: CheckLimits, drift: drift_mod.DriftReport | None, data_dir: str = "",
                 run_id: str = "") -> dict[str, Any]:
    """The figures of the data-quality page (also its JSON)."""
    ratings = current.ratings
    window = drift_mod.window_of(reference, ratings) if reference is not None else ratings
    known_users = set(reference["user_id"].astype("int64")) if reference is not None else set()
    known_movies = set(reference["movie_id"].astype(str)) if reference is not None else set()
    window_users = set(window["user_id"].astype("int64"))
    window_movies = set(window["movie_id"].astype(str))
    duplicates = {}
    if ratings_from_events is not None:
        duplicates = {"rate_events": int(events.get("rate", 0)), "ratings_from_events": int(ratings_from_events),
                      "duplicate_ratings": int(events.get("rate", 0)) - int(ratings_from_events)}
    return {
        "kind": "data",
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "data_dir": data_dir,
        "tables": {"ratings": len(ratings), "watches": len(current.watches), "users": len(current.users),
                   "movies": len(current.movies),
                   "rated_users": int(ratings["user_id"].nunique()) if len(ratings) else 0},
        "events": {k: int(v) for k, v in sorted(events.items())},
        "rejected": {k: int(v) for k, v in sorted(rejected.items())},
        "rejected_total": int(sum(rejected.values())),
        "duplicates": duplicates,
        "window": {"ratings": len(window), "users": len(window_users), "movies": len(window_movies),
                   "new_users": len(window_users - known_users), "new_movies": len(window_movies - known_movies),
                   "rating_counts": _rating_counts(window)},
        "reference_rating_counts": _rating_counts(reference) if reference is not None else {},
        "checks": check_rows(checks, limits, drift),
        "drift": drift.to_dict() if drift is not None else None,
    }


def data_page(summary: dict[str, Any]) -> str:
    from auto_deployment.monitor import html

    plots = {
        "events": html.bars({"lines": summary["events"]}, "events by kind", "lines") if summary["events"] else "",
        "rejected": html.bars({"lines": summary["rejected"]}, "rejected lines by reason", "lines", horizontal=True)
        if summary["rejected"] else "",
        "ratings": html.bars(_share_series(summary["window"]["rating_counts"], summary["reference_rating_counts"]),
                             "rating distribution", "share of ratings"),
        "popularity": "",
    }
    d = summary.get("drift")
    if d and d["distributions"]["popularity"]["reference"]:
        pop = d["distributions"]["popularity"]
        names = [f"{10 * k}-{10 * (k + 1)}%" for k in range(len(pop["reference"]))]
        plots["popularity"] = html.bars(
            {"window": dict(zip(names, pop["window"], strict=True)),
             "training data": dict(zip(names, pop["reference"], strict=True))},
            "ratings by movie popularity bin (most rated first)", "share of ratings")
    return html.render("data.html.j2", summary, plots)


def _share_series(window: dict[str, int], reference: dict[str, int]) -> dict[str, dict[str, float]]:
    def share(counts: dict[str, int]) -> dict[str, float]:
        total = sum(counts.values())
        return {k: v / total for k, v in counts.items()} if total else {}

    series = {"window": share(window)}
    if reference:
        series["training data"] = share(reference)
    return series


def data_from_dirs(data_dir: Path, events_dir: Path | None, limits: CheckLimits,
                   drift_limits: drift_mod.DriftLimits) -> dict[str, Any]:
    """On demand: what the event store would bring to `data_dir` (whose tables are the reference)."""
    from auto_deployment.data.ingest import read_manifests
    from auto_deployment.data.prepare import aggregate_events, merge_ratings

    tables = load_tables(data_dir)
    events_dir = events_dir or Path(data_dir) / "events"
    manifests = read_manifests(events_dir) if Path(events_dir).is_dir() else []
    events: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for manifest in manifests:
        for key, target in (("events", events), ("rejected", rejected)):
            for k, v in manifest.get(key, {}).items():
                target[k] = target.get(k, 0) + int(v)
    rejected_path = Path(data_dir) / REJECTED_COUNTS
    if not manifests and rejected_path.exists():
        rejected = json.loads(rejected_path.read_text())
    reference = tables.ratings
    from_events = None
    current = tables
    if manifests:
        event_ratings, _ = aggregate_events(events_dir)
        from_events = len(event_ratings)
        merged, _, _ = merge_ratings(tables.ratings, event_ratings)
        current = Tables(ratings=merged, watches=tables.watches, users=tables.users, movies=tables.movies)
    window = drift_mod.window_of(reference, current.ratings)
    drift = drift_mod.compute(reference, window, drift_limits) if manifests else None
    checks = run_checks(Path(data_dir), len(window), limits)
    return data_summary(current, reference, events=events, rejected=rejected,
                        ratings_from_events=from_events, checks=checks, limits=limits, drift=drift,
                        data_dir=str(data_dir))


# --- evaluation ------------------------------------------------------------------------------------


def evaluation_summary(report: dict[str, Any], version: int | None = None, run_id: str = "") -> dict[str, Any]:
    """The evaluation report (`auto_deployment.model.evaluate.evaluate`) with what the page adds."""
    return {**report, "kind": "evaluation", "version": version, "run_id": run_id,
            "generated": datetime.now(UTC).isoformat(timespec="seconds")}


def evaluation_page(summary: dict[str, Any]) -> str:
    from auto_deployment.monitor import html

    keys = [k for k in summary["ranking"] if k not in ("users", "coverage")]
    plots = {
        "ranking": html.bars({"ours": {k: summary["ranking"][k] for k in keys},
                              "popularity": {k: summary["popularity"][k] for k in keys}}, "lists at 20"),
        "exposure": html.bars(
            {name: {k: v for k, v in summary["exposure"][name].items() if k in ("short_head_share", "exposure_gini",
                                                                               "intra_list_diversity")}
             for name in ("ours", "popularity")}, "what the lists expose", "") if summary.get("exposure") else "",
    }
    for dim, groups in (summary.get("fairness") or {}).items():
        rows = [(name, g["rmse"]["value"], g["rmse"]["low"], g["rmse"]["high"], g["rmse"]["significant"])
                for name, g in groups.items() if g.get("rmse")]
        plots[f"fairness_{dim}"] = html.intervals(rows, f"RMSE by {dim.replace('_', ' ')} (95% intervals)",
                                                  overall=summary["rmse"]) if rows else ""
    return html.render("evaluation.html.j2", summary, plots)


# --- writing ---------------------------------------------------------------------------------------


def write_pair(directory: Path, stem: str, summary: dict[str, Any], page: str) -> dict[str, str]:
    """`<stem>.json` and `<stem>.html` in `directory`; returns their paths."""
    from app.files import write_json_atomic
    from auto_deployment.monitor import html

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / f"{stem}.json", json.loads(json.dumps(summary, default=str)))
    html.write(directory / f"{stem}.html", page)
    return {f"{stem}_json": str(directory / f"{stem}.json"), f"{stem}_html": str(directory / f"{stem}.html")}


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", required=True)
    online_eval.add_arguments(sub.add_parser("online", help="online evaluation per model version and slot"))
    data = sub.add_parser("data", help="data quality: events, rejected lines, checks, drift (text, JSON, HTML)")
    data.add_argument("--data-dir", type=Path, default=None, help="tables of the current version (default data/)")
    data.add_argument("--events-dir", type=Path, default=None, help="event store (default <data>/events)")
    data.add_argument("--json", action="store_true", help="print JSON")
    data.add_argument("--html", type=Path, default=None, metavar="PATH", help="also write the HTML page here")
    ev = sub.add_parser("evaluation", help="offline evaluation with intervals, exposure and fairness")
    ev.add_argument("--data-dir", type=Path, default=None, help="tables to evaluate on (default data/)")
    ev.add_argument("--from", dest="source", type=Path, default=None, metavar="JSON",
                    help="render an evaluation JSON (`evaluate --out`, a run's evaluation.json) instead of evaluating")
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--html", type=Path, default=None, metavar="PATH", help="also write the HTML page here")
    rel = sub.add_parser("release", help="a release's steps and checks over time, canary vs stable (HTML)")
    rel.add_argument("--state", type=Path, default=None,
                     help="release state file (default <run>/release/state.json: the last or running release)")
    rel.add_argument("--html", type=Path, default=None, metavar="PATH",
                     help="write the page here (default <run>/pipeline/releases/release-<candidate>-<started>.html)")
    dr = sub.add_parser("drift", help="expose the drift gauges of the last pipeline run for Prometheus")
    dr.add_argument("--file", type=Path, default=None, help=f"gauges file (default <run>/metrics/{drift_mod.TEXTFILE})")
    dr.add_argument("--serve", type=int, required=True, metavar="PORT", help="serve /metrics on 127.0.0.1:PORT")


def main(args: argparse.Namespace) -> int:
    if args.report == "online":
        return online_eval.main(args)
    if args.report == "drift":
        return serve_gauges(args.file or Paths.from_env().run_dir / "metrics" / drift_mod.TEXTFILE, args.serve)
    if args.report == "evaluation":
        return _evaluation_main(args)
    if args.report == "release":
        return _release_main(args)
    data_dir = args.data_dir or Paths.from_env().data_dir
    try:
        summary = data_from_dirs(Path(data_dir), args.events_dir, CheckLimits.from_settings(),
                                 drift_mod.DriftLimits.from_env())
    except (OSError, ValueError) as exc:
        print(f"report data: {exc}", file=sys.stderr)
        return 2
    if args.html:
        from auto_deployment.monitor import html

        html.write(args.html, data_page(summary))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for key in ("tables", "events", "rejected", "duplicates", "window"):
            print(f"{key:<12} {json.dumps(summary[key])}")
        for row in summary["checks"]:
            print(f"check {row['name']:<22} {row['value']!s:>10} {row['op']} {row['threshold']!s:<8}"
                  f" {'ok' if row['passed'] else 'FAILED'}")
        if summary["drift"]:
            print(summary["drift"]["summary"])
    return 0


def _evaluation_main(args: argparse.Namespace) -> int:
    from auto_deployment.model.evaluate import evaluate, format_table, parse_params

    try:
        if args.source:
            report = json.loads(args.source.read_text())
        else:
            tables = load_tables(args.data_dir or Paths.from_env().data_dir, MODEL_TABLES)
            if tables.ratings.empty:
                print("report evaluation: no ratings to evaluate on", file=sys.stderr)
                return 2
            report = evaluate(tables, parse_params(args.param))
    except (OSError, ValueError) as exc:
        print(f"report evaluation: {exc}", file=sys.stderr)
        return 2
    summary = evaluation_summary(report, version=report.get("version"))
    if args.html:
        from auto_deployment.monitor import html

        html.write(args.html, evaluation_page(summary))
    print(json.dumps(summary, indent=2, default=str) if args.json else format_table(report))
    return 0


def serve_gauges(path: Path, port: int) -> int:
    """Serve the gauges file as `/metrics` (re-read on each scrape), like `report online --serve`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = Path(path).read_bytes() if Path(path).exists() else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # scrapes are not news
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    log.info("serving drift gauges", extra=kv(port=port, file=path))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        time.sleep(0)
    return 0


def _release_main(args: argparse.Namespace) -> int:
    from auto_deployment.monitor import release_report

    run_dir = Paths.from_env().run_dir
    path = args.state or run_dir / "release" / "state.json"
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"report release: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(state, dict) or "candidate" not in state:
        print(f"report release: {path} is not a release state file", file=sys.stderr)
        return 2
    if args.html:
        from auto_deployment.monitor import html

        written = html.write(args.html, release_report.page(state)[0])
    else:
        written = release_report.write(state, run_dir / "pipeline" / "releases")
    print(written)
    return 0
