"""TopicRecordLimit and record sizes with a fake admin client (real broker: tests/integration)."""

from __future__ import annotations

import logging
from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException

from transforms.kafka.config import KafkaConfig
from transforms.kafka.limits import (
    PRODUCER_MAX_BYTES_DEFAULT,
    RECORD_OVERHEAD_BYTES,
    TopicRecordLimit,
    producer_max_bytes,
    record_bytes,
)

CONFIG = KafkaConfig("broker:9092")


class _Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class FakeAdmin:
    """``describe_configs`` answering ``max.message.bytes`` (or failing); counts its calls."""

    calls: list[dict] = []

    def __init__(self, settings: dict, topic_max: str | None, error: Exception | None) -> None:
        self._topic_max = topic_max
        self._error = error
        FakeAdmin.calls.append(settings)

    def describe_configs(self, resources, request_timeout):  # noqa: ANN001, ANN201
        future: Future = Future()
        if self._error is not None:
            future.set_exception(self._error)
        else:
            future.set_result({"max.message.bytes": _Entry(self._topic_max)})
        return {resources[0]: future}


def _factory(topic_max: str | None = "1048588", error: Exception | None = None):  # noqa: ANN202
    def build(settings: dict) -> FakeAdmin:
        return FakeAdmin(settings, topic_max, error)

    return build


def test_record_bytes_counts_key_value_and_headers_in_utf8():
    assert record_bytes(None, None) == 0
    assert record_bytes(b"key", b"value") == 8
    assert record_bytes("é", "ab", [("h", b"12"), ("n", None)]) == 2 + 2 + 3 + 1


def test_the_producer_limit_comes_from_extra_or_librdkafka_default():
    assert producer_max_bytes(CONFIG) == PRODUCER_MAX_BYTES_DEFAULT == 1_000_000
    assert producer_max_bytes(CONFIG.with_extra({"message.max.bytes": 5_000_000})) == 5_000_000


def test_the_smaller_limit_wins_minus_the_overhead():
    assert RECORD_OVERHEAD_BYTES == 512
    default = TopicRecordLimit(CONFIG, "default-topic", admin_factory=_factory("1048588"))
    assert default.resolve() == 1_000_000 - 512
    small = TopicRecordLimit(CONFIG, "small-topic", admin_factory=_factory("300000"))
    assert small.resolve() == 300_000 - 512
    raised = TopicRecordLimit(
        CONFIG.with_extra({"message.max.bytes": "2000000"}),
        "big",
        admin_factory=_factory("4000000"),
    )
    assert raised.resolve() == 2_000_000 - 512
    assert default.describe() == "Kafka topic 'default-topic'"


def test_the_broker_is_asked_once_per_process():
    FakeAdmin.calls.clear()
    factory = _factory("700000")
    for _ in range(3):
        assert TopicRecordLimit(CONFIG, "cached", admin_factory=factory).resolve() == 699_488
    assert len(FakeAdmin.calls) == 1
    assert FakeAdmin.calls[0]["bootstrap.servers"] == "broker:9092"


def test_an_unreadable_topic_setting_falls_back_to_the_producer_limit_with_a_warning(caplog):
    error = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    limit = TopicRecordLimit(CONFIG, "secret-topic", admin_factory=_factory(error=error))
    with caplog.at_level(logging.WARNING, logger="transforms.kafka.limits"):
        assert limit.resolve() == 1_000_000 - 512
    assert "cannot read max.message.bytes" in caplog.text
    assert "message.max.bytes=1000000" in caplog.text


def test_a_producer_limit_above_the_topics_is_warned_about(caplog):
    config = CONFIG.with_extra({"message.max.bytes": "5000000"})
    limit = TopicRecordLimit(config, "strict", admin_factory=_factory("1048588"))
    with caplog.at_level(logging.WARNING, logger="transforms.kafka.limits"):
        assert limit.resolve() == 1_048_588 - 512
    assert "batches between the two are rejected whole" in caplog.text


def test_bad_arguments_fail_at_construction_or_resolution():
    with pytest.raises(ValueError, match="topic"):
        TopicRecordLimit(CONFIG, "")
    with pytest.raises(ValueError, match="overhead_bytes"):
        TopicRecordLimit(CONFIG, "t", overhead_bytes=-1)
    tiny = TopicRecordLimit(CONFIG, "tiny", admin_factory=_factory("400"))
    with pytest.raises(ValueError, match="leaves no room"):
        tiny.resolve()
