"""Gunicorn configuration of an inference server: `gunicorn -c app/gunicorn.conf.py 'app:create_app()'`.

Everything comes from the environment (``app.settings.Serving``): ``MOVIEREC_SLOT``,
``MOVIEREC_PORT``, ``MOVIEREC_HOST``, ``MOVIEREC_WORKERS``, the bundle (``MOVIEREC_MODEL_DIR``) or the
models root + slot pointer, ``PROMETHEUS_MULTIPROC_DIR``, and the MySQL DSN (``MYSQL_*``).

Process model
    The master only manages workers; each worker builds the app and loads the model itself
    (``preload_app = False``; why, in ``app/slot.py``). The master does import the libraries
    (numpy, pandas, scipy, Flask) once in ``on_starting`` so that forked workers share those pages
    and boot in milliseconds (what a SIGHUP's new workers wait for), but never a model.

Why ``gthread`` with a few threads
    An answer is a few ms of numpy work, much of it outside the GIL. Threads keep one slow client,
    an NGINX keep-alive connection, a health probe or a ``/metrics`` scrape from holding a whole
    worker (as the ``sync`` worker would), and a drill's injected sleep only parks one thread.
    Four threads per worker is enough on two cores; more would only queue on the GIL.

Reload: write the slot pointer (zero gap), or ``kill -HUP <master>`` (new workers load the version
the pointer names before accepting; see ``app/slot.py``). Code changes need a full restart.
"""

from __future__ import annotations

import logging
import os

from app.settings import Serving

_serving = Serving.from_env()

# prometheus-client picks its multiprocess mode when first imported: decide before anything does.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _serving.metrics_dir)
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

bind = f"{_serving.host}:{_serving.port}"
workers = max(1, _serving.workers)
worker_class = "gthread"
threads = 4
preload_app = False
timeout = 30  # a worker silent this long is killed and replaced (loading happens off its main loop)
graceful_timeout = 20  # in-flight requests and the provenance drain on stop/SIGHUP
keepalive = 5  # NGINX keeps upstream connections open
backlog = 512  # connections wait here, not fail, while SIGHUP's new workers boot
proc_name = f"movierec-{_serving.slot}"
control_socket_disable = True  # gunicorn 24+'s control socket: one fixed path shared by all slots, unused
accesslog = "-"
errorlog = "-"
access_log_format = (
    '%(h)s "%(r)s" %(s)s %(B)s %(L)ss rid=%({x-request-id}o)s version=%({x-model-version}o)s worker=%(p)s'
)

_log = logging.getLogger("gunicorn.error")


def on_starting(server) -> None:
    """Master, once: wipe the previous run's metric files, import the libraries workers share."""
    from app.metrics import wipe_multiproc_dir

    removed = wipe_multiproc_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    import app.server  # noqa: F401  (libraries only: no model, no thread, no socket)

    server.log.info(
        "inference server starting slot=%s bind=%s workers=%s metrics_dir=%s wiped=%d",
        _serving.slot, bind, workers, os.environ["PROMETHEUS_MULTIPROC_DIR"], removed,
    )


def on_reload(server) -> None:
    server.log.info("SIGHUP: new workers will load the version the pointer names slot=%s", _serving.slot)


def post_fork(server, worker) -> None:
    """Worker, right after the fork: nothing is running yet; the app (and model) load next."""
    server.log.debug("worker forked pid=%s", worker.pid)


def post_worker_init(worker) -> None:
    """Worker, app built, before accepting: make sure the model slot and provenance writer run."""
    from app.server import runtime_of

    runtime = runtime_of(worker.wsgi)
    if runtime is None:
        return
    runtime.start()  # idempotent: create_app() has started it already
    loaded = runtime.slot.current
    worker.log.info(
        "worker ready pid=%s slot=%s version=%s%s",
        worker.pid, _serving.slot, loaded.version if loaded else "none",
        "" if loaded else f" (not ready: {runtime.slot.reason})",
    )


def worker_exit(server, worker) -> None:
    """Worker, on its way out: stop the pointer thread, drain provenance rows (MySQL or spool)."""
    from app.server import runtime_of

    runtime = runtime_of(getattr(worker, "wsgi", None))
    if runtime is not None:
        runtime.close(timeout=max(1.0, graceful_timeout - 5))


def child_exit(server, worker) -> None:
    """Master: a worker is gone; drop its live gauges from the multiprocess files."""
    from app.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
