"""Provenance rows of served requests, written to MySQL in the background (design section 5).

Every ``/recommend`` answer becomes one ``reccom`` row. :class:`ProvenanceWriter` keeps MySQL off
the request path: :meth:`~ProvenanceWriter.submit` appends the row to an in-memory queue and to its
journal (one ``write()`` into the page cache, no fsync, no network) and returns; a background thread
writes the queue in batches (:func:`app.store.insert_reccom`) as the app account, which may only
insert into ``reccom``.

When MySQL is down, slow or refuses us, a batch goes to an on-disk spool instead: JSON lines
appended to one file per writer (``<spool_dir>/<time_ns>-<host>-<pid>-<tag>.jsonl``), each append
fsync'd. The thread retries the connection with exponential backoff; once it connects, it replays
every spool file, oldest first, and deletes each file after its last row is written. While a spool
file of this writer is not yet replayed, new batches are appended to it rather than written
directly, so rows reach MySQL in the order they were submitted.

Why this is crash-safe
    A row is in exactly one of three places: the in-memory queue (mirrored in this writer's journal,
    below), a spool file on disk (fsync'd before the batch counts as spooled), or MySQL. A spool file is
    deleted only after all its rows were inserted. Replaying is idempotent: ``row_id`` (one per served
    answer) is UNIQUE and a duplicate insert is a no-op, so a batch that reached MySQL but whose
    acknowledgement was lost (a timeout, a crash between insert and delete) is simply ignored the second
    time - exactly once.
    Files left by a process that died are replayed by the next writer that starts (or scans, every
    ``scan_interval_s``) on the same spool directory. Each live writer holds an ``flock`` on its own
    file for as long as it exists, and a writer replays another's file only after taking that lock,
    so two live workers never replay the same file (files are created under a temporary name, locked,
    then renamed, so no one can take a file between its creation and its lock).

Why it cannot wedge
    Nothing read from disk can stop the writer. A spool line that is not a storable row (torn, not
    JSON, nested 100,000 deep, ``1e400``, a value that does not fit its column, random bytes, longer
    than ``MAX_LINE``) goes to the dead-letter directory (``dead_letter_dir``, by default
    ``<spool_dir>.dead-letter``: outside the spool, so a broken spool directory cannot take it along)
    as one JSON line with the reason (that directory is capped at ``spool_max_bytes`` too), and replay
    goes on with the next line. A spool file that cannot be opened or read is moved there whole; a
    spool directory that cannot be listed is noted there and replay is skipped, while the live queue
    is still written. Replay and delivery of the live queue are separate steps each cycle, so no
    replay problem keeps the queue from MySQL.

Every row is counted exactly once as it ends (``on_event``)
    ``written`` (now in MySQL, replays included), ``dead_lettered`` (refused, kept with its reason) or
    ``dropped`` (could not be kept at all: queue full, spool full, disk failing, dead-letter unwritable).
    ``spooled`` counts rows on their way through the disk, ``adopted`` rows taken over from a dead
    writer's journal (below); both end later as one of the three. On a
    failed append (full disk, file-size limit), the whole lines that reached the file count as spooled,
    the torn tail is cut off (``ftruncate``) and the rest count as dropped, so no row is counted dropped
    and then written. A replay interrupted by an outage resumes after the lines it finished, so a row is
    not counted written twice by one process.

The spool is bounded (``spool_max_bytes``)
    The policy is "keep the oldest": once the spool directory holds ``spool_max_bytes``, new rows that
    would go to disk are dropped and counted (``dropped`` and ``failure.spool_full``); rows already on
    disk are never evicted, and serving never waits or fails. The size is measured at most once a second
    and grown by every append, so several workers sharing one directory overshoot by at most about a
    second of their appends.

The journal: nothing lost when a worker is killed (issue 12)
    A row waiting in memory would die with its process (SIGKILL, OOM killer, a worker past Gunicorn's
    timeout). So :meth:`~ProvenanceWriter.submit` also appends the row's JSON line to this writer's
    journal, ``<spool_dir>/journal-<time_ns>-<host>-<pid>-<tag>.journal`` (flock'ed while the writer
    lives, like its spool file): one ``write()`` under the lock that orders the queue, so the journal
    holds the queue's rows in queue order. No fsync: the journal guards against the death of the
    process, whose written pages the kernel keeps and flushes; a power cut is the fsync'd spool's job
    only. The file starts with a fixed-width header, ``movierec-journal done=<offset>``: the byte
    offset up to which its rows have ended (written, spooled, dead-lettered or dropped). The writer
    thread moves it (one ``pwrite``) right after a batch is inserted or fsync'd to the spool and
    *before* it counts the batch. Once ``journal_max_bytes`` of its rows are done, the thread starts a
    fresh file holding only the rows still queued and deletes the old one (never a truncate: that can
    wait for the disk, under the lock requests take), so a journal stays about that size plus the
    queue. A clean :meth:`~ProvenanceWriter.close` deletes it.

    A journal nobody holds the lock of belongs to a dead process (the kernel drops an flock with its
    last holder, so a recycled pid cannot fool it). Every writer, when it starts and at each scan,
    adopts such files: it copies the rows past ``done`` into an ordinary spool file (fsync'd), deletes
    the journal, and counts ``adopted`` (rows) and ``failure.orphan_journal`` (one per dead writer).
    The usual replay then writes them, dead-lettering what is torn or bad, so they end ``written``
    exactly once: the dead writer counted none of them, since it counts a batch only after moving
    ``done`` past it.

The bounded risk
    Counts, not rows: a kill in the microseconds between a batch's INSERT returning and the journal's
    ``pwrite`` makes the adopter write that batch again (INSERT IGNORE: stored once, counted written
    twice); a kill between that ``pwrite`` and the count leaves it stored and uncounted. A writer killed
    while adopting a journal (after the copy, before the delete) or while moving its own to a fresh file
    (after the copy, before marking the old one done) has those rows copied again, with the same effect.
    Rows are only lost when the journal cannot be written (its directory unwritable or full: counted
    ``failure.journal``, the rows stay in memory as before the journal), when they were submitted before
    :meth:`~ProvenanceWriter.start`, or on a power cut before the kernel flushed the journal. A clean
    shutdown (:meth:`~ProvenanceWriter.close`) loses nothing: it writes or spools everything. A process
    killed mid-replay leaves its file to the next writer, which stores each row once but counts the rows
    the dead one had already counted a second time.

Memory is bounded too: past ``spill_rows`` queued rows, the thread spills the queue to the spool
rather than waiting for MySQL; past ``max_queue`` (the thread is dead or wedged) ``submit`` drops
and counts the row rather than grow without end.

``on_event(name, value)`` reports, for Prometheus (:mod:`app.metrics`): the row outcomes above
(``ROW_OUTCOMES``, value = rows), ``failure.<kind>`` for every failure path (``FAILURE_KINDS``, value
= occurrences) and the gauges ``GAUGES`` (value = the current level). Create the writer in the
process that uses it (in a Gunicorn worker, after the fork): threads do not survive ``fork``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from app import store
from app.files import fsync_dir
from app.logs import kv
from app.settings import MySQL

log = logging.getLogger(__name__)

COLUMNS = store.RECCOM_COLUMNS
SPOOL_SUFFIX = ".jsonl"
MAX_LINE = 1 << 20  # a real row is < 70 KB (movies is a TEXT); a longer line is dead-lettered unread
MAX_RAW_KEPT = 64 << 10  # bytes of an unreadable line kept in its dead-letter entry
MEASURE_EVERY_S = 1.0

ROW_OUTCOMES = ("written", "spooled", "dead_lettered", "dropped", "adopted")
FAILURE_KINDS = (
    "mysql",  # a batch or a connection failed: rows go to the spool
    "queue_full",  # submit found max_queue rows waiting (thread dead or wedged): row dropped
    "spool_full",  # spool_max_bytes reached: rows dropped
    "spool_write",  # append to the spool failed (disk full, I/O error, file-size limit): rows dropped
    "spool_list",  # the spool directory could not be listed or measured: replay skipped
    "spool_file",  # a spool file could not be opened or read: moved to the dead-letter directory
    "dead_letter_write",  # the dead-letter directory could not take an entry: its rows dropped
    "writer",  # an unexpected exception in a writer step (a bug): logged, the thread goes on
    "journal",  # the journal could not be created, written or adopted: rows kept in memory only, as before it
    "orphan_journal",  # a dead writer's journal was found (worker SIGKILLed, OOM-killed): its rows adopted
)
GAUGES = ("queue_rows", "spool_bytes", "spool_limit_bytes", "spool_oldest_age_seconds", "heartbeat_seconds")

EventHook = Callable[[str, float], None]

JOURNAL_PREFIX = "journal-"
JOURNAL_SUFFIX = ".journal"  # not SPOOL_SUFFIX: the spool listing, its size and its age never see a journal
_HEADER = b"movierec-journal done=%016d\n"  # fixed width: rewritten in place by one pwrite
HEADER_LEN = len(_HEADER % 0)
_HEADER_RX = re.compile(rb"movierec-journal done=([0-9]{16})\n")
JOURNAL_MAX_BYTES = 256 << 10  # ~800 rows: once this many bytes of rows are done, a fresh file takes the rest
JOURNAL_RETRY_S = 10.0  # a journal that could not be created or written is tried again after this


class _Outage(Exception):
    """MySQL could not take a batch now (down, slow, refused, schema missing): keep the rows, retry later."""


class _SpoolFile:
    """This writer's own spool file: open for append and flock'ed for as long as it exists."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.rows = 0


