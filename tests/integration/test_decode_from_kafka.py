"""Kafka → ReadFromKafka → DecodeAndValidate on the real local broker: rows + dead letters."""

from __future__ import annotations

import datetime
import io
import json

import apache_beam as beam
import fastavro
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Producer
from local_schema_registry import LocalSchemaRegistry

from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.schema import bundled_schema, bundled_schema_path
from transforms.kafka.reader import ReadFromKafka

pytestmark = pytest.mark.integration

CAR = bundled_schema("car_sensor")


def reading(i: int) -> dict:
    return {
        "event_id": f"e{i}",
        "car_id": f"car-{i % 3}",
        "event_time": f"2026-11-22T01:02:{i:02d}Z",
        "speed_kmh": 50.0 + i,
        "engine_rpm": 2000,
        "engine_temp_c": 90.0,
        "oil_pressure_kpa": 300.0,
        "battery_voltage": 12.5,
        "tire_pressure_kpa": 230.0,
    }


def produce(kafka_config, topic: str, values: list[bytes | None]) -> None:
    producer = Producer(kafka_config.producer_dict())
    for value in values:
        producer.produce(topic, value=value, key=b"k", partition=0)
    assert producer.flush(30) == 0


def expected_row(i: int) -> dict:
    row = reading(i)
    return {
        **row,
        "event_time": row["event_time"].replace("Z", ".000000Z"),
        "engine_rpm": 2000.0,
        "latitude": None,
        "longitude": None,
        "is_anomaly": None,
    }


def test_json_topic_splits_into_rows_and_dead_letters(kafka_config, topic_factory):
    topic = topic_factory(partitions=1)
    values = [json.dumps(reading(i)).encode() for i in range(5)]
    bad = {
        5: b"{not json",
        6: json.dumps({**reading(6), "speed_kmh": "fast"}).encode(),
        7: None,  # tombstone
        8: b"\xff\xfe",
        9: json.dumps(reading(9)).encode().replace(b'"speed_kmh": 59.0', b'"speed_kmh": 1e400'),
        10: b"x" * 3000,
    }
    produce(kafka_config, topic, values + [bad[k] for k in sorted(bad)])

    with TestPipeline() as p:
        decoded = (
            p
            | ReadFromKafka(
                kafka_config, topic, start="earliest", stop="end_at_launch", commit_offsets=False
            )
            | DecodeAndValidate(CAR, "JSON", max_message_bytes=2000)
        )
        assert_that(decoded.rows, equal_to([expected_row(i) for i in range(5)]), label="Rows")
        assert_that(
            decoded.dead_letters
            | beam.Map(lambda d: (d.offset, d.error_type, d.topic, d.partition, d.payload)),
            equal_to(
                [
                    (5, "InvalidJson", topic, 0, bad[5]),
                    (6, "WrongType", topic, 0, bad[6]),
                    (7, "EmptyPayload", topic, 0, None),
                    (8, "NotUtf8", topic, 0, bad[8]),
                    (9, "NonFiniteNumber", topic, 0, bad[9]),
                    (10, "Oversize", topic, 0, bad[10]),
                ]
            ),
            label="DeadLetters",
        )


def test_avro_topic_with_the_bundled_writer_schema(kafka_config, topic_factory):
    topic = topic_factory(partitions=1)
    writer = fastavro.parse_schema(CAR.to_avro())

    values = []
    for i in range(3):
        buffer = io.BytesIO()
        record = {
            **expected_row(i),
            "event_time": datetime.datetime(2026, 11, 22, 1, 2, i, tzinfo=datetime.UTC),
        }
        fastavro.schemaless_writer(buffer, writer, record)
        values.append(buffer.getvalue())
    produce(kafka_config, topic, values + [b"\x07"])

    with TestPipeline() as p:
        decoded = (
            p
            | ReadFromKafka(
                kafka_config, topic, start="earliest", stop="end_at_launch", commit_offsets=False
            )
            | DecodeAndValidate(CAR, "AVRO")
        )
        assert_that(decoded.rows, equal_to([expected_row(i) for i in range(3)]), label="Rows")
        assert_that(
            decoded.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
            equal_to([(3, "InvalidAvro")]),
            label="DeadLetters",
        )


def test_confluent_wire_format_topic_through_a_registry(kafka_config, topic_factory):
    """Produced by confluent-kafka's AvroSerializer (auto-registering); decoded via the registry."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = topic_factory(partitions=1)
    with LocalSchemaRegistry() as registry:
        serializer = AvroSerializer(
            SchemaRegistryClient({"url": registry.url}),
            open(bundled_schema_path("car_sensor", "avsc")).read(),
        )
        context = SerializationContext(topic, MessageField.VALUE)
        values = [
            serializer(
                {
                    **expected_row(i),
                    "event_time": datetime.datetime(2026, 11, 22, 1, 2, i, tzinfo=datetime.UTC),
                },
                context,
            )
            for i in range(3)
        ]
        unknown_id = b"\x00\x00\x00\x00\x63" + values[0][5:]  # schema id 99
        produce(kafka_config, topic, values + [unknown_id, b"plain text"])

        with TestPipeline() as p:
            decoded = (
                p
                | ReadFromKafka(
                    kafka_config,
                    topic,
                    start="earliest",
                    stop="end_at_launch",
                    commit_offsets=False,
                )
                | DecodeAndValidate(
                    CAR, "AVRO_CONFLUENT_WIRE_FORMAT", schema_registry_url=registry.url
                )
            )
            assert_that(decoded.rows, equal_to([expected_row(i) for i in range(3)]), label="Rows")
            assert_that(
                decoded.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
                equal_to([(3, "UnknownSchemaId"), (4, "BadWireFormat")]),
                label="DeadLetters",
            )
