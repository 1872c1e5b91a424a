"""Provenance rows of served requests, written to MySQL in the background (design section 5).

Every ``/recommend`` answer becomes one ``reccom`` row. :class:`ProvenanceWriter` keeps MySQL off
the request path: :meth:`~ProvenanceWriter.submit` appends the row to an in-memory queue and returns
(no I/O, no lock held for more than a flag check); a background thread writes the queue in batches
(``executemany`` of one ``INSERT IGNORE``) as the app account, which may only insert into ``reccom``.

When MySQL is down, slow or refuses us, a batch goes to an on-disk spool instead: JSON lines
appended to one file per writer (``<spool_dir>/<time_ns>-<host>-<pid>-<tag>.jsonl``), each append
fsync'd. The thread retries the connection with exponential backoff; once it connects, it replays
every spool file, oldest first, and deletes each file after its last row is written. While a spool
file of this writer is not yet replayed, new batches are appended to it rather than written
directly, so rows reach MySQL in the order they were submitted.

Why this is crash-safe
    A row is in exactly one of three places: the in-memory queue, a spool file on disk (fsync'd
    before the batch counts as spooled), or MySQL. A spool file is deleted only after all its rows
    were inserted. Replaying is idempotent: ``row_id`` (one per served answer) is UNIQUE and every
    insert is ``INSERT IGNORE``, so a batch that reached MySQL but whose acknowledgement was lost (a timeout, a crash
    between insert and delete) is simply ignored the second time - exactly once, never twice.
    Files left by a process that died are replayed by the next writer that starts (or scans, every
    ``scan_interval_s``) on the same spool directory. Each live writer holds an ``flock`` on its own
    file for as long as it exists, and a writer replays another's file only after taking that lock,
    so two live workers never replay the same file (files are created under a temporary name, locked,
    then renamed, so no one can take a file between its creation and its lock).

The bounded risk
    Rows still in memory when the process is killed hard (SIGKILL, OOM, power loss) are lost: at
    most the rows submitted during the last ``flush_interval_s`` plus one batch being written (or,
    while MySQL stalls, up to ``connect_timeout_s`` more). A half-written last line of a spool file
    (killed mid-append) is skipped on replay and counted as dropped. A clean shutdown
    (:meth:`~ProvenanceWriter.close`) loses nothing: it writes or spools everything.

Memory is bounded too: past ``spill_rows`` queued rows, the thread spills the queue to the spool
rather than waiting for MySQL; past ``max_queue`` (the thread is dead or wedged) ``submit`` drops
and counts the row rather than grow without end. ``on_event(outcome, n)`` reports ``written`` (rows
now in MySQL, replays included), ``spooled`` (rows that went to disk) and ``dropped``, so the
server can export them to Prometheus. Create the writer in the process that uses it (in a Gunicorn
worker, after the fork): threads do not survive ``fork``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import pymysql

from app.logs import kv
from app.settings import MySQL

log = logging.getLogger(__name__)

COLUMNS = ("row_id", "request_id", "served_at_ms", "user_id", "version_number", "slot", "host", "latency_ms", "movies")
INSERT_SQL = f"INSERT IGNORE INTO reccom ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
SPOOL_SUFFIX = ".jsonl"

EventHook = Callable[[str, int], None]


class _Outage(Exception):
    """MySQL could not take a batch now (down, slow, refused, schema missing): keep the rows, retry later."""


class _SpoolFile:
    """This writer's own spool file: open for append and flock'ed for as long as it exists."""

    def __init__(self, path: Path, fh: IO[bytes]) -> None:
        self.path = path
        self.fh = fh
        self.rows = 0


def normalise(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row with the types of `reccom`, or None when it cannot be stored (missing key, bad value)."""
    try:
        movies = row["movies"]
        if not isinstance(movies, str):
            movies = ",".join(str(m) for m in movies)
        latency = row.get("latency_ms")
        out = {
            # a spool written before rows had their own id used the request id as the key
            "row_id": str(row.get("row_id") or row["request_id"]),
            "request_id": str(row["request_id"]),
            "served_at_ms": int(row["served_at_ms"]),
            "user_id": int(row["user_id"]),
            "version_number": int(row["version_number"]),
            "slot": str(row["slot"]),
            "host": str(row.get("host") or socket.gethostname()),
            "latency_ms": None if latency is None else float(latency),
            "movies": movies,
        }
    except (KeyError, TypeError, ValueError):
        return None
    if not 0 < len(out["request_id"]) <= 64 or not 0 < len(out["row_id"]) <= 64 or out["version_number"] < 0:
        return None
    return out


