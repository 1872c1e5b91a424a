"""The event log through a real Kafka broker: what the simulator publishes is what ingest collects.

Each test uses its own topic and consumer group on the session's broker (tests.fixtures.kafka); the
restart test runs a private broker that it stops and starts under a live consumer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.contracts.events import MalformedLine, RateEvent, RecommendationEvent, WatchEvent, format_line, parse_line
from auto_deployment.data.ingest import ingest
from auto_deployment.data.kafka_source import KafkaSource, message_lines
from simulator.kafka_sink import KafkaSink
from tests.fixtures.kafka import free_ports

pytestmark = pytest.mark.services

WINDOW_S = 60.0  # upper bound of every collection below: they all stop earlier, at max_lines
QUIET_WINDOW_S = 4.0  # how long a consumer listens to show that nothing more is delivered


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event_lines(count: int, seed: int = 0) -> list[str]:
    """Distinct valid log lines of all three kinds (distinct user ids make each one unique)."""
    start = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)
    lines = []
    for i in range(count):
        when = start + timedelta(seconds=i, microseconds=seed)
        user = seed * 100_000 + i
        if i % 3 == 0:
            event = WatchEvent(time=when, user_id=user, movie_id="the+matrix+1999", minute=i % 120)
        elif i % 3 == 1:
            event = RateEvent(time=when, user_id=user, movie_id="walle+2008", rating=1 + i % 5)
        else:
            event = RecommendationEvent(time=when, user_id=user, server="inference_stable_1", status=200,
                                        movies=("the+matrix+1999", "walle+2008"), response_ms=12.5)
        lines.append(format_line(event))
    return lines


def publish(bootstrap: str, topic: str, values: list[str] | list[bytes]) -> None:
    sink = KafkaSink(bootstrap, topic)
    for value in values:
        sink.send(value)
    assert sink.flush(30) == 0
    assert sink.failed == 0


def collect(source: KafkaSource, commit: bool = True) -> list[str]:
    """Every line the source yields, committing after each batch like the ingest loop does."""
    got: list[str] = []
    try:
        for batch in source:
            got.extend(batch)
            if commit:
                source.commit()
    finally:
        source.close()
    return got


def test_published_events_arrive_in_order_and_parse(kafka_broker: str) -> None:
    topic = unique("events")
    sent = event_lines(30)
    publish(kafka_broker, topic, sent)

    got = collect(KafkaSource(kafka_broker, topic, unique("g"), for_seconds=WINDOW_S, max_lines=len(sent)))

    assert got == sent
    assert [parse_line(line).kind for line in got] == [parse_line(line).kind for line in sent]
    assert {parse_line(line).kind for line in got} == {"watch", "rate", "recommendation"}


def test_restarted_consumer_gets_every_event_exactly_once_and_uncommitted_batch_again(kafka_broker: str) -> None:
    topic, group = unique("resume"), unique("g")
    sent = event_lines(60, seed=1)
    publish(kafka_broker, topic, sent)

    first = KafkaSource(kafka_broker, topic, group, for_seconds=WINDOW_S, batch_size=10)
    batches = first.batches()
    committed: list[str] = []
    for _ in range(2):
        batch = next(batches)
        committed.extend(batch)
        first.commit()
    uncommitted = next(batches)  # yielded, then the collector "dies" before it was made durable
    batches.close()
    first.close()
    assert committed and uncommitted

    second = KafkaSource(kafka_broker, topic, group, for_seconds=WINDOW_S, max_lines=len(sent) - len(committed))
    rest = collect(second)

    assert rest[: len(uncommitted)] == uncommitted
    assert sorted(committed + rest) == sorted(sent)  # each event exactly once over the two consumers
    third = KafkaSource(kafka_broker, topic, group, for_seconds=QUIET_WINDOW_S)
    assert collect(third) == []  # everything was committed: nothing is delivered a third time


def test_stop_at_max_lines_leaves_the_rest_for_the_next_run(kafka_broker: str) -> None:
    topic, group = unique("maxlines"), unique("g")
    sent = event_lines(25, seed=2)
    publish(kafka_broker, topic, sent)

    head = collect(KafkaSource(kafka_broker, topic, group, for_seconds=WINDOW_S, max_lines=10, batch_size=4))
    tail = collect(KafkaSource(kafka_broker, topic, group, for_seconds=WINDOW_S, max_lines=15))

    assert head == sent[:10]
    assert tail == sent[10:]


def test_garbage_bytes_become_rejected_lines_not_a_crash(kafka_broker: str, tmp_path) -> None:
    topic, group = unique("garbage"), unique("g")
    valid = event_lines(12, seed=3)
    garbage: list[bytes] = [b"\xff\xfe\x00\x81 binary junk", b"", b"2026-11-24T07:30:00,5,GET /rate/w\xe9ll+2001=4",
                            b"\xc3\x28 truncated utf-8"]
    values = [line.encode() for line in valid[:6]] + garbage + [line.encode() for line in valid[6:]]
    publish(kafka_broker, topic, values)

    source = KafkaSource(kafka_broker, topic, group, for_seconds=WINDOW_S, max_lines=len(values), batch_size=5)
    report = ingest(source, tmp_path / "events")

    assert report.complete
    assert report.lines == len(values)
    assert sum(report.events.values()) == len(valid)
    assert report.rejected_total == len(garbage)
    for value in garbage:
        (line,) = message_lines(value)
        with pytest.raises(MalformedLine):
            parse_line(line)
    # ingest committed after each durable batch: the same group has nothing left to read
    assert collect(KafkaSource(kafka_broker, topic, group, for_seconds=QUIET_WINDOW_S)) == []


def test_message_lines_splits_joined_lines_and_replaces_bad_bytes() -> None:
    assert message_lines(b"a,1\nb,2\n") == ["a,1", "b,2"]
    assert message_lines(None) == [""]
    assert message_lines(b"ok\xffok") == ["ok\ufffdok"]


def test_unreachable_broker_is_waited_out_until_the_window_ends(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)  # nothing listens there
    caplog.set_level(logging.WARNING, logger="auto_deployment.data.kafka_source")
    source = KafkaSource(f"127.0.0.1:{port}", unique("nobroker"), unique("g"), for_seconds=3.0)

    assert collect(source) == []
    assert any("unreachable" in record.getMessage() for record in caplog.records)


@pytest.mark.slow
def test_consumer_waits_through_broker_restart_and_resumes(kafka_broker_factory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="auto_deployment.data.kafka_source")
    broker = kafka_broker_factory()
    topic, group = unique("restart"), unique("g")
    before, after = event_lines(20, seed=4), event_lines(20, seed=5)
    publish(broker.bootstrap, topic, before)

    got: list[str] = []
    errors: list[BaseException] = []
    source = KafkaSource(broker.bootstrap, topic, group, for_seconds=150.0, max_lines=len(before) + len(after))

    def consume() -> None:
        try:
            for batch in source:
                got.extend(batch)
                source.commit()
        except BaseException as exc:  # the assertions below report it
            errors.append(exc)
        finally:
            source.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(got) < len(before) and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    assert len(got) == len(before), "the first half never arrived"

    broker.stop()
    time.sleep(4)  # the consumer polls a dead broker for a while
    assert thread.is_alive() and not errors
    broker.start()
    publish(broker.bootstrap, topic, after)
    thread.join(timeout=120)

    assert not thread.is_alive()
    assert not errors, errors
    assert got == before + after
    assert any("unreachable" in record.getMessage() for record in caplog.records)
    # the outage is counted for the run report: one, lasting at least the 4 s the broker was away
    assert source.outages == 1 and source.outage_s >= 4.0, (source.outages, source.outage_s)
    # the offsets committed after the restart hold: the group has nothing more to read
    assert collect(KafkaSource(broker.bootstrap, topic, group, for_seconds=QUIET_WINDOW_S)) == []
