"""Generating events to the real broker and training straight from Kafka (and from BigQuery)."""

from __future__ import annotations

import collections
import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipelines import generate_events
from pipelines.demo.synthetic_data import (
    CREDITCARD_FEATURES,
    creditcard_transactions,
    encode_messages,
)
from pipelines.train import run
from transforms.decoding.schema import bundled_schema, bundled_schema_path
from transforms.inference.model_store import latest_version, read_model_info
from transforms.kafka.config import LOCAL_BROKER_SETTINGS

pytestmark = pytest.mark.integration

_LOCAL_TUNING = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())


def _consume_all(kafka_config, topic: str, partitions: int, expected: int) -> list:
    consumer = Consumer(kafka_config.consumer_dict("h6-check"))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages = []
    try:
        for _ in range(60):
            messages.extend(m for m in consumer.consume(500, 0.5) if m.error() is None)
            if len(messages) >= expected:
                break
    finally:
        consumer.close()
    return messages


def test_generate_events_cli_produces_keyed_json_with_malformed_share(
    kafka_bootstrap, kafka_config, topic_factory
) -> None:
    topic = topic_factory(partitions=2)
    summary = generate_events.run(
        [
            f"--bootstrapServers={kafka_bootstrap}",
            f"--topic={topic}",
            "--kind=car_sensor",
            "--count=300",
            "--cars=5",
            "--seed=4",
            "--malformed=0.1",
            "--rate=2000",
        ]
    )
    assert summary.delivered == 300 and summary.failed == 0
    messages = _consume_all(kafka_config, topic, 2, 300)
    assert len(messages) == 300
    assert {m.key() for m in messages} == {f"car-{i:04d}".encode() for i in range(5)}
    parsed = 0
    for message in messages:
        try:
            row = json.loads(message.value())
        except ValueError:
            continue
        parsed += isinstance(row, dict) and "event_id" in row
    malformed = sum(summary.malformed.values())
    assert 10 < malformed < 60
    # invalid_json and non_utf8 do not parse; wrong_type / missing_field do (the decoder rejects).
    kinds = collections.Counter(summary.malformed)
    assert parsed + kinds["invalid_json"] + kinds["non_utf8"] >= 300 - kinds["missing_field"]


def test_train_straight_from_kafka(kafka_bootstrap, kafka_config, topic_factory, tmp_path) -> None:
    topic = topic_factory(partitions=3)
    rows = list(creditcard_transactions(2_500, seed=21, fraud_rate=0.02))
    messages = list(encode_messages(rows, key_field="card_id", malformed_fraction=0.02, seed=21))
    summary = generate_events.produce_messages(kafka_config, topic, messages, progress=False)
    malformed = sum(summary.malformed.values())
    assert summary.delivered == len(rows) and malformed > 10

    result = run(
        [
            f"--bootstrapServers={kafka_bootstrap}",
            f"--inputTopic={topic}",
            "--startOffset=earliest",
            f"--kafkaConfig={_LOCAL_TUNING}",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--transformDir={tmp_path / 'transform'}",
            f"--modelPath={tmp_path / 'models'}",
            f"--stagingDir={tmp_path / 'staging'}",
            "--epochs=3",
            "--runner=FnApiRunner",
        ]
    )
    letters = [
        json.loads(line)
        for path in (tmp_path / "staging" / "dead_letters").iterdir()
        for line in path.read_text().splitlines()
    ]
    assert len(letters) == malformed
    assert {letter["topic"] for letter in letters} == {topic}
    assert all(letter["payload"] and letter["error_message"] for letter in letters)
    # Every well-formed message became a training row; the malformed ones were dead-lettered.
    assert sum(result.metrics["rows"].values()) == len(rows) - malformed
    newest = latest_version(str(tmp_path / "models"))
    assert newest.version == result.version == 1
    assert read_model_info(newest.path).features == CREDITCARD_FEATURES


def test_train_from_a_bigquery_table(bq_client, bq_dataset, gcp_endpoints, tmp_path) -> None:
    from google.cloud import bigquery

    schema = bundled_schema("creditcard")
    table_id = f"{gcp_endpoints.project}.{bq_dataset}.transactions"
    table = bigquery.Table(
        table_id,
        schema=[bigquery.SchemaField.from_api_repr(f) for f in schema.to_bigquery_json()["fields"]],
    )
    bq_client.create_table(table)
    rows = list(creditcard_transactions(1_500, seed=22, fraud_rate=0.03))
    assert not bq_client.insert_rows_json(table_id, rows, retry=gcp_endpoints.bigquery_retry)

    result = run(
        [
            f"--bigqueryTable={gcp_endpoints.project}:{bq_dataset}.transactions",
            f"--project={gcp_endpoints.project}",
            f"--transformDir={tmp_path / 'transform'}",
            f"--modelPath={tmp_path / 'models'}",
            "--epochs=2",
        ]
    )
    assert sum(result.metrics["rows"].values()) == len(rows)
    assert read_model_info(result.version_dir).features == CREDITCARD_FEATURES


def test_train_with_transform_and_models_on_gcs(gcs_bucket, tmp_path) -> None:
    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems

    from pipelines.training.artifacts import download_tree
    from transforms.sinks.tfrecord import SCHEMA_FILE, row_to_example

    schema = bundled_schema("creditcard")
    export = tmp_path / "export"
    export.mkdir()
    with tf.io.TFRecordWriter(str(export / "part-00000-of-00001.tfrecord")) as writer:
        for row in creditcard_transactions(1_500, seed=23, fraud_rate=0.03):
            writer.write(row_to_example(row, schema).SerializeToString())
    (export / SCHEMA_FILE).write_text(json.dumps(schema.to_bigquery_json()))
    argv = [
        f"--trainingData={export}/part-*",
        f"--transformDir={gcs_bucket}/transform",
        f"--modelPath={gcs_bucket}/models",
        "--epochs=2",
    ]
    first = run(argv)  # analyzes and uploads the transform
    assert FileSystems.exists(f"{gcs_bucket}/transform/transform_fn/saved_model.pb")
    second = run(argv)  # downloads and reuses it
    assert (first.version, second.version) == (1, 2)
    newest = latest_version(f"{gcs_bucket}/models")
    assert newest.version == 2 and read_model_info(newest.path).features == CREDITCARD_FEATURES
    # The uploaded version is a complete SavedModel: load a local copy and score.
    local = str(tmp_path / "model")
    download_tree(newest.path, local)
    loaded = tf.saved_model.load(local)
    inputs = {
        n: tf.constant([r[n] for r in second.test_rows], tf.float32) for n in CREDITCARD_FEATURES
    }
    scores = loaded.signatures["serving_default"](**inputs)["score"].numpy()
    assert abs(scores - second.test_scores).max() < 1e-5
