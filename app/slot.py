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

Served from a private read-only copy
    A bundle is never opened in the model store itself: the similarity matrix is memory-mapped,
    so a store file truncated under a worker would kill it with SIGBUS, and one rewritten in place
    would change the model it serves. Before loading, the slot copies the files ``checksums.json``
    lists into ``<run_dir>/bundles/<slot>/<checksum>/`` (the checksum is the sha256 of the copied
    ``checksums.json``, the one `tracking` records), hashing each file as it copies and refusing a
    copy that does not match; only a complete, matching copy is renamed into place, its files
    ``0444`` and its folder ``0555``. The workers of a slot share that one copy (so their mmaps
    share pages); a second worker finds it and only verifies it. Whatever happens to the store
    afterwards, a serving worker is unchanged: a later change of the store's files only makes the
    slot try the new bytes, which it refuses if they are broken. Copies nothing serves are removed
    after each swap and every ``COPY_SWEEP_S`` once ``COPY_GRACE_S`` has passed since a worker
    last used them (removing a mapped file is safe: its pages live until unmapped).

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

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
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

COPY_GRACE_S = 60.0  # a finished copy no worker has used for this long may be removed
STALE_TMP_S = 3600.0  # a half-made copy this old was left by a killed worker
COPY_SWEEP_S = 60.0  # how often the poll thread looks for unused copies
READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_ONLY_DIR = READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


@dataclass(frozen=True)
class Loaded:
    """A verified model and what the server says about it."""

    model: Recommender
    version: str  # X-Model-Version
    version_number: int  # provenance `version_number` (0 when the bundle has no numeric version)
    directory: Path  # the private read-only copy it was loaded from (what actually serves)
    signature: tuple  # stat of the store's bundle files when it was copied ("did the store change")
    fallback: tuple[str, ...]  # list for error paths: the model's `fallback` (nothing known), adult-free
    load_seconds: float
    source: Path = Path()  # the bundle in the model store the copy was made from

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
        on_refuse: Callable[[bool], None] | None = None,
    ) -> None:
        self.serving = serving
        self.paths = paths
        self.mysql = mysql or MySQL.from_env()
        self.on_swap = on_swap
        self.on_refuse = on_refuse  # called with "still serving an older version?" at each refused load
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
        self.copies_dir = paths.run_dir / "bundles" / serving.slot
        self._swept = time.monotonic()

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
                if time.monotonic() - self._swept >= COPY_SWEEP_S:
                    self.sweep_copies()
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
            if current is not None and current.source == directory and current.signature == signature:
                return
            if self._failed == (directory, signature):
                return
            if current is not None and current.source == directory and self._same_copy(directory, current):
                # the store's files changed but its checksums.json did not: the copy that serves is still this
                # bundle's; nothing to load (the store may be damaged; the serving copy is not)
                self._current = dataclasses.replace(current, signature=signature)
                log.warning("bundle files changed in the model store, serving its private copy unchanged",
                            extra=kv(slot=self.serving.slot, bundle=directory, copy=current.directory.name))
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
        if self.on_swap is not None:  # before the log line: "swapped in" means its zero series exist too
            self.on_swap(current, loaded)
        log.info(
            "model swapped in",
            extra=kv(
                slot=self.serving.slot,
                version=loaded.version,
                previous=current.version if current else "none",
                bundle=loaded.source,
                copy=loaded.directory.name,
                load_s=round(loaded.load_seconds, 3),
            ),
        )
        self.sweep_copies()

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
        if self.on_refuse is not None:
            try:
                self.on_refuse(current is not None)
            except Exception:  # a metrics problem must never stop the slot from keeping its model
                log.exception("refusal callback failed", extra=kv(slot=self.serving.slot))
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
        copy, model = self._load_copy(directory)
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
        self._check_tracking(copy, number, directory)
        return Loaded(
            model=model,
            version=version,
            version_number=number,
            directory=copy,
            signature=signature,
            fallback=fallback,
            load_seconds=time.perf_counter() - started,
            source=directory,
        )

    # ------------------------------------------------------------------ private copies
    @staticmethod
    def _same_copy(directory: Path, current: Loaded) -> bool:
        """Does the store's ``checksums.json`` still name the copy serving now?"""
        try:
            return hashlib.sha256((directory / bundle.CHECKSUMS).read_bytes()).hexdigest() == current.directory.name
        except OSError:
            return False
    def _load_copy(self, directory: Path) -> tuple[Path, Recommender]:
        """Copy (or find the copy of) `directory` and load it; a found copy that fails is made again, once."""
        copy, fresh = self._private_copy(directory)
        try:
            return copy, Recommender.load(copy)  # verifies every checksum of the copy it will serve
        except BundleError as exc:
            if fresh:
                raise
            log.warning("bundle copy damaged, copying again",
                        extra=kv(slot=self.serving.slot, copy=copy.name, reason=exc))
            _remove_tree(copy)
        copy, _ = self._private_copy(directory)
        return copy, Recommender.load(copy)

    def _private_copy(self, directory: Path) -> tuple[Path, bool]:
        """The read-only copy of `directory` this slot serves from, and whether this call made it."""
        sums_raw = _read_checksums(directory)
        name = hashlib.sha256(sums_raw).hexdigest()
        final = self.copies_dir / name
        if final.is_dir():
            with contextlib.suppress(OSError):
                os.utime(final)  # "in use": the sweep keeps it
            return final, False
        self.copies_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.copies_dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            _copy_verified(directory, sums_raw, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # not "another worker was quicker"
                    raise
                log.debug("bundle copy made by another worker", extra=kv(slot=self.serving.slot, copy=name))
            else:
                log.info("bundle copied for serving", extra=kv(slot=self.serving.slot, bundle=directory, copy=name))
        finally:
            if tmp.exists():
                _remove_tree(tmp)
        return final, True

    def sweep_copies(self) -> list[str]:
        """Remove copies nothing serves (past their grace) and half-made ones of killed workers; returns them."""
        self._swept = time.monotonic()
        current = self._current
        keep = current.directory.name if current is not None else None
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.copies_dir))
        except OSError:
            return removed
        now = time.time()
        for entry in entries:
            if entry.name == keep:
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age < (STALE_TMP_S if entry.name.endswith(".tmp") else COPY_GRACE_S):
                continue
            try:
                _remove_tree(Path(entry.path))
            except OSError as exc:
                log.warning("cannot remove an unused bundle copy",
                            extra=kv(slot=self.serving.slot, copy=entry.name, reason=exc))
                continue
            removed.append(entry.name)
        if removed:
            log.info("unused bundle copies removed", extra=kv(slot=self.serving.slot, copies=",".join(removed)))
        return removed

    def _check_tracking(self, copy: Path, number: int, directory: Path) -> None:
        """Refuse a bundle whose checksum (of the `copy` that serves) is not the one `tracking` recorded."""
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
                    actual = bundle.checksum(copy)
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


