"""The simulator's event log published to Kafka (``--out kafka``), as the streaming service does."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from app.logs import RepeatFilter, kv
from app.settings import Kafka

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")
librdkafka_log.addFilter(RepeatFilter())
OUTAGE_LOG_EVERY_S = 10.0


class KafkaSink:
    """Publishes log lines to a topic (the simulator's ``--out kafka``); safe to call from many threads.

    Delivery is asynchronous: ``flush()`` waits until every line is acknowledged (or its delivery
    failed, which is counted in ``failed`` and logged). librdkafka retries through a broker outage.
    """

    def __init__(self, bootstrap: str | None = None, topic: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        settings = Kafka.from_env()
        self.bootstrap = bootstrap or settings.bootstrap
        self.topic = topic or settings.topic
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._last_failure_log = 0.0
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": "movierec-simulator",
            "linger.ms": 20,
            "enable.idempotence": True,
            "reconnect.backoff.max.ms": 2000,
            "error_cb": self._on_error,
            "logger": librdkafka_log,
        }
        conf.update(config or {})
        self._producer = Producer(conf)

    def send(self, line: str | bytes) -> None:
        """Queue one line (a trailing newline is dropped); blocks briefly only while the queue is full."""
        value = line if isinstance(line, bytes) else line.encode("utf-8", "replace")
        if value.endswith(b"\n"):
            value = value[:-1]
        while True:
            try:
                self._producer.produce(self.topic, value=value, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
        with self._lock:
            self.sent += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every queued line to be acknowledged; returns how many are still undelivered."""
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("kafka lines not yet delivered", extra=kv(topic=self.topic, undelivered=left))
        return left

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_delivery(self, error: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if error is None:
                self.delivered += 1
                return
            self.failed += 1
            now = time.monotonic()
            if now - self._last_failure_log < OUTAGE_LOG_EVERY_S:
                return
            self._last_failure_log = now
        log.error("kafka delivery failed", extra=kv(topic=self.topic, error=error.str(), failed=self.failed))

    def _on_error(self, error: KafkaError) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_failure_log < OUTAGE_LOG_EVERY_S:
                return
            self._last_failure_log = now
        log.warning("kafka producer error", extra=kv(bootstrap=self.bootstrap, error=error.str()))
