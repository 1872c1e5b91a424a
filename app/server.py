"""The inference server: a thin Flask adapter around the model a slot serves (design section 2).

``create_app()`` is the application factory Gunicorn runs in each worker
(``gunicorn -c app/gunicorn.conf.py 'app:create_app()'``). Everything comes from the environment
(``app.settings``): the slot, the bundle or models root + slot pointer, the port, the MySQL DSN.

The request path does one thing: validate the id, take the current model reference, ask it for a
list. Nothing is loaded, trained or waited on there: the model follows its pointer in a background
thread (``app.slot``) and provenance rows go to a background writer (``app.provenance``) after the
answer is computed. Failure modes are answered, never raised:

* a malformed id → ``400`` with a one-line reason (``/recommend/<id>`` takes 1-18 ASCII digits);
* no model loaded yet → ``503`` with the reason (NGINX retries another upstream);
* an unexpected error inside the model → logged with the request id and answered ``200`` with the
  model's adult-free fallback list (precomputed at load), so a bug costs quality, not an error;
* any other exception anywhere → ``503`` one line, never a ``500``.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from app.contracts import bundle
from app.contracts.topology import SHADOW_HEADER
from app.logs import kv, setup_logging
from app.metrics import NO_VERSION, ServingMetrics, install_exporter
from app.settings import MySQL, Paths, Serving
from app.slot import Loaded, ModelSlot

log = logging.getLogger(__name__)

USER_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() would accept '٣' and '²'
REQUEST_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
N_RECOMMENDATIONS = 20
EXTENSION = "movierec"


class _RawTail(BaseConverter):
    """Everything after '/recommend/', even empty or with slashes: the handler judges it (400, not 404)."""

    regex = r"[\s\S]*"  # '.' would stop at a newline ('%0A') and turn a bad id into a 404
    part_isolating = False


class Runtime:
    """What one worker holds: the model slot, metrics, provenance writer, fault dice."""

    def __init__(self, serving: Serving, paths: Paths, mysql: MySQL) -> None:
        self.serving = serving
        self.mysql = mysql
        self.host = socket.gethostname()
        self.metrics = ServingMetrics(serving.slot)
        self.slot = ModelSlot(serving, paths, on_swap=self._on_swap, mysql=mysql,
                              on_refuse=self.metrics.model_refused)
        self.writer: Any = None
        self._dice = random.Random(f"faults:{serving.slot}")  # seeded: a drill is reproducible per worker
        self._dice_lock = threading.Lock()
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the provenance writer and load the model; idempotent (factory and post_worker_init)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
            self.metrics.touch(None)
            if self.mysql.enabled:
                self.writer = self._make_writer()
            self.slot.start()

    def _make_writer(self) -> Any:
        try:
            from app.provenance import ProvenanceWriter

            writer = ProvenanceWriter(self.mysql, on_event=self.metrics.provenance_event)
            writer.start()
            return writer
        except Exception:  # serving goes on; the rows of this worker are counted as dropped
            log.exception("provenance writer failed to start", extra=kv(slot=self.serving.slot))
            return None

    def close(self, timeout: float = 10.0) -> None:
        """Stop following the pointer, drain provenance rows to MySQL (or the spool)."""
        self.slot.stop()
        if self.writer is not None:
            try:
                self.writer.close(timeout)
            except Exception:
                log.exception("provenance writer failed to close", extra=kv(slot=self.serving.slot))
            self.writer = None

    def _on_swap(self, old: Loaded | None, new: Loaded) -> None:
        self.metrics.model_swapped(old.version if old else None, new.version)
        self.metrics.touch(new.version)

    def inject_error(self, ratio: float) -> bool:
        if ratio <= 0.0:
            return False
        with self._dice_lock:
            return self._dice.random() < ratio

    def record(self, loaded: Loaded, user_id: int, movies: list[str], started_ms: int, latency_s: float) -> None:
        """Hand one provenance row to the background writer (never blocks)."""
        if not self.mysql.enabled:
            return
        if self.writer is None:
            self.metrics.provenance_event("dropped", 1)
            return
        row = {
            "row_id": uuid.uuid4().hex,  # the request id may come from a client and repeat; the answer is new
            "request_id": g.request_id,
            "served_at_ms": started_ms,
            "user_id": user_id,
            "version_number": loaded.version_number,
            "slot": self.serving.slot,
            "host": self.host,
            "latency_ms": round(latency_s * 1000.0, 3),
            "movies": ",".join(movies),
        }
        try:
            self.writer.submit(row)
        except Exception:
            log.exception("provenance submit failed", extra=kv(request_id=g.request_id))
            self.metrics.provenance_event("dropped", 1)


def create_app(
    serving: Serving | None = None,
    paths: Paths | None = None,
    mysql: MySQL | None = None,
    start: bool = True,
) -> Flask:
    """Build the app for one worker; with `start`, load the model now (before the first request)."""
    setup_logging()
    serving = serving or Serving.from_env()
    paths = paths or Paths.from_env()
    mysql = mysql or MySQL.from_env()
    runtime = Runtime(serving, paths, mysql)

    app = Flask(__name__)
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # '/recommend//1' is a bad id (400), not a redirect
    app.url_map.converters["rawtail"] = _RawTail
    app.extensions[EXTENSION] = runtime
    install_exporter(app, serving, lambda response: response.headers.get("X-Model-Version", NO_VERSION))
    _routes(app, runtime)
    if start:
        runtime.start()
    return app


def runtime_of(app: Flask) -> Runtime | None:
    return app.extensions.get(EXTENSION) if isinstance(app, Flask) else None


@functools.lru_cache(maxsize=8)
def _model_checksum(directory: Path, signature: tuple) -> str | None:
    """The bundle's checksum as loaded (keyed by the files' stat at load), read once, not per /version request."""
    try:
        return bundle.checksum(directory)
    except OSError:
        return None


def _text(body: str, status: int) -> Response:
    return Response(body + "\n" if status != 200 else body, status=status, mimetype="text/plain")


def _routes(app: Flask, rt: Runtime) -> None:
    serving = rt.serving

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-Id"] = getattr(g, "request_id", "") or uuid.uuid4().hex
        response.headers["X-Slot"] = serving.role
        if "X-Model-Version" not in response.headers:
            loaded = rt.slot.current
            if loaded is not None:
                response.headers["X-Model-Version"] = loaded.version
        return response

    @app.get("/recommend")
    def recommend_empty() -> Response:
        return _answer_bad_id(rt, "", time.perf_counter())

    @app.get("/recommend/<rawtail:raw>")
    def recommend(raw: str) -> Response:
        return _recommend(rt, raw)

    @app.get("/health")
    def health() -> Response:
        return _text("ok", 200)

    @app.get("/ready")
    def ready() -> Response:
        loaded = rt.slot.current
        if loaded is None:
            return _text(f"not ready: {rt.slot.reason}", 503)
        return _text(f"ready version={loaded.version} slot={serving.slot}", 200)

    @app.get("/version")
    def version() -> Response:
        loaded = rt.slot.current
        if loaded is None:
            body = {"version": None, "slot": serving.slot, "role": serving.role, "reason": rt.slot.reason}
            response = jsonify(body)
            response.status_code = 503
            return response
        meta = loaded.metadata
        metrics = meta.get("metrics") or {}
        return jsonify(
            {
                "version": loaded.version,
                "slot": serving.slot,
                "role": serving.role,
                "data_checksum": meta.get("data_checksum"),
                "trained_at": meta.get("trained_at"),
                "rmse": metrics.get("rmse") if isinstance(metrics, dict) else None,
                "code_commit": meta.get("code_commit"),
                "algorithm": meta.get("algorithm"),
                # the `tracking.model_checksum` of the bundle, never its path: /version tells what runs, not where
                "model_checksum": _model_checksum(loaded.directory, loaded.signature),
            }
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if (exc.code or 500) >= 500:  # Flask's wrapper of an error raised outside a view: still never a 500
            log.error("internal error", extra=kv(request_id=getattr(g, "request_id", "-"), error=exc))
            return _text("service unavailable: internal error (logged)", 503)
        return _text(f"{exc.code} {exc.name}: {_printable(request.path)}", exc.code or 400)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception(
            "unexpected error", extra=kv(request_id=getattr(g, "request_id", "-"), path=_printable(request.path))
        )
        return _text("service unavailable: internal error (logged)", 503)


def _printable(text: str, limit: int = 100) -> str:
    """One line of ASCII whatever the client sent (newlines, unicode, control bytes escaped)."""
    return text[:limit].encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


def _is_shadow() -> bool:
    """A copy NGINX mirrors to the canary in a release's shadow step (nginx.conf clears a client's header):
    its answer is discarded, so it gets no provenance row and its metrics say traffic="shadow"."""
    return request.headers.get(SHADOW_HEADER) == "1"


def _answer_bad_id(rt: Runtime, raw: str, started: float) -> Response:
    loaded = rt.slot.current
    version = loaded.version if loaded else NO_VERSION
    rt.metrics.observe_recommend(version, 400, time.perf_counter() - started, shadow=_is_shadow())
    shown = _printable(raw, 24)
    if raw == "":
        reason = "bad user id: empty (expected 1-18 ASCII digits)"
    elif len(raw) > 18 and raw.isascii() and raw.isdigit():
        reason = f"bad user id: {len(raw)} digits is too long (expected 1-18 ASCII digits)"
    else:
        reason = f"bad user id '{shown}': expected 1-18 ASCII digits"
    return _text(reason, 400)


def _recommend(rt: Runtime, raw: str) -> Response:
    started = time.perf_counter()
    started_ms = int(time.time() * 1000)
    if not USER_ID.fullmatch(raw):
        return _answer_bad_id(rt, raw, started)
    user_id = int(raw)
    loaded = rt.slot.current  # one read: this request uses this model to the end
    shadow = _is_shadow()
    if loaded is None:
        rt.metrics.observe_recommend(NO_VERSION, 503, time.perf_counter() - started, shadow=shadow)
        return _text(f"not ready: {rt.slot.reason}", 503)

    faults = rt.slot.faults
    if faults.latency_ms > 0:
        time.sleep(faults.latency_ms / 1000.0)
    if rt.inject_error(faults.error_ratio):
        rt.metrics.observe_recommend(loaded.version, 503, time.perf_counter() - started, shadow=shadow)
        response = _text("service unavailable: injected fault (drill)", 503)
        response.headers["X-Model-Version"] = loaded.version
        return response

    cold = False
    try:
        made = loaded.model.explain(user_id, N_RECOMMENDATIONS)  # the list and how it was made, one lookup
        movies, cold = made.movies, made.cold
    except Exception:
        log.exception(
            "model failed, answering the fallback list",
            extra=kv(request_id=g.request_id, user=user_id, version=loaded.version),
        )
        movies = list(loaded.fallback[:N_RECOMMENDATIONS])
        cold = True
    if not movies:
        rt.metrics.observe_recommend(loaded.version, 503, time.perf_counter() - started, shadow=shadow)
        response = _text("service unavailable: no eligible movie to recommend", 503)
        response.headers["X-Model-Version"] = loaded.version
        return response
    latency = time.perf_counter() - started
    response = _text(",".join(movies), 200)
    response.headers["X-Model-Version"] = loaded.version
    rt.metrics.observe_recommend(loaded.version, 200, latency, cold=cold, shadow=shadow)
    if not shadow:  # a mirrored copy's list is never shown to the user: no provenance row
        rt.record(loaded, user_id, movies, started_ms, latency)
    return response
