"""`python -m auto_deployment report <what>`: reports for operators.

  online   online evaluation per model version and slot (score, hit rate, average rating)
  data     what the cleaned tables hold and what ingestion set aside
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.contracts.tables import REJECTED_COUNTS, load_tables
from app.settings import Paths
from auto_deployment.monitor import online_eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report", required=True)
    online_eval.add_arguments(sub.add_parser("online", help="online evaluation per model version and slot"))
    data = sub.add_parser("data", help="sizes of the cleaned tables and rejected lines by reason")
    data.add_argument("--data-dir", type=Path, default=None)
    data.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    if args.report == "online":
        return online_eval.main(args)
    data_dir = args.data_dir or Paths.from_env().data_dir
    tables = load_tables(data_dir)
    rejected_path = Path(data_dir) / REJECTED_COUNTS
    rejected = json.loads(rejected_path.read_text()) if rejected_path.exists() else {}
    summary = {
        "ratings": len(tables.ratings),
        "watches": len(tables.watches),
        "users": len(tables.users),
        "movies": len(tables.movies),
        "rated_users": int(tables.ratings.user_id.nunique()) if len(tables.ratings) else 0,
        "rejected": rejected,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<12} {value}")
    return 0
