"""Train a model bundle from the cleaned tables of `data/`.

The bundle records what an auditor needs later: the checksum of the data it was trained on, the
parameters, when, the code commit and the offline metrics (when evaluation ran).
`python -m auto_deployment train --out models/7 --version 7 [--evaluate]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.contracts.tables import MODEL_TABLES, data_checksum, load_tables
from app.logs import kv
from app.model import Recommender
from app.settings import Paths
from auto_deployment.model.evaluate import evaluate, parse_params

log = logging.getLogger(__name__)


def train_bundle(
    data_dir: Path,
    out_dir: Path,
    version: int | str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Recommender:
    """Fit on every rating in `data_dir` and save the bundle to `out_dir` with its metadata."""
    tables = load_tables(data_dir, MODEL_TABLES)
    if tables.ratings.empty:
        raise ValueError(f"no ratings in {data_dir}: nothing to train on")
    started = time.perf_counter()
    model = Recommender.train(tables.ratings, tables.users, tables.movies, **(params or {}))
    model.metadata.update(
        version=version,
        data_checksum=data_checksum(data_dir),
        data_dir=str(data_dir),
        metrics=metrics or {},
        fit_seconds=round(time.perf_counter() - started, 3),
    )
    model.save(out_dir)
    log.info(
        "bundle saved",
        extra=kv(version=version, out=out_dir, ratings=len(tables.ratings), fit_s=model.metadata["fit_seconds"]),
    )
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None, help="tables to train on (default: data/)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--version", default="dev", help="version number recorded in the bundle")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter")
    parser.add_argument("--evaluate", action="store_true", help="run the offline evaluation and record it")


def main(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Paths.from_env().data_dir
    try:
        params = parse_params(args.param)
        metrics = None
        if args.evaluate:
            report = evaluate(load_tables(data_dir, MODEL_TABLES), params)
            metrics = {k: report[k] for k in ("rmse", "mae")}
            metrics["ndcg@20"] = report["ranking"]["ndcg@20"]
        model = train_bundle(data_dir, args.out, args.version, params, metrics)
    except (OSError, ValueError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: model.metadata[k] for k in ("version", "data_checksum", "trained_at", "metrics")}))
    return 0
