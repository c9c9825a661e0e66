"""Read a topic back the way a test checks a pipeline: every message up to its end right now."""

from __future__ import annotations

import json
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

__all__ = ["read_event_ids", "read_topic"]


def read_topic(
    config: KafkaConfig | str, topic: str, partitions: int, *, timeout_s: float = 60.0
) -> list:
    """Every message of ``topic``'s ``partitions`` up to their ends when called.

    ``config`` is a KafkaConfig or a bootstrap address (then with the local broker's tuning).
    Fails when a message carries an error or the read does not reach the ends in ``timeout_s``.
    """
    if isinstance(config, str):
        config = KafkaConfig(bootstrap_servers=config).with_extra(LOCAL_BROKER_SETTINGS)
    consumer = Consumer(config.consumer_dict(f"reader-{uuid.uuid4().hex}"))
    try:
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages: list = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < sum(ends) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                if message.offset() < ends[message.partition()]:  # a live topic grows on
                    messages.append(message)
        assert len(messages) == sum(ends), f"read {len(messages)} of {sum(ends)} in {topic}"
        return messages
    finally:
        consumer.close()


def read_event_ids(config: KafkaConfig | str, topic: str, partitions: int) -> set[str]:
    """The ``event_id`` fields of every JSON message of ``topic`` (events or predictions)."""
    return {json.loads(m.value())["event_id"] for m in read_topic(config, topic, partitions)}
