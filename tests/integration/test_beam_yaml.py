"""The Beam YAML example (pipelines/yaml/score_events.yaml) end to end on the local broker.

Run exactly as docs/beam_yaml.md says (``python -m apache_beam.yaml.main``, jinja variables),
with ``stop: end_at_launch`` so the pipeline scores the backlog and ends; its outputs are read
back with a plain consumer and checked against the tiny model's own scores.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import Producer
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from tests.kafka_topics import read_topic
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import KafkaConfig

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "pipelines", "yaml", "score_events.yaml")


def _event(index: int) -> dict:
    value = 2.0 + index / 10 if index % 5 == 0 else 0.1 * (index % 7)  # threshold 1.0
    return {
        "event_id": f"e{index}",
        "card_id": f"c{index % 3}",
        **dict.fromkeys(CREDITCARD_FEATURES, value),
    }


def test_yaml_pipeline_reads_decodes_scores_and_writes_back(
    kafka_config: KafkaConfig, topic_factory, tmp_path
):
    suffix = uuid.uuid4().hex[:8]
    topics = {
        name: topic_factory(2 if name == "in" else 1) for name in ("in", "out", "alerts", "dead")
    }
    write_model(str(tmp_path / "models"), 1, threshold=1.0)
    events = [_event(i) for i in range(40)]
    bad = [b"{not json", json.dumps({"event_id": "x", "Amount": "lots"}).encode()]
    producer = Producer(kafka_config.producer_dict())
    for event in events:
        producer.produce(topics["in"], json.dumps(event).encode(), event["card_id"].encode())
    for payload in bad:
        producer.produce(topics["in"], payload, b"bad")
    assert producer.flush(15) == 0

    variables = {
        "bootstrap_servers": kafka_config.bootstrap_servers,
        "input_topic": topics["in"],
        "output_topic": topics["out"],
        "alert_topic": topics["alerts"],
        "dead_letter_topic": topics["dead"],
        "group_id": f"yaml-{suffix}",
        "schema_path": bundled_schema_path("creditcard"),
        "model_path": str(tmp_path / "models"),
        "stop": "end_at_launch",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "apache_beam.yaml.main",
            f"--yaml_pipeline_file={EXAMPLE}",
            "--runner=FnApiRunner",
            f"--jinja_variables={json.dumps(variables)}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    predictions = {}
    for message in read_topic(kafka_config, topics["out"], 1):
        value = json.loads(message.value())
        predictions[value["event_id"]] = (message.key(), value)
    assert sorted(predictions) == sorted(e["event_id"] for e in events)
    for event in events:
        key, prediction = predictions[event["event_id"]]
        assert key == event["card_id"].encode()  # keyed like the input event
        assert prediction["score"] == pytest.approx(expected_score(event), rel=1e-5)
        assert prediction["is_anomaly"] == (expected_score(event) > 1.0)
    alerts = sorted(
        json.loads(m.value())["event_id"] for m in read_topic(kafka_config, topics["alerts"], 1)
    )
    assert alerts == sorted(e for e, (_, p) in predictions.items() if p["is_anomaly"])
    assert alerts  # the test data has anomalies
    letters = [json.loads(m.value()) for m in read_topic(kafka_config, topics["dead"], 1)]
    assert sorted(base64.b64decode(d["payload"]) for d in letters) == sorted(bad)
    for letter in letters:  # each names where the event came from and why it failed
        assert letter["topic"] == topics["in"] and letter["key"] is not None
        assert letter["stage"] and letter["error_type"] and letter["error_message"]