class _Journal:
    """One writer's write-ahead journal (module docstring): queued rows as JSON lines, after a header
    holding the offset up to which they are done. Written without fsync on purpose: the page cache
    outlives a killed process, and the journal is only there for a killed process.

    ``append`` runs under the writer's submit lock, ``delivered`` in the writer thread, ``carry_to`` in
    the writer thread under the submit lock. Nothing here truncates a file (a truncate can wait for
    writeback on a busy disk, and the submit lock must never wait on the disk for long): done rows are
    dropped by starting a fresh file. Every method raises ``OSError`` and leaves the file consistent:
    whole lines, a header never past what it covers.
    """

    def __init__(self, path: Path, fd: int, end: int) -> None:
        self.path = path
        self.fd = fd
        self.end = end  # bytes in the file (header + lines)
        self.done = HEADER_LEN  # bytes of the header and of the rows that have ended

    @classmethod
    def create(cls, directory: Path, tail: bytes = b"") -> _Journal:
        """A new journal holding `tail` (undone lines carried over), published under its final name with its lock."""
        directory.mkdir(parents=True, exist_ok=True)
        name = (f"{JOURNAL_PREFIX}{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-"
                f"{uuid.uuid4().hex[:8]}{JOURNAL_SUFFIX}")
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, _HEADER % HEADER_LEN + tail)
            os.rename(tmp, directory / name)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return cls(directory / name, fd, HEADER_LEN + len(tail))

    def append(self, line: bytes) -> int:
        """Add one line; returns its size. On a failed or short write the file is cut back to whole lines."""
        try:
            if os.write(self.fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write to the provenance journal")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.end)
                os.lseek(self.fd, self.end, os.SEEK_SET)
            raise
        self.end += len(line)
        return len(line)

    def delivered(self, nbytes: int) -> None:
        """The next `nbytes` of rows have ended (written, spooled, dead-lettered, dropped): record it."""
        self.done = min(self.end, self.done + nbytes)
        os.pwrite(self.fd, _HEADER % self.done, 0)

    def carry_to(self, fresh: _Journal) -> None:
        """Copy the rows not done yet to `fresh`, then mark them all done here (the caller deletes this file)."""
        undone = self.end - self.done
        if undone > 0:
            tail = os.pread(self.fd, undone, self.done)
            if len(tail) != undone:
                raise OSError(errno.EIO, "short read of the provenance journal")
            fresh.append(tail)
            self.delivered(undone)

    def discard(self) -> None:
        """Delete the file (every row in it has ended) and let it go."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Close and unlock, leaving the file for another writer to adopt."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _journal_line(row: Any) -> bytes | None:
    """The row as one journal line; None when it cannot be encoded (it stays in memory and is judged there).

    orjson, because this runs for every answer: about 25 times cheaper than ``json.dumps`` (0.6 µs
    against 15 µs on the loaded 2-core machine). What orjson refuses (an int past 64 bits, a lone
    surrogate) goes through ``json`` like the spool does; a NaN (never made by the server) becomes null.
    """
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except Exception:  # orjson.JSONEncodeError and whatever a strange value raises
        pass
    try:
        return (json.dumps(row, separators=(",", ":")) + "\n").encode()
    except Exception:  # not JSON-able, nested too deep, not encodable: kept in memory only, refused on delivery
        return None


def _normalise(row: Any) -> tuple[dict[str, Any] | None, str]:
    """(row with the types of `reccom`, "") or (None, why it cannot be stored); never raises."""
    try:
        if not isinstance(row, dict):
            return None, f"not a JSON object: {type(row).__name__}"
        movies = row["movies"]
        if not isinstance(movies, str):
            movies = ",".join(str(m) for m in movies)
        latency = row.get("latency_ms")
        out = {
            # a spool written before rows had their own id used the request id as the key
            "row_id": str(row.get("row_id") or row["request_id"]),
            "request_id": str(row["request_id"]),
            "served_at_ms": _whole(row["served_at_ms"]),
            "user_id": _whole(row["user_id"]),
            "version_number": _whole(row["version_number"]),
            "slot": str(row["slot"]),
            "host": str(row.get("host") or socket.gethostname()),
            "latency_ms": None if latency is None else float(latency),
            "movies": movies,
        }
    except KeyError as exc:
        return None, f"missing field {exc}"
    except Exception as exc:  # OverflowError (1e400), RecursionError, MemoryError...: a bad row, never a crash
        return None, f"invalid value: {type(exc).__name__}: {str(exc)[:200]}"
    problem = store.reccom_problem(out)
    if problem:
        return None, problem
    return out, ""


def _whole(value: Any) -> int:
    """An integer column: ints and integral numbers only (``int(1.9)`` would silently store 1)."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():  # inf and nan are not integers either
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 40:
        return int(value)
    raise TypeError(f"{value!r} is not a whole number")


def normalise(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row with the types of `reccom`, or None when it cannot be stored (missing key, bad value)."""
    return _normalise(row)[0]


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
        journal_max_bytes: int = JOURNAL_MAX_BYTES,
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.batch_size = max(1, settings.batch_size)
        self.flush_s = max(0.01, settings.flush_interval_s)
        self.timeout_s = max(0.1, settings.connect_timeout_s)
        self.spool_dir = Path(settings.spool_dir)
        self.dead_dir = Path(settings.dead_letter_dir or f"{self.spool_dir}.dead-letter")
        self.spool_max_bytes = max(0, settings.spool_max_bytes)
        self.spill_rows = spill_rows or max(10 * self.batch_size, 10_000)
        self.max_queue = max_queue or max(10 * self.spill_rows, 100_000)
        self.base_backoff_s = min(1.0, max(0.05, self.flush_s))
        self.max_backoff_s = max(self.base_backoff_s, max_backoff_s)
        self.scan_interval_s = scan_interval_s
        self.journal_max_bytes = max(0, journal_max_bytes)

        self._queue: deque[tuple[dict[str, Any], int]] = deque()  # (row, bytes of its journal line or 0)
        self._submit_lock = threading.Lock()
        self._spool_lock = threading.RLock()
        self._dead_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline = float("inf")

        self._conn: store.Connection | None = None
        self._own: _SpoolFile | None = None
        self._dead_fd: int | None = None
        self._dead_bytes = 0
        self._down_since: float | None = None
        self._down_error = ""
        self._backoff = self.base_backoff_s
        self._retry_at = 0.0
        self._next_scan = 0.0
        self._outage_rows = 0
        self._spool_bytes = 0  # the spool directory's size: measured, then grown by our own appends
        self._next_measure = 0.0
        self._list_error = ""  # the last listing failure, noted in the dead letters once until it clears
        self._progress: dict[tuple[int, int], int] = {}  # (dev, inode) -> lines of that file already done
        self._unmovable: set[Path] = set()  # bad spool files that could not be moved aside: skipped
        self._journal: _Journal | None = None
        self._journal_ok = False  # False: submit skips the journal until the thread retries it
        self._journal_retry_at = 0.0
        self._journal_frozen = False  # close() gave up on a wedged thread: the journal is left as it is
        self._taken_bytes = 0  # journal bytes of the rows taken from the queue and not yet ended

    # ------------------------------------------------------------------------------ caller side
    def start(self) -> ProvenanceWriter:
        """Start the background thread; it first replays any spool left in `spool_dir`."""
        if not self.settings.enabled or self._thread is not None:
            return self
        self._emit("spool_limit_bytes", self.spool_max_bytes)
        self._journal_open()
        self._thread = threading.Thread(target=self._run, name="provenance-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # an orderly interpreter exit drains like close() would
        return self

    def submit(self, row: dict[str, Any]) -> None:
        """Queue one row for MySQL. Never waits on MySQL or an fsync (one page-cache ``write()`` to the
        journal, ~10 µs on a loaded machine); never raises (a row it cannot keep is counted)."""
        if not self.settings.enabled:
            return
        line = _journal_line(row) if self._journal_ok else None  # encoded outside the lock
        journal_error: OSError | None = None
        with self._submit_lock:
            closed = self._closed
            if not closed:
                if len(self._queue) >= self.max_queue:
                    self._failure("queue_full")
                    self._emit("dropped", 1)
                    return
                size = 0
                if line is not None and self._journal is not None and self._journal_ok:
                    try:
                        size = self._journal.append(line)  # before the row can be taken: journal order = queue order
                    except OSError as exc:
                        self._journal_ok = False  # until the thread retries: one failure, not one per row
                        self._journal_retry_at = time.monotonic() + JOURNAL_RETRY_S
                        journal_error = exc
                self._queue.append((row, size))
                if len(self._queue) >= self.batch_size:
                    self._wake.set()
        if journal_error is not None:
            self._journal_failed("cannot append to the journal", journal_error)
        if not closed:
            return
        # After close() (process shutting down): keep the row on disk, unlocked, for the next writer to replay.
        good, why = _normalise(row)
        if good is None:
            self._dead_letter([_entry(why, "queue", row=row)])
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
        wedged = thread is not None and thread.is_alive()
        with self._submit_lock:
            self._closed = True
            self._journal_frozen = wedged  # its batch in flight precedes the leftovers: "done" cannot move
        leftovers = self._take(len(self._queue))
        if leftovers:
            self._spool(leftovers)
        else:
            self._journal_done()
        if wedged:
            log.error("provenance writer did not stop in time; its batch in flight stays in the journal for the "
                      "next writer", extra=kv(timeout_s=timeout))
        with self._submit_lock:
            journal, self._journal = self._journal, None
            self._journal_ok = False
        if journal is not None:
            if not wedged and journal.done >= journal.end:
                journal.discard()  # every row ended: nothing to adopt
            else:
                journal.release()
        with self._spool_lock:
            self._release_own()
        with self._dead_lock:
            fd, self._dead_fd = self._dead_fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

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
        except Exception:  # the writer thread must survive anything: rows keep flowing to MySQL or the spool
            log.exception("provenance writer step failed")
            self._failure("writer")
            time.sleep(min(1.0, self.flush_s))

    def _cycle(self) -> None:
        now = time.monotonic()
        self._emit("heartbeat_seconds", time.time())
        self._emit("queue_rows", len(self._queue))
        if now >= self._next_measure:
            self._safe(self._measure)
        due = self._down_since is not None or self._own is not None or now >= self._next_scan
        # Closing: one more attempt whatever the backoff says, so a clean shutdown leaves no spool behind.
        if due and (self._down_since is None or now >= self._retry_at or self._stop.is_set()):
            self._safe(self._recover)  # whatever replay meets, the live queue below is still written
        while self._queue:
            batch = self._take(self.batch_size)
            if batch:
                self._deliver(batch)
            else:
                self._journal_done()  # all refused: dead-lettered by _take
        if self._stop.is_set() and self._own is not None and self._down_since is None:
            self._safe(self._recover)  # closing with rows just spilled to disk while MySQL is fine: write them now
        self._journal_maintain()

    def _hurry(self) -> bool:
        """Shutting down with too little time left for one more MySQL round trip."""
        return self._stop.is_set() and time.monotonic() > self._deadline - self.timeout_s

    def _take(self, n: int) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        bad: list[dict[str, Any]] = []
        for _ in range(n):
            try:
                row, size = self._queue.popleft()
            except IndexError:
                break
            self._taken_bytes += size
            good, why = _normalise(row)
            if good is None:
                bad.append(_entry(why, "queue", row=row))
            else:
                batch.append(good)
        if bad:
            log.warning("provenance rows refused: missing or invalid fields", extra=kv(rows=len(bad)))
            self._dead_letter(bad)
        return batch

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Write a batch, or spool it; every row ends counted, whatever happens (this never raises)."""
        overfull = len(self._queue) > self.spill_rows
        if self._down_since is not None or self._own is not None or overfull or self._hurry():
            self._spool(batch)
            return
        try:
            self._write(batch, "queue", on_stored=self._journal_done)
        except _Outage as exc:
            self._enter_outage(exc)
            self._spool(batch)

    def _write(self, batch: list[dict[str, Any]], source: str, lines: list[int] | None = None,
               on_stored: Callable[[], None] | None = None) -> int:
        """Insert a batch and count every row: written, or dead-lettered with the reason. Raises only _Outage.

        `on_stored` runs once MySQL has the rows and before they are counted (the journal's mark).
        """
        try:
            refused = self._insert(batch)
        except _Outage:
            raise
        except Exception as exc:  # a bug, not an outage: keep the rows with the reason rather than retry forever
            log.exception("provenance batch failed unexpectedly")
            self._failure("writer")
            refused = [(i, f"insert failed: {_short(exc)}") for i in range(len(batch))]
        if on_stored is not None:
            on_stored()
        if refused:
            log.warning("provenance rows refused by MySQL", extra=kv(rows=len(refused), reason=refused[0][1]))
            self._dead_letter([_entry(why, source, line=lines[i] if lines else None, row=batch[i])
                               for i, why in refused])
        self._emit("written", len(batch) - len(refused))
        return len(batch) - len(refused)

    # -------------------------------------------------------------------------------- MySQL
    def _connection(self) -> store.Connection:
        if self._conn is None:
            try:
                self._conn = store.connect(self.settings, "app", timeout_s=self.timeout_s)
            except store.DatabaseUnreachable as exc:
                self._failure("mysql")
                raise _Outage(str(exc)) from exc
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        store.close(conn)

    def _insert(self, rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """One batch through the store; returns the refused (index, reason). Raises _Outage to keep the rows."""
        for attempt in range(2):
            fresh = self._conn is None
            conn = self._connection()
            try:
                return store.insert_reccom(conn, rows)
            except store.DatabaseError as exc:  # lost, even mid-way: spool the batch, never drop it
                self._drop_connection()
                self._failure("mysql")
                if fresh or attempt == 1:
                    raise _Outage(str(exc)) from exc
        raise AssertionError("unreachable")

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
        """Adopt dead writers' journals, then connect and replay every claimable spool file, oldest first;
        on an outage, back off."""
        now = time.monotonic()
        self._adopt_journals()
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
        """Spool files oldest first; our own file even when the directory cannot be listed."""
        try:
            names = sorted(p for p in os.listdir(self.spool_dir) if p.endswith(SPOOL_SUFFIX) and p[0] != ".")
        except FileNotFoundError:
            names = []
        except OSError as exc:
            self._listing_failed(exc)
            own = self._own
            return [own.path] if own is not None else []
        if self._list_error:
            log.info("provenance: spool directory readable again", extra=kv(spool_dir=self.spool_dir))
            self._list_error = ""
        return [self.spool_dir / n for n in names if self.spool_dir / n not in self._unmovable]

    def _listing_failed(self, exc: OSError) -> None:
        self._failure("spool_list")
        reason = f"cannot list the spool directory: {_short(exc)}"
        if reason != self._list_error:  # noted once per distinct failure, not every cycle
            self._list_error = reason
            log.error("provenance: spool directory unreadable; its files wait, live rows still go to MySQL",
                      extra=kv(spool_dir=self.spool_dir, error=exc))
            self._note(reason, str(self.spool_dir))

    def _measure(self) -> None:
        """Size and oldest row age of the spool directory, for the cap and the gauges."""
        self._next_measure = time.monotonic() + MEASURE_EVERY_S
        total, oldest_ns = 0, None
        try:
            with os.scandir(self.spool_dir) as entries:
                for entry in entries:
                    if not entry.name.endswith(SPOOL_SUFFIX):
                        continue
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        total += st.st_size
                        if st.st_size:
                            born = _born_ns(entry.name.lstrip("."), st)
                            oldest_ns = born if oldest_ns is None else min(oldest_ns, born)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._listing_failed(exc)
            return
        self._spool_bytes = total
        self._emit("spool_bytes", total)
        age_s = 0.0 if oldest_ns is None else max(0.0, (time.time_ns() - oldest_ns) / 1e9)
        self._emit("spool_oldest_age_seconds", age_s)

    def _open_own(self) -> _SpoolFile:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SPOOL_SUFFIX}"
        tmp = self.spool_dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.spool_dir / name
            os.rename(tmp, path)
            fsync_dir(self.spool_dir)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return _SpoolFile(path, fd)

    def _spool(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to this writer's spool file and fsync; what cannot be kept is counted dropped.

        Every row ends here (kept on disk or dropped), so the journal's mark moves past the rows taken,
        after the fsync and before anything is counted.
        """
        if not rows:
            return
        lines = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows]
        with self._spool_lock:
            room = self.spool_max_bytes - self._spool_bytes
            fit, used = 0, 0
            while fit < len(lines) and used + len(lines[fit]) <= room:
                used += len(lines[fit])
                fit += 1
            kept, kept_bytes, error = 0, 0, None
            if fit:
                try:
                    if self._own is None:
                        self._own = self._open_own()
                    kept, kept_bytes, error = _append_lines(self._own.fd, lines[:fit])
                except OSError as exc:
                    error = exc
                except Exception as exc:  # never let a spool problem escape into the writer loop
                    log.exception("provenance spool append failed unexpectedly")
                    error = OSError(errno.EIO, _short(exc))
                if self._own is not None:
                    self._own.rows += kept
                self._spool_bytes += kept_bytes
        self._journal_done()
        if fit < len(lines):
            log.error("provenance rows dropped: the spool is full",
                      extra=kv(rows=len(lines) - fit, spool_bytes=self._spool_bytes,
                               spool_max_bytes=self.spool_max_bytes, spool_dir=self.spool_dir))
            self._failure("spool_full")
            self._emit("dropped", len(lines) - fit)
        if error is not None:
            log.error("provenance rows dropped: cannot write the spool",
                      extra=kv(rows=fit - kept, kept=kept, spool_dir=self.spool_dir, error=error))
            self._failure("spool_write")
            self._emit("dropped", fit - kept)
        self._outage_rows += kept
        self._emit("spooled", kept)

    def _release_own(self) -> None:
        """Close (and unlock) this writer's file; rows still in it stay on disk for the next writer."""
        own, self._own = self._own, None
        if own is not None:
            with contextlib.suppress(OSError):
                os.close(own.fd)

    def _replay(self, path: Path) -> int:
        """Write one spool file to MySQL and delete it; returns rows written. Raises _Outage to keep it.

        A file that cannot be opened or read is moved to the dead letters, so it never blocks the rest.
        """
        with self._spool_lock:
            own = self._own
            if own is not None and own.path == path:
                try:
                    with open(path, "rb") as fh:
                        n = self._replay_lines(path, fh)
                        self._delete(path, fh)
                except _Outage:
                    raise
                except Exception as exc:
                    self._release_own()
                    self._quarantine(path, exc)
                    return 0
                self._release_own()
                return n
        try:
            fh = _claim(path)
        except OSError as exc:  # exists, but cannot be opened (a directory, no permission, I/O error)
            self._quarantine(path, exc)
            return 0
        if fh is None:
            return 0
        try:
            n = self._replay_lines(path, fh)
            self._delete(path, fh)
            return n
        except _Outage:
            raise
        except Exception as exc:
            self._quarantine(path, exc)
            return 0
        finally:
            fh.close()

    def _delete(self, path: Path, fh: IO[bytes]) -> None:
        """Remove a replayed file and take its size off the spool's (until the next measure)."""
        size = os.fstat(fh.fileno()).st_size
        path.unlink()
        fsync_dir(self.spool_dir)
        self._spool_bytes = max(0, self._spool_bytes - size)

    def _replay_lines(self, path: Path, fh: IO[bytes]) -> int:
        """Insert a file's rows batch by batch, dead-lettering every bad line; resumes after lines done."""
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino)
        done = self._progress.get(key, 0)
        written = bad = 0
        batch: list[dict[str, Any]] = []
        numbers: list[int] = []
        dead: list[dict[str, Any]] = []
        last = done

        def flush(upto: int) -> None:
            nonlocal written, batch, numbers, dead
            if batch:
                if self._hurry():
                    raise _Outage("shutting down: replay left for the next start")
                written += self._write(batch, path.name, numbers)
            if dead:
                self._dead_letter(dead)
            self._progress[key] = upto
            batch, numbers, dead = [], [], []

        for number, line, problem in _read_lines(fh):
            last = number
            if number <= done:
                continue
            row, why = (None, problem) if problem else _parse(line)
            if row is None:
                bad += 1
                dead.append(_entry(why, path.name, line=number, raw=line))
            else:
                batch.append(row)
                numbers.append(number)
            if len(batch) >= self.batch_size or len(dead) >= self.batch_size:
                flush(number)
        flush(last)
        self._progress.pop(key, None)
        if bad:
            log.warning("provenance spool lines dead-lettered (torn or invalid)",
                        extra=kv(file=path.name, lines=bad, dead_letter_dir=self.dead_dir))
        log.info("provenance spool replayed", extra=kv(file=path.name, rows=written))
        return written

    def _quarantine(self, path: Path, exc: BaseException) -> None:
        """Move a spool file that cannot be read to the dead letters, with the reason; never retry it."""
        self._failure("spool_file")
        reason = f"spool file unreadable: {_short(exc)}"
        target = self.dead_dir / f"{path.name}.{uuid.uuid4().hex[:8]}.unreadable"
        try:
            self.dead_dir.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
        except OSError as move_error:
            self._unmovable.add(path)
            target = None
            reason += f"; left in place (cannot move it: {_short(move_error)})"
        log.error("provenance spool file set aside", extra=kv(file=path.name, reason=reason, moved_to=target))
        self._note(reason, path.name, moved_to=str(target) if target else None)

    # -------------------------------------------------------------------------------- journal
    def _journal_open(self) -> None:
        """Create this writer's journal at start; on failure rows stay in memory only (the thread retries)."""
        if not self.settings.journal:
            return
        try:
            journal = _Journal.create(self.spool_dir)
        except OSError as exc:
            self._journal_retry_at = time.monotonic() + JOURNAL_RETRY_S
            self._journal_failed("cannot create the journal", exc)
            return
        with self._submit_lock:
            self._journal, self._journal_ok = journal, True

    def _journal_failed(self, what: str, exc: OSError) -> None:
        log.error(f"provenance: {what}; queued rows are kept in memory only until it works again",
                  extra=kv(spool_dir=self.spool_dir, error=exc, retry_s=JOURNAL_RETRY_S))
        self._failure("journal")

    def _journal_done(self) -> None:
        """The rows taken from the queue so far have ended: move the journal's mark past them."""
        nbytes, self._taken_bytes = self._taken_bytes, 0
        journal = self._journal
        if nbytes and journal is not None and not self._journal_frozen:
            try:
                journal.delivered(nbytes)
            except OSError as exc:  # the rows are fine; a kill now would only make the adopter count them again
                self._journal_failed("cannot mark rows done in the journal", exc)

    def _journal_maintain(self) -> None:
        """Each cycle: once `journal_max_bytes` of its rows are done (or after a failure), move the rows not done
        to a fresh journal and delete the old one, so the journal never grows past about that much plus the queue.

        The fresh file is created and the old one deleted outside the submit lock; under it, only the undone
        tail (the rows still queued, usually a few) is copied and the old header marked all done.
        """
        if not self.settings.journal or self._journal_frozen or self._closed:
            return
        journal = self._journal
        if journal is None or not self._journal_ok:
            if time.monotonic() < self._journal_retry_at:
                return
        elif journal.done - HEADER_LEN < self.journal_max_bytes:
            return
        try:
            fresh = _Journal.create(self.spool_dir)
        except OSError as exc:
            self._journal_retry_at = time.monotonic() + JOURNAL_RETRY_S
            self._journal_failed("cannot create the journal", exc)
            return
        error: OSError | None = None
        with self._submit_lock:
            if self._journal is not journal or self._closed:
                old = fresh
            else:
                try:
                    if journal is not None:
                        journal.carry_to(fresh)
                except OSError as exc:
                    error, old = exc, fresh
                    self._journal_ok = False
                    self._journal_retry_at = time.monotonic() + JOURNAL_RETRY_S
                else:
                    self._journal, self._journal_ok, old = fresh, True, journal
        if old is not None:
            old.discard()
        if error is not None:
            self._journal_failed("cannot move the journal to a fresh file", error)

    def _adopt_journals(self) -> None:
        """Move the rows not yet done of every dead writer's journal into the spool (module docstring)."""
        try:
            names = sorted(n for n in os.listdir(self.spool_dir)
                           if n.startswith(JOURNAL_PREFIX) and n.endswith(JOURNAL_SUFFIX))
        except OSError:
            return  # missing: nothing to adopt; unreadable: _spool_files reports it
        journal = self._journal
        own = journal.path.name if journal is not None else None
        for name in names:
            if name != own:
                self._adopt(self.spool_dir / name)

    def _adopt(self, path: Path) -> None:
        try:
            fh = _claim(path)  # None: its writer still holds it (alive), or it is gone
        except OSError as exc:
            self._journal_failed(f"cannot open the journal {path.name}", exc)
            return
        if fh is None:
            return
        try:
            with fh:
                rows, nbytes = self._adopt_rows(path, fh)
        except OSError as exc:  # left in place, tried again at the next scan
            self._journal_failed(f"cannot adopt the journal {path.name}", exc)
            return
        log.warning("provenance: adopted the journal of a dead writer (killed before it drained)",
                    extra=kv(file=path.name, rows=rows, bytes=nbytes))
        self._failure("orphan_journal")
        self._emit("adopted", rows)

    def _adopt_rows(self, path: Path, fh: IO[bytes]) -> tuple[int, int]:
        """Copy the rows past the journal's done mark to a spool file (fsync'd), then delete the journal.

        The spool file's name follows from the journal's (its mtime first, for the oldest-first replay), so
        a writer killed between the copy and the delete leaves a file the next adopter recognises. Not held
        to ``spool_max_bytes``: these rows were accepted before, and a journal is small (module docstring).
        """
        st = os.fstat(fh.fileno())
        found = _HEADER_RX.fullmatch(fh.read(HEADER_LEN))
        start = min(st.st_size, int(found[1])) if found else 0  # no header: replay it all (stored once)
        core = path.name[len(JOURNAL_PREFIX):-len(JOURNAL_SUFFIX)]
        target = self.spool_dir / f"{st.st_mtime_ns:020d}-{core}-journal{SPOOL_SUFFIX}"
        rows = nbytes = 0
        if st.st_size > start and not target.exists():
            fh.seek(start)
            tmp = self.spool_dir / f".{target.name}.tmp"
            last = b"\n"
            with open(tmp, "wb") as out:
                while chunk := fh.read(1 << 20):
                    out.write(chunk)
                    rows += chunk.count(b"\n")
                    nbytes += len(chunk)
                    last = chunk[-1:]
                out.flush()
                os.fsync(out.fileno())
            rows += last != b"\n"  # a torn last line is a row too: the replay dead-letters it
            os.rename(tmp, target)
        path.unlink()
        fsync_dir(self.spool_dir)
        with self._spool_lock:
            self._spool_bytes += nbytes
        return rows, nbytes

    # -------------------------------------------------------------------------------- dead letters
    def _dead_letter(self, entries: list[dict[str, Any]]) -> None:
        """Keep refused rows with their reason; what the directory cannot take is counted dropped."""
        if not entries:
            return
        kept = self._append_dead(entries)
        if kept < len(entries):
            self._emit("dropped", len(entries) - kept)
        self._emit("dead_lettered", kept)

    def _note(self, reason: str, source: str, **extra: Any) -> None:
        """A dead-letter entry about a file or the directory (no row): counted as a failure, not a row."""
        self._append_dead([{**_entry(reason, source), **extra}])

    def _append_dead(self, entries: list[dict[str, Any]]) -> int:
        lines = []
        for e in entries:
            try:
                lines.append(json.dumps(e, separators=(",", ":"), default=_json_default).encode() + b"\n")
            except Exception:  # a row too deep or odd to encode: keep its reason and repr
                lines.append(json.dumps({k: v for k, v in e.items() if k != "row"} | {"repr": _repr(e.get("row"))},
                                        separators=(",", ":"), default=str).encode() + b"\n")
        with self._dead_lock:
            error: OSError | None = None
            kept = 0
            try:
                if self._dead_fd is None:
                    self.dead_dir.mkdir(parents=True, exist_ok=True)
                    self._dead_bytes = sum(p.stat().st_size for p in self.dead_dir.glob("*.jsonl"))
                    name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}.jsonl"
                    self._dead_fd = os.open(self.dead_dir / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                            | os.O_CLOEXEC, 0o640)
                # bounded like the spool (a spool of garbage must not fill the disk twice over)
                room = self.spool_max_bytes - self._dead_bytes
                fit, used = 0, 0
                while fit < len(lines) and used + len(lines[fit]) <= room:
                    used += len(lines[fit])
                    fit += 1
                kept, kept_bytes, error = _append_lines(self._dead_fd, lines[:fit]) if fit else (0, 0, None)
                self._dead_bytes += kept_bytes
                if error is None and fit < len(lines):
                    error = OSError(errno.ENOSPC, f"dead-letter directory holds its cap of {self.spool_max_bytes} B")
            except OSError as exc:
                error = exc
        if error is not None:
            log.error("provenance dead letters lost: cannot write the dead-letter directory",
                      extra=kv(entries=len(entries) - kept, dead_letter_dir=self.dead_dir, error=error))
            self._failure("dead_letter_write")
        return kept

    # -------------------------------------------------------------------------------- events
    def _failure(self, kind: str) -> None:
        self._emit(f"failure.{kind}", 1)

    def _emit(self, name: str, value: float) -> None:
        if self.on_event is None or (value <= 0 and name in ROW_OUTCOMES):
            return
        try:
            self.on_event(name, value)
        except Exception:
            log.exception("provenance on_event callback failed")


# ------------------------------------------------------------------------------------------ helpers
def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """A spool line as a row, or (None, why); never raises, whatever the bytes."""
    try:
        value = json.loads(line)
    except RecursionError:
        return None, "not JSON: nested too deep"
    except Exception as exc:
        return None, f"not JSON: {type(exc).__name__}: {str(exc)[:200]}"
    return _normalise(value)


def _read_lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes, str]]:
    """(number, line, problem) of every non-empty line; a line over MAX_LINE is cut and named a problem."""
    number = 0
    while True:
        chunk = fh.readline(MAX_LINE + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE and not chunk.endswith(b"\n"):
            size = len(chunk)
            while True:  # skip the rest of the long line without holding it
                more = fh.readline(MAX_LINE)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield number, chunk[:MAX_RAW_KEPT], f"line of {size} bytes is longer than {MAX_LINE}"
            continue
        line = chunk.strip()
        if line:
            yield number, line, ""


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a regular file writes all or fails, but be sure)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _append_lines(fd: int, lines: list[bytes]) -> tuple[int, int, OSError | None]:
    """Append whole lines and fsync; returns (lines kept, bytes kept, error).

    On a failed write (disk full, file-size limit) the whole lines that reached the file are kept and the
    torn tail is cut off, so each line is either in the file or reported not kept, never half. A failed
    fsync keeps nothing (the kernel may have dropped the pages): the file is cut back to where it was.
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    data = memoryview(b"".join(lines))
    done = 0
    try:
        while done < len(data):
            n = os.write(fd, data[done:])
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            done += n
    except OSError as exc:
        kept = size = 0
        for line in lines:
            if size + len(line) > done:
                break
            size += len(line)
            kept += 1
        try:
            os.ftruncate(fd, start + size)
            os.fsync(fd)
        except OSError:
            pass  # the torn line stays; it is dead-lettered on replay
        return kept, size, exc
    try:
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        return 0, 0, exc
    return len(lines), done, None


def _entry(reason: str, source: str, *, line: int | None = None, row: Any = None, raw: bytes | None = None
           ) -> dict[str, Any]:
    """One dead-letter line: when, why, where from, and what was refused."""
    entry: dict[str, Any] = {"at_ms": time.time_ns() // 1_000_000, "reason": reason, "source": source,
                             "host": socket.gethostname(), "pid": os.getpid()}
    if line is not None:
        entry["line"] = line
    if row is not None:
        entry["row"] = row
    if raw is not None:
        entry["raw"] = raw[:MAX_RAW_KEPT].decode("utf-8", errors="backslashreplace")
        entry["raw_bytes"] = len(raw)
    return entry


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return repr(value)[:1000]


def _repr(value: Any) -> str:
    try:
        return repr(value)[:MAX_RAW_KEPT]
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _born_ns(name: str, st: os.stat_result) -> int:
    """Creation time of a spool file: the time_ns its name starts with, else its mtime."""
    head = name.split("-", 1)[0]
    if head.isdigit() and len(head) >= 18:
        return int(head)
    return st.st_mtime_ns


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
    except BaseException:
        fh.close()
        raise
    return fh
