"""ReadFromMqtt and its session on a fake paho client: emits, acks after the bundle, reconnects."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from fake_mqtt_client import FakeMessage, new_fake_client, reset

from transforms.mqtt import MqttConfig, MqttPermanentError, ReadFromMqtt
from transforms.mqtt.session import MqttRecord, MqttSession

CONFIG = MqttConfig("127.0.0.1", 1883, client_id="unit-bridge")


def _messages(count: int) -> list[FakeMessage]:
    return [FakeMessage(f"cars/c{i % 3}/sensors", b"%d" % i, mid=i + 1) for i in range(count)]


def test_reads_every_message_and_acks_them_after_the_bundle() -> None:
    broker = reset(_messages(25))
    with TestPipeline(runner="FnApiRunner") as p:
        records = p | ReadFromMqtt(
            CONFIG, "cars/+/sensors", max_records=25, batch_size=4, client_factory=new_fake_client
        )
        assert_that(
            records | beam.Map(lambda r: (r.topic, r.payload, r.qos)),
            equal_to([(f"cars/c{i % 3}/sensors", b"%d" % i, 1) for i in range(25)]),
        )
    assert sorted(broker.acks) == list(range(1, 26))


def test_batched_read_emits_lists_of_records() -> None:
    reset(_messages(10))
    with TestPipeline(runner="FnApiRunner") as p:
        batches = (
            p
            | ReadFromMqtt(
                CONFIG, "cars/#", max_records=10, batch_size=3, client_factory=new_fake_client
            ).batched()
        )
        assert_that(batches | beam.Map(len) | beam.CombineGlobally(sum), equal_to([10]))


def test_refused_session_is_a_permanent_error() -> None:
    reset([], refuse="Not authorized")
    session = MqttSession(CONFIG, ["cars/#"], client_factory=new_fake_client, connect_timeout_s=5)
    with pytest.raises(MqttPermanentError, match="Not authorized"):
        session.connect()


def _session(messages: list[FakeMessage], clock=None) -> MqttSession:
    reset(messages)
    session = MqttSession(
        CONFIG, ["cars/#"], client_factory=new_fake_client, clock=clock or (lambda: 100.0)
    )
    session.connect()
    deadline = 50
    while session.queued() < len(messages) and deadline:
        deadline -= 1
        session.take(0, 0.01)
    return session


def test_acks_of_an_earlier_connection_are_not_sent() -> None:
    session = _session(_messages(4))
    first = session.take(2, 0)
    session.reconnect()  # the broker resends everything unacked, under the same packet ids
    assert session.ack(first) == 0
    resent = session.take(10, 1.0)
    assert [r.mid for r in resent] == [1, 2, 3, 4]
    assert session.ack(resent) == 4


def test_unread_records_come_back_first_and_low_watermark_waits_for_them() -> None:
    now = [100.0]
    session = _session(_messages(3), clock=lambda: now[0])
    now[0] = 200.0
    taken = session.take(2, 0)
    session.unread(taken)
    assert session.low_watermark_ms() == 100_000  # the oldest queued message's receive time
    assert [r.mid for r in session.take(3, 0)] == [1, 2, 3]
    assert session.low_watermark_ms() == 200_000  # nothing queued: now


def test_unacked_batches_are_reported_until_acked() -> None:
    now = [100.0]
    session = _session(_messages(2), clock=lambda: now[0])
    taken = session.take(2, 0)
    now[0] = 130.0
    assert session.oldest_unacked_s() == 30.0
    session.ack(taken)
    assert session.oldest_unacked_s() == 0.0


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        ("cars/#/x", "'#' must be a whole last level"),
        ("cars/c+/x", "'\\+' must be a whole level"),
    ],
)
def test_bad_topic_filters_are_refused_at_construction(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReadFromMqtt(CONFIG, bad)


def test_record_is_a_frozen_value() -> None:
    record = MqttRecord("a/b", b"x", 1, False, 5)
    with pytest.raises(AttributeError):
        record.topic = "c"  # type: ignore[misc]


def test_a_bundle_never_acknowledged_makes_the_reader_reconnect_for_a_resend() -> None:
    from transforms.mqtt.reader import _ReadMqttFn

    broker = reset(_messages(3))
    read = _ReadMqttFn(
        CONFIG,
        ("cars/#",),
        qos=1,
        max_records=None,
        batch_size=10,
        poll_timeout_s=0.1,
        max_process_s=1.0,
        redeliver_after_s=0.0,  # any unacknowledged batch counts as a failed bundle
        connect_timeout_s=5,
        client_factory=new_fake_client,
    )
    read.setup()
    try:
        session = read._open()
        assert len(session.take(10, 1.0)) == 3  # handed out; its bundle never finalizes
        time.sleep(0.01)
        assert read._open() is session and broker.connections == 2  # reconnected
        assert [r.mid for r in session.take(10, 1.0)] == [1, 2, 3]  # the broker resent them
    finally:
        read.teardown()
