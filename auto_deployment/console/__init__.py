"""`python -m auto_deployment console`: a small read-only web console for operators and auditors.

Pages: versions (data/model checksums, RMSE and metrics, lineage), releases (checks and outcome),
online quality per version, an audit form (the answers of ``audit user``), and links to every report.
It runs on the operations side only, never in the serving path: loopback by default
(``CONSOLE_BIND=127.0.0.1``, ``CONSOLE_PORT=8090``; see :mod:`auto_deployment.console.settings`), and it
reads MySQL through the auditor account alone (the other accounts are blanked in its settings).

Served by gunicorn (one worker, a few threads: a handful of people, pages of a few queries each).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from app.logs import kv
from auto_deployment.console.settings import Console

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default=None, help="listen address (default CONSOLE_BIND, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="listen port (default CONSOLE_PORT, 8090)")
    parser.add_argument("--threads", type=int, default=4, help="request threads of its one worker")


def main(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from auto_deployment.console.web import create_app

    console = Console.from_env()
    bind = args.bind or console.bind
    port = args.port if args.port is not None else console.port
    app = create_app(console)

    class _Server(BaseApplication):  # gunicorn with its settings given here, not read from a file
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}",
                "workers": 1, "worker_class": "gthread", "threads": max(1, args.threads),
                "timeout": 120, "graceful_timeout": 10, "accesslog": "-", "errorlog": "-",
                "proc_name": "movierec-console",
                "control_socket_disable": True,  # gunicorn 24+'s control socket: one fixed path in $HOME, unused
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    log.info("console starting", extra=kv(bind=bind, port=port, auditor=console.mysql.auditor_user,
                                          event_log=console.event_log))
    _Server().run()
    return 0
