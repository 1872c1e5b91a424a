"""The model a worker serves, and how it changes version under load without a failed request.

Which bundle
    ``MOVIEREC_MODEL_DIR``, when set, is served directly. Otherwise the slot's pointer file
    (``MOVIEREC_POINTER``, default ``<run_dir>/slots/<slot>``) holds a version number (``3\\n``),
    resolved to ``<models_dir>/3/``. The format is `app.contracts.pointer`'s: deployers write it
    with `pointer.write_number` (temporary file, fsync, rename), so a reader never sees half a number.

Loaded in each worker, never in the Gunicorn master
    ``create_app()`` runs in every worker after the fork (``preload_app = False``) and loads the
    model before the worker accepts its first connection. Not preloading it in the master is
    deliberate: (1) on SIGHUP Gunicorn forks the *new* workers from the master, so a model
    preloaded there would be the one of master start-up forever and a SIGHUP could never change the
    version; (2) the poll thread below would have to live in the master, and threads do not survive
    a fork; (3) sharing comes anyway: the large user×user similarity matrix is memory-mapped
    read-only (``Recommender.load(mmap=True)``), so all workers share its page-cache pages; what
    each worker holds privately is a few MB of sparse arrays.

Zero-gap reload: write the pointer
    A daemon thread per worker checks every ``reload_poll_s`` seconds: it reads the pointer (a few
    bytes, read every time: file mtimes are too coarse to catch two quick writes) and stats the
    target bundle's files (`app.contracts.bundle.signature`: mtime, size, inode). When the target
    differs from what is serving, the thread loads the bundle, verifies every checksum, smoke-tests a
    known user and the model's fallback list, and only then swaps one reference. Requests never
    wait on a lock and never see a half-loaded model: each request takes the reference once and
    uses that model to the end.
    A pointer naming a missing, partial or corrupt bundle (or garbage) leaves the current model
    serving and logs ``model reload refused`` with the reason; the same bundle is retried only once
    its files change (a copy that was still running, a re-save), so a broken bundle costs one
    checksum pass, not one per poll. A worker that starts with no loadable bundle still starts:
    ``/ready`` answers 503 with the reason and the worker becomes ready when the pointer names a
    valid bundle.

Checked against ``tracking`` (``MOVIEREC_VERIFY_TRACKING``, default on)
    A bundle's own checksums only prove its files match its ``checksums.json``; whoever can write the
    store can alter a file and re-hash. So after the checksum pass the slot compares the bundle's
    checksum (`bundle.checksum`, the sha256 of ``checksums.json``) with ``tracking.model_checksum`` of
    its version, read with the app account. Policy:

    * row with a different checksum: refused like any broken bundle (``model reload refused`` with
      the reason, the current model keeps serving; ``/ready`` 503 with the reason when there is none);
    * no row, no model checksum in it, or no numeric version (a ``MOVIEREC_MODEL_DIR`` bundle, a test
      bundle): served, logged as ``model not verified against tracking``;
    * MySQL unreachable or the query fails: served (the files passed their checksums) and logged as
      unverified - a slot never stops serving, nor refuses to start, because MySQL is down.

SIGHUP also works
    ``kill -HUP <master>`` re-reads the config and forks new workers, which load the version the
    pointer names *before* accepting; the old workers then finish their in-flight requests and
    exit. No request fails, but requests that arrive while the new workers boot wait in the listen
    backlog for that time, which is why the pointer write is the documented zero-gap path.

Fault injection (drills)
    ``MOVIEREC_FAULT_LATENCY_MS`` adds that many ms to every ``/recommend``;
    ``MOVIEREC_FAULT_ERROR_RATIO`` answers that share of them ``503`` (seeded random). A drill can
    change both live with ``<run_dir>/faults/<slot>.json``, e.g. ``{"latency_ms": 300,
    "error_ratio": 0.2}``: it is checked with the pointer and overrides the environment while it
    exists (missing keys count as 0); delete it to return to the environment's values.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app import store
from app.contracts import bundle, pointer
from app.logs import kv
from app.model import LIST_WIDTH, BundleError, Recommender
from app.settings import MySQL, Paths, Serving

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A verified model and what the server says about it."""

    model: Recommender
    version: str  # X-Model-Version
    version_number: int  # provenance `version_number` (0 when the bundle has no numeric version)
    directory: Path
    signature: tuple  # stat of the bundle files it was loaded from
    fallback: tuple[str, ...]  # list for error paths: the model's `fallback` (nothing known), adult-free
    load_seconds: float

    @property
    def metadata(self) -> dict:
        return self.model.metadata


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0.0
    error_ratio: float = 0.0
    source: str = "env"


