"""`python -m auto_deployment ingest`: an event log (file, stdin, Kafka) → the event store.

The event store is a directory of CSV files, one set per ingest run ("batch")::

    watches-<batch>.csv          time,user_id,movie_id,minute
    ratings-<batch>.csv          time,user_id,movie_id,rating
    recommendations-<batch>.csv  time,user_id,server,status,response_ms,movies,error
    rejected-<batch>.csv         reason,line
    batch-<batch>.json           manifest: counts, and the committed byte length of each file

``time`` is the event's ISO-8601 UTC time (``2024-03-01T12:00:00.123456+00:00``); ``movies`` of a
recommendation is the served list joined by ``,``; ``error`` is empty unless the request failed.

Ingestion streams: a source hands over lists of raw lines, each list is parsed and appended, then
the files are flushed and fsync'd and the manifest is atomically replaced; only then is the source
told to ``commit()`` (a Kafka consumer commits its offsets there). Memory is one list of lines,
whatever the size of the log. A crash leaves at most a torn tail past the committed lengths, which
readers ignore (``committed_files``), and the source re-delivers what was not committed; `prepare`
aggregates idempotently, so a re-delivered line changes nothing in the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, runtime_checkable

from app.clock import now_iso, parse_duration, stamp_id
from app.contracts.events import MalformedLine, parse_line
from app.files import write_json_atomic
from app.logs import kv
from app.settings import Kafka, Paths, Pipeline

log = logging.getLogger(__name__)

# kind of event → (file stem, CSV columns). `prepare` and reports read the store through these names.
STORE_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "watch": ("watches", ("time", "user_id", "movie_id", "minute")),
    "rate": ("ratings", ("time", "user_id", "movie_id", "rating")),
    "recommendation": (
        "recommendations", ("time", "user_id", "server", "status", "response_ms", "movies", "error"),
    ),
    "rejected": ("rejected", ("reason", "line")),
}
MANIFEST_PREFIX = "batch-"
MANIFEST_FORMAT = 1

DEFAULT_CHUNK_LINES = 20_000  # lines per source batch = per durable checkpoint for files and stdin
DEFAULT_PROGRESS_EVERY = 500_000
MAX_LINE_BYTES = 64 * 1024  # longer lines are cut (and rejected); keeps memory bounded on a stream without newlines


class SourceError(RuntimeError):
    """A source cannot be opened or is not available in this installation."""


# --- sources ---------------------------------------------------------------------------------------


@runtime_checkable
class LineSource(Protocol):
    """Where raw log lines come from.

    ``batches()`` yields lists of raw lines (newline optional). After the ingest loop has made a batch
    durable it calls ``commit()``: everything yielded so far is safe and need not be delivered again.
    ``close()`` is called once at the end, whether ingestion succeeded or not.
    """

    name: str

    def batches(self) -> Iterator[list[str]]: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class StreamSource:
    """Lines of a binary stream in chunks; bytes that are not UTF-8 become U+FFFD (then rejected)."""

    def __init__(self, stream: BinaryIO, name: str, chunk_lines: int = DEFAULT_CHUNK_LINES) -> None:
        self.name = name
        self._stream = stream
        self._chunk_lines = max(1, chunk_lines)

    def _read_line(self) -> bytes:
        raw = self._stream.readline(MAX_LINE_BYTES)
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            # Drop the rest of an overlong line so that it costs no more memory than one cap.
            while True:
                more = self._stream.readline(MAX_LINE_BYTES)
                if not more or more.endswith(b"\n"):
                    break
        return raw

    def batches(self) -> Iterator[list[str]]:
        read = self._read_line
        size = self._chunk_lines
        while True:
            chunk: list[str] = []
            append = chunk.append
            for _ in range(size):
                raw = read()
                if not raw:
                    break
                append(raw.decode("utf-8", "replace"))
            if chunk:
                yield chunk
            if len(chunk) < size:
                return

    def commit(self) -> None:
        """A file or a pipe cannot be re-read: nothing to acknowledge."""

    def close(self) -> None:
        pass


class FileSource(StreamSource):
    """A log file on disk."""

    def __init__(self, path: Path, chunk_lines: int = DEFAULT_CHUNK_LINES) -> None:
        try:
            stream = Path(path).open("rb")  # noqa: SIM115 (closed by close(), called by ingest())
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        super().__init__(stream, f"file:{path}", chunk_lines)

    def close(self) -> None:
        self._stream.close()


class StdinSource(StreamSource):
    """The process's standard input (``-`` / ``stdin``): `simulator ... | python -m auto_deployment ingest`."""

    def __init__(self, chunk_lines: int = DEFAULT_CHUNK_LINES, stream: BinaryIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stdin.buffer, "stdin", chunk_lines)


