"""`python -m auto_deployment <command>`: one sub-command per life-cycle stage.

Each stage module owns its command line: it exposes ``add_arguments(parser)`` and
``main(args) -> int``. Modules are imported only when their command runs, so `--help` stays fast
and a heavy dependency of one stage never slows another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.logs import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("auto_deployment.data.ingest", "read an event log (file, stdin, Kafka) into the event store"),
    "prepare": ("auto_deployment.data.prepare", "turn collected events into the cleaned tables of data/"),
    "train": ("auto_deployment.model.train", "train a model bundle from data/"),
    "evaluate": ("auto_deployment.model.evaluate", "offline evaluation: RMSE gate number and ranking metrics"),
    "run": ("auto_deployment.pipeline", "the whole retraining pipeline once"),
    "release": ("auto_deployment.release.cli", "canary release of a version: deploy, observe, promote or abort"),
    "schedule": ("auto_deployment.scheduler", "run the pipeline periodically"),
    "audit": ("auto_deployment.audit", "which model served a user, and what a version served"),
    "report": ("auto_deployment.monitor.report", "reports: online, data quality and drift, evaluation (HTML too)"),
    "console": ("auto_deployment.console", "read-only web console: versions, releases, audit, reports"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m auto_deployment", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            sp.set_defaults(_missing=True)
            continue
        module.add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    if getattr(args, "_missing", False):
        print(f"command {args.command!r} is not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
