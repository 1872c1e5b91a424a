"""The simulator's event log on Kafka, read as a line source for ingest (the producer is `simulator.kafka_sink`).

``KafkaSource`` reads a topic as a member of a consumer group and hands ingest lists of raw lines.
Offsets are committed by hand and only when ingest says a batch is durable (``commit()``), so a
collector that dies between reading and writing loses nothing: the next one in the same group gets
the uncommitted lines again (at-least-once; `prepare` de-duplicates). The committed offsets are
those of what was *yielded*, never of what was merely fetched, so stopping at ``max_lines`` or at the
end of a window leaves the rest of the topic for the next run.

A broker outage is not an error of the collector: librdkafka reconnects by itself, and the loop logs
the outage and waits with backoff until the window ends. Bytes that are not UTF-8 become U+FFFD so
that the parser counts the line as bad instead of ingestion failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from app.logs import RepeatFilter, kv
from app.settings import Kafka

log = logging.getLogger(__name__)


librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")
librdkafka_log.addFilter(RepeatFilter())

DEFAULT_BATCH_SIZE = 10_000  # lines per yielded batch = per durable checkpoint of ingest
DEFAULT_LINGER_S = 1.0  # a batch is handed over at the latest this long after polling started
COMMIT_RETRY_S = 30.0  # a failing commit is retried at least this long (longer while the window lasts)
MAX_BACKOFF_S = 5.0
OUTAGE_LOG_EVERY_S = 10.0

# Errors that mean "the broker is (for now) not reachable": waited out, never fatal.
_OUTAGE_CODES = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                 KafkaError._RESOLVE, KafkaError.NETWORK_EXCEPTION, KafkaError.COORDINATOR_NOT_AVAILABLE,
                 KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS}

_RETRY_COMMIT_CODES = _OUTAGE_CODES | {
    KafkaError._WAIT_COORD, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.REQUEST_TIMED_OUT}


def message_lines(value: bytes | None) -> list[str]:
    """The log lines of one message: usually one; several if a producer joined them with newlines."""
    if not value:
        return [""]
    text = value.decode("utf-8", "replace")
    if "\n" not in text:
        return [text]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


class KafkaSource:
    """Batches of raw log lines from ``topic`` for the ingest loop (the ``LineSource`` protocol).

    ``for_seconds`` is the collection window, counted from the first ``batches()`` call; ``max_lines``
    stops earlier (after the message that reaches it). With neither, it reads until ``stop()``.
    ``bootstrap``, ``topic`` and ``group`` default to ``app.settings.Kafka``. ``duration_s`` is another
    name of ``for_seconds`` (the keyword ``ingest.make_source`` uses).
    """

    def __init__(self, bootstrap: str | None = None, topic: str | None = None, group: str | None = None,
                 for_seconds: float | None = None, max_lines: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, *, duration_s: float | None = None,
                 linger_s: float = DEFAULT_LINGER_S, config: dict[str, Any] | None = None) -> None:
        settings = Kafka.from_env()
        self.bootstrap = bootstrap or settings.bootstrap
        self.topic = topic or settings.topic
        self.group = group or settings.group
        self.for_seconds = for_seconds if for_seconds is not None else duration_s
        self.max_lines = max_lines
        self.batch_size = max(1, int(batch_size))
        self.linger_s = max(0.01, linger_s)
        self.name = f"kafka:{self.topic}"
        self.lines = 0  # lines yielded so far
        self._yielded: dict[tuple[str, int], int] = {}  # partition → next offset after what was yielded
        self._committed: dict[tuple[str, int], int] = {}
        self._deadline: float | None = None
        self._stop = threading.Event()
        self._outage_since: float | None = None
        self._outage_logged = 0.0
        self.outages = 0  # broker outages waited out (the ingest report carries both)
        self.outage_s = 0.0  # seconds from the first error of an outage to the first line after it
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "client.id": "movierec-collector",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": True,
            "reconnect.backoff.ms": 200,
            "reconnect.backoff.max.ms": 2000,
            "topic.metadata.refresh.interval.ms": 10_000,
            "error_cb": self._on_error,
            "logger": librdkafka_log,
        }
        conf.update(config or {})
        self._consumer = Consumer(conf)
        self._closed = False

    # --- the protocol ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[list[str]]:
        return self.batches()

    def batches(self) -> Iterator[list[str]]:
        """Lists of lines until the window ends, ``max_lines`` is reached or ``stop()`` is called."""
        if self.for_seconds is not None and self._deadline is None:
            self._deadline = time.monotonic() + max(0.0, self.for_seconds)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)
        log.info("kafka collection started", extra=kv(
            bootstrap=self.bootstrap, topic=self.topic, group=self.group, for_seconds=self.for_seconds,
            max_lines=self.max_lines))
        backoff = 0.0
        while not self._finished():
            want = self.batch_size
            if self.max_lines is not None:
                want = min(want, self.max_lines - self.lines)
            timeout = self.linger_s if self._deadline is None else min(self.linger_s, self._remaining())
            messages = self._consumer.consume(num_messages=want, timeout=max(0.0, timeout))
            batch: list[str] = []
            positions: dict[tuple[str, int], int] = {}
            failed = None
            for msg in messages:
                error = msg.error()
                if error is not None:
                    failed = error
                    continue
                batch.extend(message_lines(msg.value()))
                positions[(msg.topic(), msg.partition())] = msg.offset() + 1
            if failed is not None and not batch:
                self._on_error(failed)
            if batch:
                if self._outage_since is not None:
                    waited = time.monotonic() - self._outage_since
                    self.outages += 1
                    self.outage_s += waited
                    log.info("kafka broker reachable again", extra=kv(topic=self.topic, waited_s=round(waited, 1)))
                    self._outage_since = None
                backoff = 0.0
                self._yielded.update(positions)
                self.lines += len(batch)
                yield batch
            elif self._outage_since is not None:
                # Nothing came and the broker is away: wait a little longer each time, up to the window.
                backoff = min(MAX_BACKOFF_S, max(0.25, backoff * 2))
                self._stop.wait(min(backoff, self._remaining()))
        log.info("kafka collection finished", extra=kv(topic=self.topic, group=self.group, lines=self.lines))

    def commit(self) -> None:
        """Commit, synchronously, the offsets after everything yielded so far (called once it is durable).

        A broker that is away is retried with backoff (at least ``COMMIT_RETRY_S``, longer while the
        window lasts). If it still fails the offsets stay uncommitted, the next ``commit()`` covers
        them, and at worst the next run reads those lines again.
        """
        todo = {tp: off for tp, off in self._yielded.items() if self._committed.get(tp) != off}
        if not todo:
            return
        offsets = [TopicPartition(t, p, off) for (t, p), off in sorted(todo.items())]
        left = self._remaining()
        give_up = time.monotonic() + max(COMMIT_RETRY_S, left if left != float("inf") else 0.0)
        backoff = 0.25
        while True:
            try:
                result = self._consumer.commit(offsets=offsets, asynchronous=False)
                bad = [tp for tp in result or [] if tp.error is not None]
                if not bad:
                    self._committed.update(todo)
                    return
                raise KafkaException(bad[0].error)
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is not None and error.code() == KafkaError._NO_OFFSET:
                    return
                transient = error is None or error.retriable() or error.code() in _RETRY_COMMIT_CODES
                if not transient or time.monotonic() + backoff > give_up or self._closed:
                    log.error("kafka commit failed; those lines may be read again next run", extra=kv(
                        topic=self.topic, group=self.group, error=exc, offsets=_describe(todo)))
                    return
                log.warning("kafka commit failed, retrying", extra=kv(
                    topic=self.topic, error=exc, retry_in_s=backoff))
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def close(self) -> None:
        """Leave the group without committing anything more (what was not committed comes again)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("kafka consumer close failed", extra=kv(topic=self.topic, error=exc))

    def stop(self) -> None:
        """End ``batches()`` after the current poll (from another thread or a signal handler)."""
        self._stop.set()

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------------

    def _remaining(self) -> float:
        if self._deadline is None:
            return float("inf") if not self._stop.is_set() else 0.0
        return max(0.0, self._deadline - time.monotonic())

    def _finished(self) -> bool:
        if self._stop.is_set():
            return True
        if self.max_lines is not None and self.lines >= self.max_lines:
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume a re-assigned partition after what this collector already yielded, not from its commit."""
        for tp in partitions:
            mine = self._yielded.get((tp.topic, tp.partition))
            if mine is not None:
                tp.offset = mine
        consumer.assign(partitions)
        log.info("kafka partitions assigned", extra=kv(
            topic=self.topic, group=self.group, partitions=",".join(str(tp.partition) for tp in partitions)))

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (also fed errors of consumed messages): outages are waited out."""
        now = time.monotonic()
        if error.code() in _OUTAGE_CODES or error.retriable():
            if self._outage_since is None:
                self._outage_since = now
            if now - self._outage_logged >= OUTAGE_LOG_EVERY_S:
                self._outage_logged = now
                log.warning("kafka broker unreachable, waiting", extra=kv(
                    bootstrap=self.bootstrap, topic=self.topic, error=error.str(),
                    waited_s=round(now - self._outage_since, 1),
                    window_left_s=None if self._deadline is None else round(self._remaining(), 1)))
            return
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            log.info("kafka topic not there yet, waiting", extra=kv(topic=self.topic))
            return
        log.warning("kafka error", extra=kv(topic=self.topic, error=error.str(), fatal=error.fatal()))


def _describe(offsets: dict[tuple[str, int], int]) -> str:
    return ",".join(f"{t}/{p}@{o}" for (t, p), o in sorted(offsets.items()))
