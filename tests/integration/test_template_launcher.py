"""The local template launcher runs templates end to end on the local stack.

``python -m pipelines.template_launcher run NAME --parameters ...`` in a subprocess, exactly as a
user types it (environment from ``scripts/stack.sh env``), against the real broker and emulators:
the batch Kafka-to-BigQuery template puts good rows in the output table and malformed messages in
the dead-letter table; the streaming scoring template runs live until stopped; a bad parameter set
is refused with exit status 2 before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from processes import stop_process_group
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from pipelines.demo.synthetic_data import creditcard_transactions, encode_messages
from transforms.decoding.schema import bundled_schema_path

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROWS = 40
RUN_TIMEOUT_S = 300
LIVE_TIMEOUT_S = 120


def _launcher(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.template_launcher", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def loaded_topic(kafka_config, topic_factory):
    """A fresh 2-partition topic holding ROWS transactions, a few of them malformed."""
    topic = topic_factory(partitions=2)
    rows = list(creditcard_transactions(ROWS, seed=11))
    messages = list(encode_messages(rows, key_field="card_id", malformed_fraction=0.1, seed=11))
    producer = Producer(kafka_config.producer_dict())
    for message in messages:
        producer.produce(topic, key=message.key, value=message.value)
    assert producer.flush(30) == 0
    good_ids = {
        row["event_id"]
        for row, message in zip(rows, messages, strict=True)
        if not message.malformed
    }
    malformed = sum(1 for message in messages if message.malformed)
    assert 0 < malformed < ROWS
    return topic, good_ids, malformed


def test_launcher_runs_kafka_to_bigquery_template_end_to_end(
    stack_env, kafka_bootstrap, loaded_topic, bq_client, bq_dataset
):
    topic, good_ids, malformed = loaded_topic
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    table = f"{project}:{bq_dataset}.transactions"
    result = _launcher(
        [
            "run",
            "kafka_to_bigquery",
            "--parameters",
            f"bootstrapServers={kafka_bootstrap},inputTopic={topic},startOffset=earliest",
            "--parameters",
            f"kafkaConfig={stack_env['KAFKA_CONFIG']}",
            "--parameters",
            f"schemaPath=transforms/decoding/schemas/creditcard.json,outputTableSpec={table}",
        ],
        stack_env,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "launching template kafka_to_bigquery" in result.stderr

    rows = bq_client.query(
        f"SELECT event_id, Amount FROM `{project}.{bq_dataset}.transactions`"
    ).result()
    assert {row["event_id"] for row in rows} == good_ids
    dead = list(
        bq_client.query(
            f"SELECT stage, error_type, payload, topic "
            f"FROM `{project}.{bq_dataset}.transactions_error_records`"
        ).result()
    )
    assert len(dead) == malformed
    assert {row["topic"] for row in dead} == {topic}
    assert all(row["stage"] and row["error_type"] and row["payload"] for row in dead)


def test_launcher_refuses_bad_parameters_before_running():
    result = _launcher(
        [
            "run",
            "kafka_to_bigquery",
            "--parameters",
            "inputTopic=bad topic,outputTableSpec=not-a-table,colour=red",
        ],
        {},
    )
    assert result.returncode == 2
    err = result.stderr
    assert err.count("error: invalid parameters for template kafka_to_bigquery:") == 1
    assert "bootstrapServers: required parameter is missing. Comma-separated host:port" in err
    assert "schemaPath: required parameter is missing." in err
    assert "inputTopic='bad topic' does not match" in err
    assert "outputTableSpec='not-a-table' does not match" in err
    assert "colour: unknown parameter; this template accepts: bootstrapServers," in err
    assert "launching template" not in err


def test_launcher_runs_the_streaming_scoring_template_live(
    stack_env, kafka_config, topic_factory, group_id, tmp_path
):
    events, predictions = topic_factory(partitions=1), topic_factory(partitions=1)
    model_root = str(tmp_path / "models")
    write_model(model_root, 1)
    params = (
        f"bootstrapServers={kafka_config.bootstrap_servers},inputTopic={events},"
        f"outputTopic={predictions},consumerGroupId={group_id},startOffset=earliest,"
        f"schemaPath={bundled_schema_path('creditcard')},modelPath={model_root}"
    )
    command = [sys.executable, "-m", "pipelines.template_launcher", "run", "score_events"]
    command += ["--parameters", params, "--parameters", f"kafkaConfig={stack_env['KAFKA_CONFIG']}"]
    with open(tmp_path / "launcher.log", "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **stack_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    consumer = Consumer(kafka_config.consumer_dict(f"{group_id}-check"))
    try:
        producer = Producer(kafka_config.producer_dict())
        for i in range(5):
            row = {"event_id": f"e{i}", "card_id": "c", **dict.fromkeys(CREDITCARD_FEATURES, 0.1)}
            producer.produce(events, json.dumps(row).encode(), b"c")
        assert producer.flush(30) == 0
        consumer.assign([TopicPartition(predictions, 0, 0)])
        seen: set[str] = set()
        deadline = time.time() + LIVE_TIMEOUT_S
        while len(seen) < 5 and time.time() < deadline and process.poll() is None:
            for message in consumer.consume(10, 0.5):
                if message.error() is None:
                    seen.add(json.loads(message.value())["event_id"])
        log = (tmp_path / "launcher.log").read_text(errors="replace")
        assert process.poll() is None, f"the streaming job ended:\n{log[-3000:]}"
        assert seen == {f"e{i}" for i in range(5)}, log[-3000:]
        assert "launching template score_events (pipelines.score_events, streaming)" in log
    finally:
        consumer.close()
        stop_process_group(process)
