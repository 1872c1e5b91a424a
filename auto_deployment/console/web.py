"""The console's Flask application: read-only pages rendered server-side (Jinja2, autoescaped, no JavaScript).

Only GET (and HEAD) routes exist; every answer forbids scripts and framing (Content-Security-Policy),
except report files, which are served sandboxed (they may carry their own scripts, never the console's origin).
A database that cannot answer is a 503 page naming why, never a traceback.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, abort, render_template, request, send_from_directory

from app import store
from app.logs import kv
from auto_deployment import audit
from auto_deployment.console import pages
from auto_deployment.console.settings import Console

log = logging.getLogger(__name__)

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
MAX_AUDIT_ROWS = 1000  # the page shows the first this-many requests; the CLI (--json) gives them all


def _number(value: Any, digits: int = 4) -> str:
    """A figure for a table cell: floats rounded, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _when(value: Any) -> str:
    """A datetime column or ISO string as `2026-11-24T07:30:00Z`."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return audit.iso(value.replace(tzinfo=None) if value.tzinfo is None else
                         value.astimezone(UTC).replace(tzinfo=None)) or "-"
    return str(value)


def _epoch(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_app(console: Console | None = None) -> Flask:
    """The console for `console` (default: the environment's settings)."""
    console = console or Console.from_env()
    app = Flask(__name__)
    app.config["CONSOLE"] = console
    online_cache = pages.OnlineCache()
    app.jinja_env.filters.update(number=_number, when=_when, epoch=_epoch)
    app.jinja_env.globals.update(console=console)

    @app.after_request
    def headers(response: Response) -> Response:
        if request.endpoint != "report":
            response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(store.DatabaseError)
    def database_down(exc: store.DatabaseError) -> tuple[str, int]:
        log.warning("console: database unavailable", extra=kv(path=request.path, error=exc))
        return render_template("error.html", title="Database unavailable", message=str(exc)), 503

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> tuple[str, int]:
        return render_template("error.html", title="Not found", message=f"nothing at {request.path}"), 404

    @app.get("/health")
    def health() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/")
    def index() -> str:
        return render_template("index.html", serving=pages.serving_now(console))

    @app.get("/versions")
    def versions() -> str:
        return render_template("versions.html", versions=pages.versions(console),
                               serving=pages.serving_now(console))

    @app.get("/versions/<int:version>")
    def version(version: int) -> str:
        detail = pages.version_detail(console, version)
        if detail is None:
            abort(404)
        return render_template("version.html", version=version, detail=detail)

    @app.get("/releases")
    def releases() -> str:
        return render_template("releases.html", releases=pages.releases(console),
                               state=pages.last_release_state(console))

    @app.get("/online")
    def online() -> str:
        return render_template("online.html", online=online_cache.get(console))

    @app.get("/audit")
    def audit_page() -> tuple[str, int]:
        form = {k: request.args.get(k, "") for k in ("user_id", "since", "until")}
        if "user_id" not in request.args:
            return render_template("audit.html", form=form, query=None, requests=None, error=None), 200
        try:
            query = pages.parse_audit(request.args.to_dict())
        except pages.BadRequest as exc:
            return render_template("audit.html", form=form, query=None, requests=None, error=str(exc)), 400
        found = pages.audit_user(console, query)
        return render_template("audit.html", form=form, query=query, requests=found[:MAX_AUDIT_ROWS],
                               total=len(found), versions=sorted({r["version_number"] for r in found}),
                               error=None), 200

    @app.get("/reports")
    def reports() -> str:
        return render_template("reports.html", folders=pages.reports(console))

    @app.get("/reports/<int:root>/<path:rel>")
    def report(root: int, rel: str) -> Response:
        found = pages.report_file(console, root, rel)
        if found is None:
            abort(404)
        folder, rel_path = found
        response = send_from_directory(folder, rel_path, max_age=0)  # refuses paths that leave the folder
        response.headers["Content-Security-Policy"] = "sandbox allow-scripts"
        return response

    return app
