"""The Prometheus endpoint of a streaming pipeline, scraped while it runs on the local broker.

``pipelines.score_events --streaming --metricsPort=P`` scores events with the tiny test model;
the test scrapes ``/metrics`` during the run and checks its counters against what the output
topics hold (read with a plain consumer): records consumed, predictions, alerts, dead letters,
records written, and a lag that falls to zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Producer
from ports import free_port
from processes import stop_process_group
from prometheus_client.parser import text_string_to_metric_families
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from tests.kafka_topics import read_topic
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 120
EVENTS, ANOMALIES, BAD = 60, 7, 5


def _scrape(port: int) -> dict[str, float] | None:
    """Unlabelled samples, plus ``partition_lag`` summed; None while the endpoint is not up (or,
    on a loaded machine, slower than a scrape timeout)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:  # URLError, refused, timed out
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
            elif sample.name == "kafka_beam_ml_partition_lag":
                samples["partition_lag_sum"] = samples.get("partition_lag_sum", 0) + sample.value
    return samples


def _event(index: int) -> dict:
    value = 3.0 if index < ANOMALIES else 0.1  # tiny model: score = mean(x^2), threshold 1
    return {"event_id": f"e{index}", "card_id": "c", **dict.fromkeys(CREDITCARD_FEATURES, value)}


def test_metrics_answer_during_a_streaming_run_and_match_the_outputs(
    kafka_config: KafkaConfig, topic_factory, tmp_path
):
    suffix = uuid.uuid4().hex[:8]
    topics = {
        name: topic_factory(3 if name == "in" else 1) for name in ("in", "out", "alerts", "dead")
    }
    write_model(str(tmp_path / "models"), 1, threshold=1.0)
    port = free_port()
    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    log_path = tmp_path / "score_events.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.score_events",
                "--runner=FnApiRunner",
                "--streaming",
                f"--bootstrapServers={kafka_config.bootstrap_servers}",
                f"--kafkaConfig={extra}",
                f"--inputTopic={topics['in']}",
                f"--outputTopic={topics['out']}",
                f"--alertTopic={topics['alerts']}",
                f"--deadLetterTopic={topics['dead']}",
                f"--consumerGroupId=metrics-{suffix}",
                "--startOffset=earliest",
                f"--schemaPath={bundled_schema_path('creditcard')}",
                f"--modelPath={tmp_path / 'models'}",
                f"--metricsPort={port}",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        producer = Producer(kafka_config.producer_dict())
        for index in range(EVENTS):
            producer.produce(topics["in"], json.dumps(_event(index)).encode(), b"c")
        for index in range(BAD):
            producer.produce(topics["in"], b"{not json " + str(index).encode(), b"c")
        assert producer.flush(15) == 0
        total = EVENTS + BAD

        deadline = time.monotonic() + TIMEOUT_S
        samples, scrapes = None, 0
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text(errors="replace")[-4000:]
            scraped = _scrape(port)
            if scraped is not None:
                samples, scrapes = scraped, scrapes + 1
                written = samples.get("kafka_beam_ml_written_total", 0)
                if written >= EVENTS + ANOMALIES + BAD and samples.get("kafka_beam_ml_lag") == 0:
                    break
            time.sleep(0.5)
        assert samples is not None, f"no metrics on port {port}:\n{log_path.read_text()[-4000:]}"
        assert scrapes > 1  # answered while the stream ran, not once at the end
        assert process.poll() is None  # still streaming

        outputs = {
            n: len(read_topic(kafka_config, topics[n], 1)) for n in ("out", "alerts", "dead")
        }
        assert outputs == {"out": EVENTS, "alerts": ANOMALIES, "dead": BAD}
        assert samples["kafka_beam_ml_consumed_total"] == total
        assert samples["kafka_beam_ml_predictions_total"] == outputs["out"]
        assert samples["kafka_beam_ml_alerts_total"] == outputs["alerts"]
        assert samples["kafka_beam_ml_dead_letters_total"] == outputs["dead"]
        assert samples["kafka_beam_ml_written_total"] == sum(outputs.values())
        assert samples["kafka_beam_ml_lag"] == 0 == samples["partition_lag_sum"]
    finally:
        stop_process_group(process)