def _read_checksums(directory: Path) -> bytes:
    """``checksums.json`` read once, so the copy and its name agree; valid per `bundle.listed_files`."""
    try:
        raw = (directory / bundle.CHECKSUMS).read_bytes()
    except OSError:
        raw = b""  # listed_files below says why (missing bundle, missing file)
    listed = bundle.listed_files(directory)  # exists, parses, lists metadata.json, names only plain files
    try:
        same = json.loads(raw) == listed
    except ValueError:
        same = False
    if not same:
        raise BundleError(f"model bundle {directory}: {bundle.CHECKSUMS} changed while being read")
    return raw


def _copy_verified(directory: Path, sums_raw: bytes, target: Path) -> None:
    """Copy every file `sums_raw` lists into `target`, hashing as it copies; read-only when done.

    Hashing the bytes actually written (not the store's file a second time) is what makes the copy
    trustworthy: a store file changed during the copy gives a mismatch here, never a mixed copy.
    """
    sums = json.loads(sums_raw)  # validated by `_read_checksums`
    target.mkdir(parents=True)
    for name, expected in sums.items():
        digest = hashlib.sha256()
        try:
            with (directory / name).open("rb") as src, (target / name).open("xb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except FileNotFoundError:
            raise BundleError(f"model bundle {directory} is partial: {name} missing") from None
        if digest.hexdigest() != expected:
            raise BundleError(f"model bundle {directory}: checksum mismatch on {name} (corrupt or tampered)")
        os.chmod(target / name, READ_ONLY_FILE)
    (target / bundle.CHECKSUMS).write_bytes(sums_raw)
    os.chmod(target / bundle.CHECKSUMS, READ_ONLY_FILE)
    os.chmod(target, READ_ONLY_DIR)


def _remove_tree(path: Path) -> None:
    """`shutil.rmtree` of a copy whose folder is read-only (files in it can only go once it is writable)."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, stat.S_IRWXU)
    shutil.rmtree(path)
