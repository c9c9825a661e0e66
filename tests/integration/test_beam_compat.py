"""Beam's own ReadFromKafka/WriteToKafka usage, unchanged but for the import, on the real broker.

The first tests run Beam's cross-language Kafka integration test
(``apache_beam/io/external/xlang_kafkaio_it_test.py``: its pipeline builders and its checks) with
that module's ``ReadFromKafka``/``WriteToKafka`` names pointing at ours, then compare what the
pipeline read with what a plain confluent-kafka consumer sees. The others follow the usage of
Beam's ``examples/kafkataxi/kafka_taxi.py`` (``with_metadata``) and the documented arguments.
"""

from __future__ import annotations

import struct
from collections import Counter

import apache_beam as beam
import confluent_kafka
import pytest
from apache_beam.io.external import xlang_kafkaio_it_test as beam_it
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.kafka_topics import read_topic
from transforms.kafka import beam_compat

pytestmark = pytest.mark.integration

SERDE = "org.apache.kafka.common.serialization."


@pytest.fixture
def beam_it_with_our_transforms(monkeypatch):
    """Beam's IT module, its ``from apache_beam.io.kafka import ...`` names swapped for ours."""
    monkeypatch.setattr(beam_it, "ReadFromKafka", beam_compat.ReadFromKafka)
    monkeypatch.setattr(beam_it, "WriteToKafka", beam_compat.WriteToKafka)
    return beam_it


@pytest.mark.parametrize("null_key", [False, True])
def test_beams_own_kafka_it_runs_on_our_transforms(
    beam_it_with_our_transforms, kafka_bootstrap, topic_factory, null_key
):
    it = beam_it_with_our_transforms
    topic = topic_factory(partitions=3)
    creator = it.CrossLanguageKafkaIO(kafka_bootstrap, topic, null_key)
    check = it.CrossLanguageKafkaIOTest()
    check.run_kafka_write(creator)
    expected_key = None if null_key else b"key"
    # Beam's check: the read gives (key, str(i).encode()) for i in range(NUM_RECORDS).
    check.run_kafka_read(creator, expected_key)

    seen = read_topic(kafka_bootstrap, topic, 3)
    assert Counter((m.key(), m.value()) for m in seen) == Counter(
        (expected_key, str(i).encode()) for i in range(it.NUM_RECORDS)
    )


