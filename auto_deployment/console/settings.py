"""The console's settings, read once from the environment, each with its documented default.

====================  ===========================================  ==========================================
variable              default                                      meaning
====================  ===========================================  ==========================================
CONSOLE_BIND          ``127.0.0.1``                                address the console listens on (loopback:
                                                                   operators reach it on the host or through
                                                                   an SSH tunnel / NGINX with basic auth)
CONSOLE_PORT          ``8090``                                     its port
CONSOLE_EVENT_LOG     ``<MOVIEREC_RUN_DIR>/logs/events.log``       event log the online-quality page reads
                                                                   (the demo's simulator writes it there)
CONSOLE_EVENT_LOG_MB  ``16``                                       only the last this-many MB of it are read
CONSOLE_REPORT_DIRS   ``<MOVIEREC_MODELS_DIR>:<MOVIEREC_RUN_DIR>/pipeline``
                                                                   folders whose ``*.html`` / ``*.json``
                                                                   reports the console links (``:``-separated;
                                                                   in the models folder only ``<n>/reports/``)
====================  ===========================================  ==========================================

MySQL is reached with the ``MYSQL_*`` settings of :mod:`app.settings`, as the auditor account only.
These live here, not in ``app/settings.py``, because nothing in the serving image runs the console.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from app.settings import MySQL, Paths

DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 8090
DEFAULT_EVENT_LOG_MB = 16.0


def auditor_only(settings: MySQL) -> MySQL:
    """`settings` with every account but the auditor's blanked: a console bug cannot write with them."""
    return replace(settings, admin_user="", admin_password="", app_user="", app_password="",
                   pipeline_user="", pipeline_password="")


@dataclass(frozen=True)
class Console:
    bind: str
    port: int
    event_log: Path
    event_log_mb: float
    report_dirs: tuple[Path, ...]
    models_dir: Path
    data_dir: Path
    run_dir: Path
    version_file: Path
    mysql: MySQL

    @classmethod
    def from_env(cls) -> Console:
        paths = Paths.from_env()
        run_dir = paths.run_dir.absolute()
        dirs = os.environ.get("CONSOLE_REPORT_DIRS", "").strip()
        report_dirs = tuple(Path(d).absolute() for d in dirs.split(os.pathsep) if d.strip()) if dirs else (
            paths.models_dir.absolute(), run_dir / "pipeline")
        raw_port = os.environ.get("CONSOLE_PORT", "").strip()
        raw_mb = os.environ.get("CONSOLE_EVENT_LOG_MB", "").strip()
        try:
            port = int(raw_port) if raw_port else DEFAULT_PORT
            event_log_mb = float(raw_mb) if raw_mb else DEFAULT_EVENT_LOG_MB
        except ValueError as exc:
            raise ValueError(f"CONSOLE_PORT / CONSOLE_EVENT_LOG_MB: {exc}") from exc
        return cls(
            bind=os.environ.get("CONSOLE_BIND", "").strip() or DEFAULT_BIND,
            port=port,
            event_log=Path(os.environ.get("CONSOLE_EVENT_LOG", "").strip() or run_dir / "logs" / "events.log"),
            event_log_mb=event_log_mb,
            report_dirs=report_dirs,
            models_dir=paths.models_dir.absolute(),
            data_dir=paths.data_dir.absolute(),
            run_dir=run_dir,
            version_file=paths.version_file.absolute(),
            mysql=auditor_only(MySQL.from_env()),
        )