class ProvenanceWriter:
    """Batched, spooling, exactly-once writer of `reccom` rows (see the module docstring)."""

    def __init__(
        self,
        settings: MySQL,
        on_event: EventHook | None = None,
        *,
        spill_rows: int | None = None,
        max_queue: int | None = None,
        max_backoff_s: float = 10.0,
        scan_interval_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.batch_size = max(1, settings.batch_size)
        self.flush_s = max(0.01, settings.flush_interval_s)
        self.timeout_s = max(0.1, settings.connect_timeout_s)
        self.spool_dir = Path(settings.spool_dir)
        self.spill_rows = spill_rows or max(10 * self.batch_size, 10_000)
        self.max_queue = max_queue or max(10 * self.spill_rows, 100_000)
        self.base_backoff_s = min(1.0, max(0.05, self.flush_s))
        self.max_backoff_s = max(self.base_backoff_s, max_backoff_s)
        self.scan_interval_s = scan_interval_s

        self._queue: deque[dict[str, Any]] = deque()
        self._submit_lock = threading.Lock()
        self._spool_lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline = float("inf")

        self._conn: pymysql.connections.Connection | None = None
        self._own: _SpoolFile | None = None
        self._down_since: float | None = None
        self._down_error = ""
        self._backoff = self.base_backoff_s
        self._retry_at = 0.0
        self._next_scan = 0.0
        self._outage_rows = 0

    # ------------------------------------------------------------------------------ caller side
    def start(self) -> ProvenanceWriter:
        """Start the background thread; it first replays any spool left in `spool_dir`."""
        if not self.settings.enabled or self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="provenance-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # an orderly interpreter exit drains like close() would
        return self

    def submit(self, row: dict[str, Any]) -> None:
        """Queue one row for MySQL. Never blocks on I/O; never raises for a bad row (it is counted dropped)."""
        if not self.settings.enabled:
            return
        with self._submit_lock:
            if not self._closed:
                if len(self._queue) >= self.max_queue:
                    self._emit("dropped", 1)
                    return
                self._queue.append(row)
                if len(self._queue) >= self.batch_size:
                    self._wake.set()
                return
        # After close() (process shutting down): keep the row on disk, unlocked, for the next writer to replay.
        good = normalise(row)
        if good is None:
            self._emit("dropped", 1)
            return
        with self._spool_lock:
            self._spool([good])
            self._release_own()

    def close(self, timeout: float = 5.0) -> None:
        """Drain: write what is queued to MySQL, or spool it when MySQL cannot take it within `timeout`."""
        if self._closed:
            return
        atexit.unregister(self.close)
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            # Every MySQL call is bounded by the timeout, so the thread ends soon after the deadline.
            thread.join(timeout + 2 * self.timeout_s + 1.0)
        with self._submit_lock:
            self._closed = True
        leftovers = self._take(len(self._queue))
        if leftovers:
            self._spool(leftovers)
        if thread is not None and thread.is_alive():
            log.error("provenance writer did not stop in time; its batch in flight may be lost",
                      extra=kv(timeout_s=timeout))
        with self._spool_lock:
            self._release_own()

    def __enter__(self) -> ProvenanceWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def queued(self) -> int:
        """Rows waiting in memory."""
        return len(self._queue)

    @property
    def spooling(self) -> bool:
        """True while this writer has rows on disk that MySQL has not got yet."""
        return self._own is not None

    # ------------------------------------------------------------------------------ thread side
    def _run(self) -> None:
        self._safe(self._recover)
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self.flush_s)
                self._wake.clear()
                stopping = self._stop.is_set()
            self._safe(self._cycle)
            if stopping and not self._queue:
                break
        self._drop_connection()
        with self._spool_lock:
            self._release_own()

    def _safe(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception:  # the writer thread must survive anything: rows keep flowing to the spool
            log.exception("provenance writer step failed")
            time.sleep(min(1.0, self.flush_s))

    def _cycle(self) -> None:
        now = time.monotonic()
        due = self._down_since is not None or self._own is not None or now >= self._next_scan
        # Closing: one more attempt whatever the backoff says, so a clean shutdown leaves no spool behind.
        if due and (self._down_since is None or now >= self._retry_at or self._stop.is_set()):
            self._recover()
        while self._queue:
            batch = self._take(self.batch_size)
            if batch:
                self._deliver(batch)
        if self._stop.is_set() and self._own is not None and self._down_since is None:
            self._recover()  # closing with rows just spilled to disk while MySQL is fine: write them now

    def _hurry(self) -> bool:
        """Shutting down with too little time left for one more MySQL round trip."""
        return self._stop.is_set() and time.monotonic() > self._deadline - self.timeout_s

    def _take(self, n: int) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        bad = 0
        for _ in range(n):
            try:
                row = self._queue.popleft()
            except IndexError:
                break
            good = normalise(row)
            if good is None:
                bad += 1
            else:
                batch.append(good)
        if bad:
            log.warning("provenance rows dropped: missing or invalid fields", extra=kv(rows=bad))
            self._emit("dropped", bad)
        return batch

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        overfull = len(self._queue) > self.spill_rows
        if self._down_since is not None or self._own is not None or overfull or self._hurry():
            self._spool(batch)
            return
        try:
            self._insert(batch)
        except _Outage as exc:
            self._enter_outage(exc)
            self._spool(batch)
            return
        self._emit("written", len(batch))

    # -------------------------------------------------------------------------------- MySQL
    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is None:
            try:
                self._conn = pymysql.connect(
                    host=self.settings.host,
                    port=self.settings.port,
                    user=self.settings.app_user,
                    password=self.settings.app_password,
                    database=self.settings.database,
                    connect_timeout=self.timeout_s,
                    read_timeout=self.timeout_s,
                    write_timeout=self.timeout_s,
                    autocommit=True,
                    charset="utf8mb4",
                )
            except (pymysql.err.MySQLError, OSError) as exc:
                raise _Outage(_describe(exc)) from exc
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """One multi-row INSERT IGNORE; a stale connection gets one fresh retry (replays are harmless)."""
        params = [tuple(r[c] for c in COLUMNS) for r in rows]
        for attempt in range(2):
            fresh = self._conn is None
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.executemany(INSERT_SQL, params)
                return
            except pymysql.err.DataError:
                try:
                    self._insert_one_by_one(conn, params)
                except (pymysql.err.MySQLError, OSError) as exc:  # lost mid-way: spool the batch, never drop it
                    self._drop_connection()
                    raise _Outage(_describe(exc)) from exc
                return
            except (pymysql.err.MySQLError, OSError) as exc:
                self._drop_connection()
                if fresh or attempt == 1:
                    raise _Outage(_describe(exc)) from exc

    def _insert_one_by_one(self, conn: pymysql.connections.Connection, params: list[tuple]) -> None:
        """A batch MySQL calls malformed: store every row it accepts, drop (and count) only the bad ones."""
        bad = 0
        with conn.cursor() as cur:
            for p in params:
                try:
                    cur.execute(INSERT_SQL, p)
                except pymysql.err.DataError:
                    bad += 1
        if bad:
            log.warning("provenance rows refused by MySQL as malformed", extra=kv(rows=bad))
            self._emit("dropped", bad)

    def _enter_outage(self, exc: _Outage) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._down_error = str(exc)
            self._outage_rows = 0
            self._backoff = self.base_backoff_s
            log.warning("provenance: MySQL unreachable, spooling rows to disk",
                        extra=kv(error=str(exc), spool_dir=self.spool_dir))
        else:
            self._backoff = min(self._backoff * 2, self.max_backoff_s)
        self._retry_at = now + self._backoff * random.uniform(0.8, 1.2)

    def _recover(self) -> None:
        """Connect and replay every claimable spool file, oldest first; on failure, back off."""
        now = time.monotonic()
        files = self._spool_files()
        self._next_scan = now + self.scan_interval_s
        if not files and self._down_since is None:
            return
        try:
            self._connection()
            replayed = 0
            for path in files:
                if self._hurry():
                    return
                replayed += self._replay(path)
        except _Outage as exc:
            self._enter_outage(exc)
            return
        if self._down_since is not None:
            log.info("provenance: MySQL reachable again, spool replayed",
                     extra=kv(down_s=round(now - self._down_since, 3), spooled=self._outage_rows,
                              replayed=replayed, error=self._down_error))
            self._down_since = None
            self._backoff = self.base_backoff_s

    # -------------------------------------------------------------------------------- spool
    def _spool_files(self) -> list[Path]:
        try:
            names = sorted(p for p in os.listdir(self.spool_dir) if p.endswith(SPOOL_SUFFIX) and p[0] != ".")
        except FileNotFoundError:
            return []
        return [self.spool_dir / n for n in names]

    def _open_own(self) -> _SpoolFile:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SPOOL_SUFFIX}"
        tmp = self.spool_dir / f".{name}.tmp"
        fh = open(tmp, "ab")  # noqa: SIM115 - held open (and locked) for as long as the file exists
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.spool_dir / name
        os.rename(tmp, path)
        _fsync_dir(self.spool_dir)
        return _SpoolFile(path, fh)

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to this writer's spool file and fsync; only a failing disk drops them."""
        if not rows:
            return
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
        with self._spool_lock:
            try:
                if self._own is None:
                    self._own = self._open_own()
                self._own.fh.write(data)
                self._own.fh.flush()
                os.fsync(self._own.fh.fileno())
                self._own.rows += len(rows)
            except OSError as exc:
                log.error("provenance rows dropped: cannot write the spool",
                          extra=kv(rows=len(rows), spool_dir=self.spool_dir, error=exc))
                self._emit("dropped", len(rows))
                return
        self._outage_rows += len(rows)
        self._emit("spooled", len(rows))

    def _release_own(self) -> None:
        """Close (and unlock) this writer's file; rows still in it stay on disk for the next writer."""
        own, self._own = self._own, None
        if own is not None:
            with contextlib.suppress(OSError):
                own.fh.close()

    def _replay(self, path: Path) -> int:
        """Write one spool file to MySQL and delete it; returns rows written. Raises _Outage to keep it."""
        with self._spool_lock:
            if self._own is not None and self._own.path == path:
                with open(path, "rb") as fh:
                    n = self._replay_lines(path, fh)
                path.unlink()
                _fsync_dir(self.spool_dir)
                self._release_own()
                return n
        fh = _claim(path)
        if fh is None:
            return 0
        try:
            n = self._replay_lines(path, fh)
            path.unlink()
            _fsync_dir(self.spool_dir)
            return n
        finally:
            fh.close()

    def _replay_lines(self, path: Path, fh: IO[bytes]) -> int:
        written = bad = 0
        batch: list[dict[str, Any]] = []
        for line in _lines(fh):
            try:
                row = normalise(json.loads(line))
            except ValueError:
                row = None
            if row is None:
                bad += 1
                continue
            batch.append(row)
            if len(batch) >= self.batch_size:
                if self._hurry():
                    raise _Outage("shutting down: replay left for the next start")
                self._insert(batch)
                written += len(batch)
                self._emit("written", len(batch))
                batch = []
        if batch:
            self._insert(batch)
            written += len(batch)
            self._emit("written", len(batch))
        if bad:
            log.warning("provenance spool lines skipped (torn or invalid)", extra=kv(file=path.name, lines=bad))
            self._emit("dropped", bad)
        log.info("provenance spool replayed", extra=kv(file=path.name, rows=written))
        return written

    def _emit(self, outcome: str, n: int) -> None:
        if self.on_event is None or n <= 0:
            return
        try:
            self.on_event(outcome, n)
        except Exception:
            log.exception("provenance on_event callback failed")


def _claim(path: Path) -> IO[bytes] | None:
    """Open and flock another writer's spool file, only if no live writer holds it and it is still there."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        fh.close()
        return None
    return fh


def _lines(fh: IO[bytes]) -> Iterable[bytes]:
    for line in fh:
        line = line.strip()
        if line:
            yield line


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1:
        return f"{exc.args[0]} {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"