def make_source(spec: str, *, topic: str | None = None, duration_s: float | None = None,
                chunk_lines: int = DEFAULT_CHUNK_LINES) -> LineSource:
    """``file:PATH`` (or an existing path), ``stdin``/``-``, or ``kafka`` (optionally ``kafka:TOPIC``).

    Kafka lives in ``auto_deployment.data.kafka_source`` and is imported only when asked for; it is built
    as ``KafkaSource(topic=..., duration_s=...)`` (bootstrap servers and group from app.settings.Kafka).
    """
    if spec in ("-", "stdin"):
        return StdinSource(chunk_lines)
    if spec == "kafka" or spec.startswith("kafka:"):
        try:
            from auto_deployment.data.kafka_source import KafkaSource
        except ImportError as exc:
            raise SourceError(f"--source kafka is not available: {exc}") from exc
        chosen_topic = spec.partition(":")[2] or topic or Kafka.from_env().topic
        chosen_duration = duration_s if duration_s is not None else Pipeline.from_env().collect_s
        return KafkaSource(topic=chosen_topic, duration_s=chosen_duration)
    if spec.startswith("file:"):
        return FileSource(Path(spec[len("file:"):]), chunk_lines)
    if Path(spec).is_file():
        return FileSource(Path(spec), chunk_lines)
    raise SourceError(f"unknown source {spec!r}: use file:PATH, stdin, - or kafka")


# --- the event store -------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What one ingest run did: counts are of lines read, events stored and lines set aside."""

    batch_id: str
    source: str
    events_dir: str
    lines: int = 0
    events: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False
    # Times the source (Kafka) was unreachable during the run and for how long in all: an outage the
    # collection waited out is not an error, but the operator should see it in the run report.
    source_outages: int = 0
    source_outage_s: float = 0.0

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lines_per_s"] = round(self.lines_per_s, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


