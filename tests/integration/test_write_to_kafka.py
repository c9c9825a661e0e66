"""WriteToKafka against the real local broker, checked with confluent-kafka and with kcat."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections import defaultdict

import apache_beam as beam
import confluent_kafka
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from ports import free_port

from transforms.kafka import writer
from transforms.kafka.config import KafkaConfig
from transforms.kafka.record import KafkaRecord
from transforms.kafka.writer import KafkaWriteError, WriteToKafka

pytestmark = pytest.mark.integration

PASSWORD = "Wr0ng-but-s3cret"


# ---- helpers ----------------------------------------------------------------------------------
def _read_all(config: KafkaConfig, topic: str) -> list[confluent_kafka.Message]:
    """Every message of ``topic`` (partition, offset order), read with a plain consumer."""
    consumer = confluent_kafka.Consumer(config.consumer_dict(f"check-{uuid.uuid4().hex}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p))[1]
            for p in partitions
        }
        consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in partitions])
        messages: list[confluent_kafka.Message] = []
        deadline = time.monotonic() + 20
        while len(messages) < sum(ends.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                assert msg.error() is None, msg.error()
                messages.append(msg)
        return sorted(messages, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def _kcat(bootstrap: str, topic: str) -> list[str]:
    out = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%p|%o|%k|%s|%h\\n"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return sorted(out.stdout.splitlines())


def _java_partition(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner: murmur2(key) & 0x7fffffff % partitions."""
    m, length = 0x5BD1E995, len(key)
    h = 0x9747B28C ^ length
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[length - length % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


# ---- tests -----------------------------------------------------------------------------------
def test_keys_values_headers_round_trip_with_java_compatible_placement(
    kafka_config, kafka_bootstrap, topic_factory
):
    topic = topic_factory(partitions=3)
    pairs = [(f"user-{i % 7}".encode(), f"event-{i}".encode()) for i in range(70)]
    records = [
        KafkaRecord(
            "src",
            0,
            i,
            f"rec-{i}".encode(),
            f"payload-{i}".encode(),
            0,
            headers=(("trace", f"t{i}".encode()), ("schema", b"v1")),
        )
        for i in range(5)
    ]
    unkeyed = [(None, b"no-key-1"), (None, "no-key-2")]
    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create([*pairs, *records, *unkeyed], reshuffle=False)
            | WriteToKafka(kafka_config, topic)
        )
        total = results | beam.Map(lambda r: r.messages) | beam.CombineGlobally(sum)
        assert_that(total, equal_to([77]))

    messages = _read_all(kafka_config, topic)
    got = [(m.key(), m.value(), tuple(m.headers() or ())) for m in messages]
    expected = [(k, v, ()) for k, v in pairs]
    expected += [(r.key, r.value, r.headers) for r in records]
    expected += [(None, b"no-key-1", ()), (None, b"no-key-2", ())]
    assert sorted(got, key=repr) == sorted(expected, key=repr)

    # Keyed placement equals the Java client's, and each key's events keep their order.
    by_key = defaultdict(list)
    for m in messages:
        if m.key() is not None:
            assert m.partition() == _java_partition(m.key(), 3), m.key()
            by_key[m.key()].append(m.value())
    for key, values in by_key.items():
        if key.startswith(b"user-"):
            assert values == [v for k, v in pairs if k == key]
    assert len({m.partition() for m in messages}) == 3

    # An independent client sees exactly the same log.
    expected_kcat = sorted(
        f"{m.partition()}|{m.offset()}|{(m.key() or b'').decode()}|{m.value().decode()}|"
        + ",".join(f"{h}={v.decode()}" for h, v in (m.headers() or ()))
        for m in messages
    )
    assert _kcat(kafka_bootstrap, topic) == expected_kcat


def test_unreachable_broker_fails_the_pipeline_quickly_with_a_clear_error():
    port = free_port()  # closed again: nothing listens there
    config = KafkaConfig(f"127.0.0.1:{port}", extra={"message.timeout.ms": "1500"})
    started = time.monotonic()
    with pytest.raises(
        KafkaWriteError,
        match=rf"3 of 3 messages were not delivered \(bootstrap.servers=127.0.0.1:{port}\)"
        r".*_MSG_TIMED_OUT: Local: Message timed out \(x3\)",
    ):
        with test_pipeline.TestPipeline() as p:
            _ = p | beam.Create([(b"k", b"v")] * 3) | WriteToKafka(config, "nowhere")
    assert time.monotonic() - started < 30


def test_runs_on_multiprocess_workers(kafka_config, topic_factory):
    """The transform pickles to separate worker processes, each with its own producer."""
    topic = topic_factory(partitions=2)
    config = kafka_config.with_extra({"client.id": f"multiprocess-{topic}"})
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=2)
    values = [f"m-{i}".encode() for i in range(400)]
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | beam.Create(values)
            | beam.Reshuffle()
            | WriteToKafka(config, topic, key_fn=lambda v: v[-1:], value_fn=lambda v: v)
        )
    assert sorted(m.value() for m in _read_all(config, topic)) == sorted(values)
    # Produced by the worker processes, not by this one.
    assert not [key for key in writer._PRODUCERS if key[0] == config]


@pytest.mark.parametrize("source", ["env", "file"])
def test_sasl_password_from_env_or_file_is_used_but_never_logged(
    source, kafka_bootstrap, monkeypatch, tmp_path, caplog, capfd
):
    """noida-db speaks no SASL, so the handshake fails; the secret must appear nowhere."""
    if source == "env":
        monkeypatch.setenv("KBML_TEST_SASL_PW", PASSWORD)
        spec = "env:KBML_TEST_SASL_PW"
    else:
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        spec = f"file:{tmp_path / 'pw'}"
    config = KafkaConfig(
        kafka_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=spec,
        extra={"message.timeout.ms": "2000", "debug": "security,broker"},
    )
    assert config.producer_dict()["sasl.password"] == PASSWORD
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KafkaWriteError, match="not delivered") as failure:
        with test_pipeline.TestPipeline() as p:
            _ = p | beam.Create([(b"k", b"v")]) | WriteToKafka(config, "sasl-topic")
    out, err = capfd.readouterr()
    assert "transforms.kafka.writer" in caplog.text  # librdkafka's debug log went through us
    for text in (caplog.text, out, err, str(failure.value), repr(config)):
        assert PASSWORD not in text