class ModelSlot:
    """Holds the model a worker serves; a daemon thread follows the pointer and swaps versions."""

    def __init__(
        self,
        serving: Serving,
        paths: Paths,
        on_swap: Callable[[Loaded | None, Loaded], None] | None = None,
        mysql: MySQL | None = None,
    ) -> None:
        self.serving = serving
        self.paths = paths
        self.mysql = mysql or MySQL.from_env()
        self.on_swap = on_swap
        self.faults_file = paths.run_dir / "faults" / f"{serving.slot}.json"
        self._env_faults = Faults(serving.fault_latency_ms, serving.fault_error_ratio, "env")
        self.faults: Faults = self._env_faults
        self._current: Loaded | None = None
        self.reason = "starting: no model loaded yet"
        self._failed: tuple | None = None  # (directory, signature) that failed last, not retried
        self._faults_raw: bytes | None = None
        self._pointer_problem: str | None = None
        self._lock = threading.Lock()  # one check at a time (start() and the thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request side
    @property
    def current(self) -> Loaded | None:
        """The model to use for one request: read the reference once and keep it."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Load what the pointer names now (before the worker accepts), then start following it."""
        if self._thread is not None:
            return
        self.check()
        if self._current is None:
            log.warning("no model to serve yet", extra=kv(slot=self.serving.slot, reason=self.reason))
        self._thread = threading.Thread(target=self._run, name=f"model-slot-{self.serving.slot}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, self.serving.reload_poll_s)):
            try:
                self.check()
            except Exception:  # the follower must never die: log and keep polling
                log.exception("model slot check failed", extra=kv(slot=self.serving.slot))

    # ------------------------------------------------------------------ one poll
    def check(self) -> None:
        """Refresh the fault override, then load and swap if the target bundle changed."""
        with self._lock:
            self._check_faults()
            target = self._target()
            if target is None:
                return
            directory, want_version = target
            signature = bundle.signature(directory)
            current = self._current
            if current is not None and current.directory == directory and current.signature == signature:
                return
            if self._failed == (directory, signature):
                return
            try:
                loaded = self._load(directory, want_version, signature)
            except (BundleError, ValueError, OSError) as exc:
                self._failed = (directory, signature)
                self._refuse(directory, str(exc))
                if self._current is None:
                    self._fall_back_to_last_good(want_version)
                return
            self._failed = None
            self._swap(loaded)
            if want_version is not None:
                self._remember_good(want_version)

    def _swap(self, loaded: Loaded) -> None:
        """The one moment a version changes: a single reference assignment, then the bookkeeping."""
        current = self._current
        self._current = loaded
        self.reason = ""
        log.info(
            "model swapped in",
            extra=kv(
                slot=self.serving.slot,
                version=loaded.version,
                previous=current.version if current else "none",
                bundle=loaded.directory,
                load_s=round(loaded.load_seconds, 3),
            ),
        )
        if self.on_swap is not None:
            self.on_swap(current, loaded)

    @property
    def last_good_file(self) -> Path:
        """Version some worker of this slot last swapped in; a worker that boots while the pointer
        names a broken bundle serves it instead of nothing (the "keep the old model" rule holds
        across SIGHUP and worker respawns too)."""
        pointer = Path(self.serving.pointer_file)
        return pointer.with_name(pointer.name + ".last-good")

    def _remember_good(self, version: str) -> None:
        try:
            pointer.write_number(self.last_good_file, version)
        except OSError as exc:
            log.warning("cannot record the last good version", extra=kv(slot=self.serving.slot, reason=exc))

    def _fall_back_to_last_good(self, broken: str | None) -> None:
        try:
            number = pointer.read_number(self.last_good_file)
        except (OSError, pointer.VersionFileError):
            return
        if number is None or str(number) == broken:
            return
        version = str(number)
        directory = self.paths.models_dir / version
        try:
            loaded = self._load(directory, version, bundle.signature(directory))
        except (BundleError, ValueError, OSError) as exc:
            log.error("last good version unusable too", extra=kv(slot=self.serving.slot, version=version, reason=exc))
            return
        log.warning(
            "serving the last good version until the pointer names a valid bundle",
            extra=kv(slot=self.serving.slot, version=version, pointer_names=broken or "-"),
        )
        self._swap(loaded)

    def _target(self) -> tuple[Path, str | None] | None:
        """(bundle directory, version the pointer names or None for a direct bundle), or None."""
        if self.serving.model_dir:
            return Path(self.serving.model_dir), None
        path = Path(self.serving.pointer_file)
        try:
            with path.open("rb") as fh:
                raw = fh.read(pointer.MAX_BYTES + 1)
        except FileNotFoundError:
            return self._pointer_unusable(f"pointer file {path} does not exist")
        except OSError as exc:
            return self._pointer_unusable(f"pointer file {path} cannot be read: {exc}")
        try:
            version = str(pointer.parse(raw, f"pointer file {path}"))
        except pointer.VersionFileError as exc:
            return self._pointer_unusable(str(exc))
        self._pointer_problem = None
        return self.paths.models_dir / version, version

    def _pointer_unusable(self, why: str) -> None:
        if why != self._pointer_problem:  # say it once, not once per poll
            self._pointer_problem = why
            self._refuse(None, why)
            if self._current is None:
                self._fall_back_to_last_good(None)
        return None

    def _refuse(self, directory: Path | None, why: str) -> None:
        current = self._current
        if current is None:
            self.reason = why
            log.error("no model loaded", extra=kv(slot=self.serving.slot, bundle=directory or "-", reason=why))
        else:
            log.error(
                "model reload refused, keeping the current version",
                extra=kv(slot=self.serving.slot, serving=current.version, bundle=directory or "-", reason=why),
            )

    def _load(self, directory: Path, want_version: str | None, signature: tuple) -> Loaded:
        """Load, verify and smoke-test a bundle off the request path; raises on any problem."""
        started = time.perf_counter()
        model = Recommender.load(directory)  # verifies every checksum
        recorded = str(model.metadata.get("version", "")).strip()
        if want_version is not None:
            if recorded.isdigit() and str(int(recorded)) != want_version:
                raise BundleError(
                    f"model bundle {directory} records version {recorded}, the pointer names {want_version}"
                )
            version = want_version
        else:
            version = recorded or directory.name
        # smoke test on the real code path: a known user must get a list, and so must a stranger
        if len(model.user_ids):
            model.explain(int(model.user_ids[0]))
        fallback = tuple(model.fallback(LIST_WIDTH))
        if not fallback:
            raise BundleError(f"model bundle {directory} recommends nothing (empty catalogue?)")
        number = int(version) if version.isdigit() else 0
        self._check_tracking(directory, number)
        return Loaded(
            model=model,
            version=version,
            version_number=number,
            directory=directory,
            signature=signature,
            fallback=fallback,
            load_seconds=time.perf_counter() - started,
        )

    def _check_tracking(self, directory: Path, number: int) -> None:
        """Refuse a bundle whose checksum is not the one `tracking` recorded for its version (policy: docstring)."""
        if not self.mysql.verify_tracking:
            return
        why = ""
        if number <= 0:
            why = "the bundle has no numeric version"
        else:
            try:
                tracked = store.tracked_model_checksum(self.mysql, number)
            except store.DatabaseError as exc:  # includes DatabaseUnreachable: serve, never stop for MySQL
                why = f"MySQL did not answer ({exc})"
            else:
                if tracked is None:
                    why = f"version {number} has no tracking row with a model checksum"
                else:
                    actual = bundle.checksum(directory)
                    if actual != tracked:
                        raise BundleError(
                            f"model bundle {directory} has checksum {actual}, tracking records {tracked} for "
                            f"version {number}: altered after it was recorded"
                        )
                    return
        log.warning("model not verified against tracking, serving it on its own checksums",
                    extra=kv(slot=self.serving.slot, bundle=directory, version=number or "-", reason=why))

    # ------------------------------------------------------------------ faults
    def _check_faults(self) -> None:
        try:
            raw = self.faults_file.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            log.warning("fault file unreadable", extra=kv(slot=self.serving.slot, file=self.faults_file, reason=exc))
            return
        if raw == self._faults_raw:
            return
        self._faults_raw = raw
        if raw is None:
            self.faults = self._env_faults
        else:
            try:
                spec = json.loads(raw or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("not a JSON object")
                latency = float(spec.get("latency_ms", 0.0))
                ratio = float(spec.get("error_ratio", 0.0))
                if latency < 0 or not 0.0 <= ratio <= 1.0:
                    raise ValueError("latency_ms must be >= 0 and error_ratio within [0, 1]")
            except (ValueError, TypeError) as exc:
                log.error(
                    "fault file ignored", extra=kv(slot=self.serving.slot, file=self.faults_file, reason=exc)
                )
                return
            self.faults = Faults(latency, ratio, str(self.faults_file))
        log.warning(
            "fault injection changed",
            extra=kv(
                slot=self.serving.slot,
                latency_ms=self.faults.latency_ms,
                error_ratio=self.faults.error_ratio,
                source=self.faults.source,
            ),
        )