def _produce(bootstrap: str, topic: str, messages: list[tuple]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
    for key, value, headers in messages:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0


def test_with_metadata_rows_match_a_plain_consumer(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=2)
    sent = [
        (
            f"k{i}".encode() if i % 3 else None,
            f"ride {i}".encode(),
            [("source", b"taxi"), ("n", str(i).encode())] if i % 2 else None,
        )
        for i in range(40)
    ]
    _produce(kafka_bootstrap, topic, sent)
    seen = read_topic(kafka_bootstrap, topic, 2)
    expected = [
        (
            m.topic(),
            m.partition(),
            m.offset(),
            m.timestamp()[1],
            "CreateTime",
            0,
            m.key(),
            m.value(),
            tuple(m.headers() or ()),
        )
        for m in seen
    ]

    def as_tuple(record):  # kafka_taxi.py reads record.value and record.timestamp
        return (
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.timestampTypeName,
            record.timestampTypeId,
            record.key,
            record.value,
            tuple((h.key, h.value) for h in record.headers),
        )

    with test_pipeline.TestPipeline() as p:
        rows = p | beam_compat.ReadFromKafka(
            consumer_config={"bootstrap.servers": kafka_bootstrap, "auto.offset.reset": "earliest"},
            topics=[topic],
            with_metadata=True,
            max_num_records=len(sent),
            timestamp_policy=beam_compat.ReadFromKafka.create_time_policy,
        )
        assert_that(rows | beam.Map(as_tuple), equal_to(expected))
        # CreateTime: each element is at its Kafka timestamp.
        times = rows | "Times" >> beam.Map(
            lambda r, t=beam.DoFn.TimestampParam: (
                r.offset,
                r.partition,
                t.micros // 1000 == r.timestamp,
            )
        )
        assert_that(times | beam.Map(lambda x: x[2]), equal_to([True] * len(sent)), label="Times")


def test_serializers_round_trip_and_write_what_java_would(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=1)
    pairs = [(f"sensor-{i}", i * 1_000_000_007 - 5) for i in range(25)]
    with test_pipeline.TestPipeline() as p:
        _ = (
            p
            | beam.Create(pairs)
            | beam_compat.WriteToKafka(
                producer_config={"bootstrap.servers": kafka_bootstrap},
                topic=topic,
                key_serializer=f"{SERDE}StringSerializer",
                value_serializer=f"{SERDE}LongSerializer",
            )
        )
    seen = read_topic(kafka_bootstrap, topic, 1)
    assert sorted((m.key(), m.value()) for m in seen) == sorted(
        (k.encode(), struct.pack(">q", v)) for k, v in pairs
    )
    with test_pipeline.TestPipeline() as p:
        read = p | beam_compat.ReadFromKafka(
            consumer_config={"bootstrap.servers": kafka_bootstrap, "auto.offset.reset": "earliest"},
            topics=[topic],
            key_deserializer=f"{SERDE}StringDeserializer",
            value_deserializer=f"{SERDE}LongDeserializer",
            max_num_records=len(pairs),
        )
        assert_that(read, equal_to(pairs))


def test_with_headers_rows_are_written_with_their_headers(kafka_bootstrap, topic_factory):
    topic = topic_factory(partitions=1)
    rows = [
        beam.Row(
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            headers=[beam.Row(key="trace", value=f"t{i}".encode())],
        )
        for i in range(10)
    ]
    with test_pipeline.TestPipeline() as p:
        _ = (
            p
            | beam.Create(rows)
            | beam_compat.WriteToKafka(
                producer_config={"bootstrap.servers": kafka_bootstrap},
                topic=topic,
                with_headers=True,
            )
        )
    seen = read_topic(kafka_bootstrap, topic, 1)
    assert sorted((m.key(), m.value(), tuple(m.headers())) for m in seen) == [
        (f"k{i}".encode(), f"v{i}".encode(), (("trace", f"t{i}".encode()),)) for i in range(10)
    ]


def test_commit_offset_in_finalize_commits_the_group_offsets(
    kafka_bootstrap, topic_factory, group_id
):
    topic = topic_factory(partitions=2)
    # Keyed, so both partitions hold records: unkeyed messages may all stick to one partition,
    # and an empty partition has no offset to commit.
    _produce(kafka_bootstrap, topic, [(f"k{i}".encode(), f"{i}".encode(), None) for i in range(30)])
    config = {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
    }
    with test_pipeline.TestPipeline() as p:
        read = p | beam_compat.ReadFromKafka(
            consumer_config=config,
            topics=[topic],
            max_num_records=30,
            commit_offset_in_finalize=True,
        )
        assert_that(
            read | beam.Map(lambda kv: kv[1]), equal_to([f"{i}".encode() for i in range(30)])
        )
    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group_id}
    )
    try:
        partitions = [confluent_kafka.TopicPartition(topic, p) for p in range(2)]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
    finally:
        consumer.close()
    assert [tp.offset for tp in committed] == ends


def test_max_read_time_ends_the_read_and_redistribute_keeps_every_record(
    kafka_bootstrap, topic_factory
):
    topic = topic_factory(partitions=2)
    _produce(kafka_bootstrap, topic, [(None, f"{i}".encode(), None) for i in range(12)])
    with test_pipeline.TestPipeline() as p:  # ends by itself: max_read_time bounds the read
        read = p | beam_compat.ReadFromKafka(
            consumer_config={"bootstrap.servers": kafka_bootstrap, "auto.offset.reset": "earliest"},
            topics=[topic],
            max_read_time=2,
            redistribute=True,
            redistribute_num_keys=4,
        )
        assert_that(
            read | beam.Map(lambda kv: kv[1]), equal_to([f"{i}".encode() for i in range(12)])
        )