class _Batch:
    """The files of one ingest run, opened lazily per kind, made durable at each checkpoint."""

    def __init__(self, events_dir: Path, batch_id: str, source: str) -> None:
        self.dir = events_dir
        self.id = batch_id
        self.source = source
        self.started = now_iso()
        self.manifest = events_dir / f"{MANIFEST_PREFIX}{batch_id}.json"
        self._handles: dict[str, IO[str]] = {}
        self.handles: dict[str, IO[str]] = {}  # kind → its open file
        self.writers: dict[str, Any] = {}  # kind → csv writer over that file
        self.lines = 0
        self.events: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.committed: dict[str, dict[str, int]] = {}
        if self.manifest.exists():
            raise FileExistsError(f"batch {batch_id} already exists in {events_dir}")

    def handle(self, kind: str) -> IO[str]:
        """The open file of a kind, creating it (with its header) on first use."""
        if kind not in self.handles:
            stem, columns = STORE_FILES[kind]
            path = self.dir / f"{stem}-{self.id}.csv"
            # backslashreplace: a source that decoded with surrogateescape must not crash the writer.
            handle = path.open("x", encoding="utf-8", errors="backslashreplace", newline="")
            self._handles[path.name] = handle
            self.handles[kind] = handle
            self.writers[kind] = writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
        return self.handles[kind]

    def writer(self, kind: str) -> Any:
        """The CSV writer of a kind (for rows that may need quoting)."""
        self.handle(kind)
        return self.writers[kind]

    def checkpoint(self, state: str = "open") -> None:
        """Flush + fsync every file, then publish their lengths and the counts in the manifest."""
        for name, handle in self._handles.items():
            handle.flush()
            os.fsync(handle.fileno())
            self.committed[name] = {"bytes": os.fstat(handle.fileno()).st_size}
        payload = {
            "format": MANIFEST_FORMAT,
            "batch": self.id,
            "source": self.source,
            "state": state,
            "started": self.started,
            "updated": now_iso(),
            "lines": self.lines,
            "events": dict(sorted(self.events.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "files": dict(sorted(self.committed.items())),
        }
        write_json_atomic(self.manifest, payload)

    def close(self) -> None:
        for handle in self._handles.values():
            with contextlib.suppress(OSError):
                handle.close()


def ingest(source: LineSource, events_dir: Path, *, batch_id: str | None = None,
           progress_every: int = DEFAULT_PROGRESS_EVERY) -> IngestReport:
    """Parse every line of ``source`` into a new batch of the event store; return the counts.

    The source is committed after each durable checkpoint and closed at the end. If this raises, the
    batch stays in state ``open`` with everything up to its last checkpoint usable.
    """
    events_dir = Path(events_dir)
    events_dir.mkdir(parents=True, exist_ok=True)
    batch = _Batch(events_dir, batch_id or stamp_id(), source.name)
    log.info("ingest started", extra=kv(batch=batch.id, source=source.name, events_dir=events_dir))
    started = time.monotonic()
    next_progress = progress_every if progress_every > 0 else -1
    writers = batch.writers
    handles = batch.handles
    events = batch.events
    rejected = batch.rejected
    complete = False
    from tqdm import tqdm

    bar = tqdm(desc="ingest", unit="line", unit_scale=True, disable=None, leave=False)  # quiet off a terminal
    try:
        batch.checkpoint()  # the manifest exists from the start: a crashed run is visible as "open"
        for lines in source.batches():
            for raw in lines:
                try:
                    event = parse_line(raw)
                except MalformedLine as exc:
                    reason = exc.reason
                    rejected[reason] += 1
                    (writers.get("rejected") or batch.writer("rejected")).writerow(
                        (reason, raw.rstrip("\r\n")))
                    continue
                kind = event.kind
                events[kind] += 1
                stamp = event.time.isoformat()
                if kind == "watch" or kind == "rate":
                    value = event.minute if kind == "watch" else event.rating
                    if '"' in event.movie_id:  # the only character of these rows that CSV must quote
                        (writers.get(kind) or batch.writer(kind)).writerow(
                            (stamp, event.user_id, event.movie_id, value))
                    else:
                        (handles.get(kind) or batch.handle(kind)).write(
                            f"{stamp},{event.user_id},{event.movie_id},{value}\n")
                else:
                    (writers.get(kind) or batch.writer(kind)).writerow(
                        (stamp, event.user_id, event.server, event.status, _millis(event.response_ms),
                         ",".join(event.movies), event.error or ""))
            batch.lines += len(lines)
            bar.update(len(lines))
            batch.checkpoint()
            source.commit()
            if 0 < next_progress <= batch.lines:
                elapsed = time.monotonic() - started
                log.info("ingest progress", extra=kv(
                    batch=batch.id, lines=batch.lines, events=sum(events.values()),
                    rejected=sum(rejected.values()), lines_per_s=round(batch.lines / max(elapsed, 1e-9))))
                while next_progress <= batch.lines:
                    next_progress += progress_every
        batch.checkpoint(state="complete")
        complete = True
    finally:
        bar.close()
        batch.close()
        source.close()
    report = IngestReport(
        batch_id=batch.id, source=source.name, events_dir=str(events_dir), lines=batch.lines,
        events=dict(sorted(events.items())), rejected=dict(sorted(rejected.items())),
        files=sorted(batch.committed), seconds=time.monotonic() - started, complete=complete,
        source_outages=int(getattr(source, "outages", 0)), source_outage_s=round(getattr(source, "outage_s", 0.0), 1),
    )
    log.info("ingest finished", extra=kv(
        batch=report.batch_id, lines=report.lines, lines_per_s=round(report.lines_per_s),
        **{f"events_{k}": v for k, v in report.events.items()},
        **{f"rejected_{k}": v for k, v in report.rejected.items()},
    ))
    return report


def _millis(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


# --- reading the store back ------------------------------------------------------------------------


def read_manifests(events_dir: Path) -> list[dict]:
    """Every batch manifest of the store, oldest batch first; unreadable manifests are skipped (logged)."""
    out = []
    for path in sorted(Path(events_dir).glob(f"{MANIFEST_PREFIX}*.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("unreadable batch manifest skipped", extra=kv(path=path, error=exc))
            continue
        out.append(manifest)
    return out


class _Prefix(io.RawIOBase):
    """The first ``limit`` bytes of a file: a batch's committed part, without a crash's torn tail."""

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self._handle = handle
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._handle.read(min(len(buffer), self._left))
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._handle.close()
        super().close()


def committed_files(events_dir: Path, kind: str) -> Iterator[tuple[str, BinaryIO]]:
    """(file name, binary stream of its committed bytes) for each batch holding events of ``kind``."""
    stem = STORE_FILES[kind][0]
    for manifest in read_manifests(events_dir):
        for name, info in sorted(manifest.get("files", {}).items()):
            if not name.startswith(stem + "-"):
                continue
            path = Path(events_dir) / name
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                log.warning("batch file missing", extra=kv(batch=manifest.get("batch"), file=name))
                continue
            limit = int(info.get("bytes", 0))
            if os.fstat(handle.fileno()).st_size <= limit:
                yield name, handle
            else:
                yield name, io.BufferedReader(_Prefix(handle, limit))


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="stdin",
                        help="file:PATH, stdin or - (default), or kafka[:TOPIC]")
    parser.add_argument("--events-dir", type=Path, default=None,
                        help="event store directory (default <MOVIEREC_DATA_DIR>/events)")
    parser.add_argument("--topic", default=None, help="Kafka topic (default KAFKA_TOPIC)")
    parser.add_argument("--for", dest="duration", default=None, metavar="DURATION",
                        help="Kafka: how long to collect, e.g. 15m, 30s (default PIPELINE_COLLECT_S)")
    parser.add_argument("--chunk-lines", type=int, default=DEFAULT_CHUNK_LINES,
                        help="lines per durable checkpoint for file and stdin sources")
    parser.add_argument("--progress-every", type=int, default=DEFAULT_PROGRESS_EVERY,
                        help="log progress every N lines (0 = never)")


def main(args: argparse.Namespace) -> int:
    events_dir = args.events_dir or Paths.from_env().data_dir / "events"
    try:
        duration_s = parse_duration(args.duration) if args.duration is not None else None
    except ValueError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    if duration_s is not None and not args.source.startswith("kafka"):
        log.warning("--for applies to kafka only; reading the whole source", extra=kv(source=args.source))
    try:
        source = make_source(args.source, topic=args.topic, duration_s=duration_s, chunk_lines=args.chunk_lines)
    except SourceError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    report = ingest(source, Path(events_dir), progress_every=args.progress_every)
    print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return 0
