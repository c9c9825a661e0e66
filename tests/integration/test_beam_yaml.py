"""The Beam YAML example (pipelines/yaml/score_events.yaml) end to end on the local broker.

Run as docs/beam_yaml.md says (``python -m apache_beam.yaml.main``, jinja variables): once with
``stop: end_at_launch``, which scores the backlog and ends, its outputs read back with a plain
consumer and checked against the tiny model's own scores; once with ``--streaming``, scoring
events produced while it runs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from processes import stop_process_group
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from tests.kafka_topics import read_topic
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import KafkaConfig

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "pipelines", "yaml", "score_events.yaml")
BAD = [b"{not json", json.dumps({"event_id": "x", "Amount": "lots"}).encode()]


def _event(index: int) -> dict:
    value = 2.0 + index / 10 if index % 5 == 0 else 0.1 * (index % 7)  # threshold 1.0
    return {
        "event_id": f"e{index}",
        "card_id": f"c{index % 3}",
        **dict.fromkeys(CREDITCARD_FEATURES, value),
    }


class YamlRun:
    """Topics, a model and the command line of the example pipeline."""

    def __init__(self, kafka_config: KafkaConfig, topic_factory: Callable[..., str], tmp) -> None:
        self.config = kafka_config
        self.topics = {
            n: topic_factory(2 if n == "in" else 1) for n in ("in", "out", "alerts", "dead")
        }
        write_model(str(tmp / "models"), 1, threshold=1.0)
        self.variables = {
            "bootstrap_servers": kafka_config.bootstrap_servers,
            "input_topic": self.topics["in"],
            "output_topic": self.topics["out"],
            "alert_topic": self.topics["alerts"],
            "dead_letter_topic": self.topics["dead"],
            "group_id": f"yaml-{uuid.uuid4().hex[:8]}",
            "schema_path": bundled_schema_path("creditcard"),
            "model_path": str(tmp / "models"),
        }
        self._producer = Producer(kafka_config.producer_dict())

    def command(self, *flags: str, **variables: str) -> list[str]:
        jinja = json.dumps({**self.variables, **variables})
        return [
            sys.executable,
            "-m",
            "apache_beam.yaml.main",
            f"--yaml_pipeline_file={EXAMPLE}",
            "--runner=FnApiRunner",
            f"--jinja_variables={jinja}",
            *flags,
        ]

    def produce(self, events: list[dict], bad: list[bytes] = ()) -> None:
        for event in events:
            self._producer.produce(
                self.topics["in"], json.dumps(event).encode(), event["card_id"].encode()
            )
        for payload in bad:
            self._producer.produce(self.topics["in"], payload, b"bad")
        assert self._producer.flush(15) == 0

    def read(self, name: str) -> list:
        return read_topic(self.config, self.topics[name], 1)


@pytest.fixture
def yaml_run(kafka_config, topic_factory, tmp_path) -> YamlRun:
    return YamlRun(kafka_config, topic_factory, tmp_path)


def test_yaml_pipeline_reads_decodes_scores_and_writes_back(yaml_run: YamlRun):
    events = [_event(i) for i in range(40)]
    yaml_run.produce(events, BAD)
    run = subprocess.run(
        yaml_run.command(stop="end_at_launch"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]

    predictions = {}
    for message in yaml_run.read("out"):
        value = json.loads(message.value())
        predictions[value["event_id"]] = (message.key(), value)
    assert sorted(predictions) == sorted(e["event_id"] for e in events)
    for event in events:
        key, prediction = predictions[event["event_id"]]
        assert key == event["card_id"].encode()  # keyed like the input event
        assert prediction["score"] == pytest.approx(expected_score(event), rel=1e-5)
        assert prediction["is_anomaly"] == (expected_score(event) > 1.0)
    alerts = sorted(json.loads(m.value())["event_id"] for m in yaml_run.read("alerts"))
    assert alerts == sorted(e for e, (_, p) in predictions.items() if p["is_anomaly"])
    assert alerts  # the test data has anomalies
    letters = [json.loads(m.value()) for m in yaml_run.read("dead")]
    assert sorted(base64.b64decode(d["payload"]) for d in letters) == sorted(BAD)
    for letter in letters:  # each names where the event came from and why it failed
        assert letter["topic"] == yaml_run.topics["in"] and letter["key"] is not None
        assert letter["stage"] and letter["error_type"] and letter["error_message"]


def test_yaml_pipeline_streams(yaml_run: YamlRun, tmp_path):
    log_path = tmp_path / "yaml.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            yaml_run.command("--streaming", start="earliest"),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        events = [_event(i) for i in range(10)]
        yaml_run.produce(events[:5], BAD[:1])  # some before it is up, some while it runs
        deadline = time.monotonic() + 180
        produced_rest = False
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            scored = {json.loads(m.value())["event_id"] for m in yaml_run.read("out")}
            if not produced_rest and scored:
                yaml_run.produce(events[5:], BAD[1:])
                produced_rest = True
            if produced_rest and len(scored) == len(events) and len(yaml_run.read("dead")) == 2:
                break
            time.sleep(1)
        assert scored == {e["event_id"] for e in events}, log_path.read_text(errors="replace")[
            -4000:
        ]
        assert len(yaml_run.read("alerts")) == sum(expected_score(e) > 1.0 for e in events)
        assert process.poll() is None  # still streaming
    finally:
        stop_process_group(process)
