"""Kafka → gs:// on the GCS emulator through ``pipelines.kafka_to_gcs``; tf.data reads it back.

TensorFlow's own gs:// filesystem cannot be pointed at an emulator (its endpoint is fixed), so
the shards are copied to a local directory with Beam's FileSystems before tf.data reads them.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from export_events import committed_total, creditcard_event, invalid_messages, produce

from pipelines import kafka_to_gcs
from pipelines.common.options import OptionError
from transforms.decoding.schema import RowSchema, bundled_schema, bundled_schema_path
from transforms.sinks.tfrecord import feature_spec

pytestmark = pytest.mark.integration

SCHEMA = bundled_schema("creditcard")


def _download(pattern: str, directory) -> list[str]:
    paths = []
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        local = os.path.join(directory, os.path.basename(metadata.path))
        with FileSystems.open(metadata.path) as source, open(local, "wb") as target:
            target.write(source.read())
        paths.append(local)
    return sorted(paths)


def _read_examples(paths: list[str]) -> list[dict]:
    spec = feature_spec(SCHEMA)
    rows = []
    for parsed in tf.data.TFRecordDataset(paths).map(lambda s: tf.io.parse_single_example(s, spec)):
        row = {}
        for name, tensor in parsed.items():
            if isinstance(tensor, tf.SparseTensor):  # NULLABLE: absent → no value
                values = tensor.values.numpy().tolist()
                row[name] = values[0] if values else None
            else:
                value = tensor.numpy()
                row[name] = value.decode() if isinstance(value, bytes) else value.item()
        if isinstance(row["card_id"], bytes):
            row["card_id"] = row["card_id"].decode()
        rows.append(row)
    return sorted(rows, key=lambda r: r["event_id"])


def test_tfrecords_on_gcs_read_back_with_tf_data_and_dead_letters_beside(
    stack_env, kafka_config, topic_factory, group_id, gcs_bucket, tmp_path
):
    topic = topic_factory(partitions=3)
    valid = [creditcard_event(i) for i in range(25)]
    invalid = invalid_messages()
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid] + invalid)
    output = f"{gcs_bucket}/exports/creditcard"

    kafka_to_gcs.run(
        [
            f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
            f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
            f"--inputTopic={topic}",
            f"--consumerGroupId={group_id}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--outputDirectory={output}",
            "--numShards=2",
            "--filter=Amount < 80",  # drops events 23 and 24
            f"--project={stack_env['GOOGLE_CLOUD_PROJECT']}",
            f"--storageEndpoint={stack_env['STORAGE_EMULATOR_HOST']}",
        ]
    )

    shards = _download(f"{output}/part-*-of-00002.tfrecord", tmp_path)
    assert len(shards) == 2
    expected = [row for row in valid if row["Amount"] < 80]
    assert len(expected) == 23
    got = _read_examples(shards)
    assert [r["event_id"] for r in got] == [r["event_id"] for r in expected]
    for row, want in zip(got, expected, strict=True):
        assert row["card_id"] == want["card_id"] and row["Class"] == want["Class"]
        for name in SCHEMA.numeric_names:
            if want[name] is not None:
                assert row[name] == pytest.approx(want[name], rel=1e-6), name

    with FileSystems.open(f"{output}/schema.json") as handle:
        assert RowSchema.from_bigquery_json(json.load(handle)) == SCHEMA
    letters = []
    for metadata in FileSystems.match([f"{output}/deadletter/*.jsonl"])[0].metadata_list:
        with FileSystems.open(metadata.path) as handle:
            letters += [json.loads(line) for line in handle.read().decode().splitlines()]
    assert sorted(base64.b64decode(d["payload"]) for d in letters) == sorted(invalid)
    assert {d["topic"] for d in letters} == {topic}
    assert committed_total(kafka_config, topic, group_id, 3) == len(valid) + len(invalid)


def test_missing_bucket_or_unreachable_storage_fail_at_launch_naming_the_flag(
    stack_env, topic_factory, monkeypatch
):
    # --storageEndpoint re-points this process's gs:// filesystem: restore it after the test.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", stack_env["STORAGE_EMULATOR_HOST"])
    topic = topic_factory(partitions=1)
    argv = [
        f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"--inputTopic={topic}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        f"--project={stack_env['GOOGLE_CLOUD_PROJECT']}",
    ]
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(OptionError, match=f"--outputDirectory.*bucket {bucket} does not exist"):
        kafka_to_gcs.run(
            [
                *argv,
                f"--outputDirectory=gs://{bucket}/x",
                f"--storageEndpoint={stack_env['STORAGE_EMULATOR_HOST']}",
            ]
        )
    started = time.monotonic()
    with pytest.raises(OptionError, match="--outputDirectory.*not reachable"):
        kafka_to_gcs.run(
            [*argv, "--outputDirectory=gs://any/x", "--storageEndpoint=http://127.0.0.1:9"]
        )
    assert time.monotonic() - started < 45
