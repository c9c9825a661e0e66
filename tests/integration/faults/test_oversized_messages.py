"""Messages as big as the broker allows do not stop ``pipelines.score_events`` (real broker).

One batch run of the scorer (a subprocess, as users start it) over an input topic holding 200
valid events, malformed messages, a message just under the broker's limit, one exactly at the
dead-letter topic's record limit and a valid event whose prediction is too big for the
prediction topic. The run must end normally, and every input offset must have exactly one
prediction or one dead letter, the big payloads cut with their full length and SHA-256. The
BigQuery export keeps such a message's cut dead letter in its dead-letter table.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer
from kafka_topics import read_topic
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.limits import TopicRecordLimit

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
#: The largest key + value the local broker accepts (measured: max.message.bytes 1048588 minus
#: 72 bytes of batch framing for a one-record batch).
BROKER_MAX_RECORD_BYTES = 1_048_516
PAYLOAD_CAP = 512 * 1024
RUN_TIMEOUT_S = 120


def _event(i: int, scale: float = 0.1, **fields) -> dict:
    row = {"event_id": f"evt-{i:04d}", "card_id": f"card-{i % 5}"}
    row.update(
        {name: scale * ((i * (k + 1)) % 7 - 3) for k, name in enumerate(CREDITCARD_FEATURES)}
    )
    row.update(fields)
    return row


def _malformed() -> list[bytes]:
    missing = _event(900)
    del missing["Amount"]
    return [
        b'{"event_id": "broken", "Time": ',
        b"\xff\xfe not utf-8",
        json.dumps(missing).encode(),
        json.dumps({**_event(901), "merchant": "acme"}).encode(),  # unknown field
    ]


def _produce(config: KafkaConfig, topic: str, messages: list[tuple[str, bytes, bytes]]) -> dict:
    """Produce ``(label, key, value)`` messages; returns label → (partition, offset)."""
    # The producer's own limit (1000000) is below the broker's: raise it to reach the broker's.
    producer = Producer({**config.producer_dict(), "message.max.bytes": "2000000"})
    placed: dict[str, tuple[int, int]] = {}
    errors = []

    def report(label: str):  # noqa: ANN202
        def on_delivery(err, msg) -> None:  # noqa: ANN001
            if err is not None:
                errors.append((label, err))
            else:
                placed[label] = (msg.partition(), msg.offset())

        return on_delivery

    for label, key, value in messages:
        producer.produce(topic, value, key, on_delivery=report(label))
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return placed


def test_a_batch_run_with_messages_up_to_the_broker_limit_ends_with_every_offset_accounted_for(
    kafka_config: KafkaConfig, topic_factory, group_id: str, tmp_path
) -> None:
    source, output, alerts, dead = (topic_factory(p) for p in (2, 1, 1, 1))
    model_root = str(tmp_path / "models")
    write_model(model_root, 1, threshold=1.0)

    dead_limit = TopicRecordLimit(kafka_config, dead).resolve()
    output_limit = TopicRecordLimit(kafka_config, output).resolve()
    assert dead_limit == output_limit == 1_000_000 - 512  # producer default below the topic's
    valid = [_event(i, scale=1.0 if i % 10 == 0 else 0.1) for i in range(200)]
    messages = [(e["event_id"], e["card_id"].encode(), json.dumps(e).encode()) for e in valid]
    messages += [(f"bad-{i}", b"card-x", m) for i, m in enumerate(_malformed())]
    # Just under the broker's limit (key + value), and exactly at the dead-letter topic's.
    near_broker = b"{" + b"b" * (BROKER_MAX_RECORD_BYTES - len(b"card-b") - 1)
    at_dead_limit = b"{" + b"d" * (dead_limit - len(b"card-d") - 1)
    # A valid anomalous event whose prediction (it echoes event_id) exceeds the output topic's.
    huge = _event(7, scale=5.0, event_id="h" * (output_limit - 100))
    messages += [
        ("near-broker", b"card-b", near_broker),
        ("at-dead-limit", b"card-d", at_dead_limit),
        ("huge-prediction", b"card-h", json.dumps(huge).encode()),
    ]
    placed = _produce(kafka_config, source, messages)

    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.score_events",
            "--runner=FnApiRunner",
            f"--bootstrapServers={kafka_config.bootstrap_servers}",
            f"--kafkaConfig={extra}",
            f"--inputTopic={source}",
            f"--outputTopic={output}",
            f"--alertTopic={alerts}",
            f"--deadLetterTopic={dead}",
            f"--consumerGroupId={group_id}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            "--maxMessageBytes=1048576",  # let the huge event reach the model
        ],
        cwd=REPO,
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    elapsed = time.monotonic() - started
    log = run.stderr.decode("utf-8", "replace")
    assert run.returncode == 0, log[-4000:]
    print(f"score_events batch run: {elapsed:.1f} s")  # noqa: T201 - shown with pytest -s

    predictions = [json.loads(m.value()) for m in read_topic(kafka_config, output, 1)]
    raw_letters = [(m.key(), m.value()) for m in read_topic(kafka_config, dead, 1)]
    assert max(len(k or b"") + len(v) for k, v in raw_letters) <= dead_limit
    letters = [(k, json.loads(v)) for k, v in raw_letters]
    alerted = [json.loads(m.value()) for m in read_topic(kafka_config, alerts, 1)]

    # Every input offset: exactly one prediction or one dead letter.
    by_offset: dict[tuple[int, int], list[str]] = {}
    for prediction in predictions:
        assert prediction["topic"] == source
        by_offset.setdefault((prediction["partition"], prediction["offset"]), []).append("p")
    for _, letter in letters:
        assert letter["topic"] == source
        by_offset.setdefault((letter["partition"], letter["offset"]), []).append(letter["stage"])
    assert sorted(by_offset) == sorted(placed.values())
    assert all(len(outcomes) == 1 for outcomes in by_offset.values()), by_offset
    assert {p["event_id"] for p in predictions} == {e["event_id"] for e in valid}
    anomalies = {p["event_id"] for p in predictions if p["is_anomaly"]}
    assert anomalies and {a["event_id"] for a in alerted} == anomalies

    letter_at = {(v["partition"], v["offset"]): (k, v) for k, v in letters}
    sent = {label: (key, value) for label, key, value in messages}
    for label in ("near-broker", "at-dead-limit"):
        key, letter = letter_at[placed[label]]
        value = sent[label][1]
        assert (letter["stage"], key) == ("decode", sent[label][0])
        assert letter["payload_truncated"] is True
        assert letter["payload_length"] == len(value)
        assert letter["payload_sha256"] == hashlib.sha256(value).hexdigest()
        assert base64.b64decode(letter["payload"]) == value[:PAYLOAD_CAP]
    key, letter = letter_at[placed["huge-prediction"]]
    assert (letter["stage"], letter["error_type"], key) == ("size", "RecordTooLarge", b"card-h")
    assert f"exceeds the {output_limit}-byte record limit of Kafka topic" in letter["error_message"]
    assert letter["payload_truncated"] and letter["payload_length"] > output_limit - 6
    assert base64.b64decode(letter["payload"]).startswith(b'{"key":"card-h","event_id":"hhh')
    # Malformed messages keep their whole payload.
    for index, value in enumerate(_malformed()):
        _, letter = letter_at[placed[f"bad-{index}"]]
        assert base64.b64decode(letter["payload"]) == value and not letter["payload_truncated"]


def test_the_bigquery_export_keeps_a_cut_dead_letter_of_a_message_at_the_broker_limit(
    stack_env,
    kafka_config: KafkaConfig,
    topic_factory,
    group_id: str,
    bq_client,
    bq_dataset,
    gcp_endpoints,
) -> None:
    from pipelines import kafka_to_bigquery

    topic = topic_factory(1)
    valid = [_event(i) for i in range(5)]
    near_broker = b"\xff" * (BROKER_MAX_RECORD_BYTES - len(b"card-b"))
    messages = [(e["event_id"], e["card_id"].encode(), json.dumps(e).encode()) for e in valid]
    placed = _produce(kafka_config, topic, [*messages, ("near-broker", b"card-b", near_broker)])

    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    kafka_to_bigquery.run(
        [
            f"--bootstrapServers={kafka_config.bootstrap_servers}",
            f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
            f"--inputTopic={topic}",
            f"--consumerGroupId={group_id}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--outputTableSpec={project}:{bq_dataset}.transactions",
            f"--project={project}",
            f"--bigqueryEndpoint={stack_env['BIGQUERY_EMULATOR_HOST']}",
            "--deadLetterMaxPayloadBytes=100000",
        ]
    )
    table = f"{project}.{bq_dataset}.transactions"
    rows = bq_client.list_rows(table, retry=gcp_endpoints.bigquery_retry)
    assert sorted(row["event_id"] for row in rows) == [e["event_id"] for e in valid]
    (letter,) = bq_client.list_rows(f"{table}_error_records", retry=gcp_endpoints.bigquery_retry)
    assert (letter["stage"], letter["error_type"]) == ("decode", "Oversize")
    assert (letter["partition"], letter["offset"]) == placed["near-broker"]
    assert letter["payload"] == near_broker[:100_000]
    assert letter["payload_truncated"] is True
    assert letter["payload_length"] == len(near_broker)
    assert letter["payload_sha256"] == hashlib.sha256(near_broker).hexdigest()
