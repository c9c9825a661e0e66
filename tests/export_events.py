"""Events, bad messages and Kafka helpers shared by the export pipelines' integration tests."""

from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer, TopicPartition

__all__ = ["creditcard_event", "invalid_messages", "produce", "committed_total"]


def creditcard_event(i: int) -> dict:
    """A valid row of the bundled creditcard schema; Class is null for every fifth event."""
    row = {"event_id": f"evt-{i:04d}", "card_id": f"card-{i % 4}", "Time": float(i)}
    row.update({f"V{k}": round((i * k) % 17 / 7.0 - 1.0, 6) for k in range(1, 29)})
    row.update({"Amount": round(3.5 * i + 0.25, 2), "Class": i % 2 if i % 5 else None})
    return row


def invalid_messages() -> list[bytes]:
    """One message per decode/validate failure kind (each must become a dead letter)."""
    missing = creditcard_event(900)
    del missing["Amount"]
    wrong_type = {**creditcard_event(901), "V3": "high"}
    unknown = {**creditcard_event(902), "merchant": "acme"}
    return [
        b"{not json",
        b"\xff\xfe not utf-8",
        json.dumps(missing).encode(),
        json.dumps(wrong_type).encode(),
        json.dumps(unknown).encode(),
    ]


def produce(kafka_config, topic: str, values: list[bytes]) -> None:
    producer = Producer(kafka_config.producer_dict())
    for index, value in enumerate(values):
        producer.produce(topic, value, key=f"card-{index % 4}".encode())
    assert producer.flush(30) == 0


def committed_total(kafka_config, topic: str, group: str, partitions: int) -> int:
    consumer = Consumer(kafka_config.consumer_dict(group))
    try:
        offsets = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()
