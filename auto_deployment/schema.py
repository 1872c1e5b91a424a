"""`python -m auto_deployment.schema apply|status`: bring the provenance database up to date, or list its schema.

The schema files (``app/sql/NNN_name.sql``), how they are applied and the least-privilege accounts live in
:mod:`app.store` with every other SQL statement; this module is only the command line that compose's
``db-init``, ``make up`` and the benchmarks run.
"""

from __future__ import annotations

import argparse
import sys

from app.logs import setup_logging
from app.settings import MySQL
from app.store import DatabaseUnreachable, apply_schema, schema_versions


def main(argv: list[str] | None = None) -> int:
    """Apply or list the schema; an unreachable server is one line on stderr and exit code 1."""
    parser = argparse.ArgumentParser(prog="python -m auto_deployment.schema", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("apply", "status"),
                        help="apply: bring the database up to date; status: list applied schema files")
    args = parser.parse_args(argv)
    setup_logging()
    settings = MySQL.from_env()
    try:
        if args.action == "apply":
            apply_schema(settings)
        else:
            rows = schema_versions(settings)
            if not rows:
                print(f"database {settings.database}: no schema applied")
            for version, name, applied_at in rows:
                print(f"{version:03d}  {name:40s}  applied {applied_at:%Y-%m-%dT%H:%M:%SZ}")
    except DatabaseUnreachable as exc:
        print(f"schema: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
