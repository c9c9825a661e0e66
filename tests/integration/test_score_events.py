"""pipelines.score_events on the real local broker, streaming on the FnApiRunner in a subprocess.

The model is the trainer's (``pipelines.train`` on a small synthetic set, ~25 s), so the fidelity
check compares the trainer's own batch evaluation with the stream. One pipeline run serves the
module (start-up ~15 s): the checks run in file order, the hot reload last because it adds a
version under ``modelPath``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from pipelines.demo.synthetic_data import creditcard_transactions
from pipelines.train import TrainResult, TrainSettings, train
from tests.processes import stop_process_group
from transforms.decoding.schema import bundled_schema, bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT_S = 120


class TopicCollector:
    """Reads a topic from the beginning in a background thread, noting each message's arrival."""

    def __init__(self, kafka_config: KafkaConfig, topic: str, partitions: int) -> None:
        self.messages: list[tuple[float, bytes | None, dict]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        settings = kafka_config.consumer_dict(f"collector-{uuid.uuid4().hex}")
        settings["fetch.queue.backoff.ms"] = "10"  # measure the pipeline, not the collector
        self._consumer = Consumer(settings)
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, 0.05):
                if message.error() is None:
                    with self._lock:
                        self.messages.append(
                            (time.time(), message.key(), json.loads(message.value()))
                        )

    def values(self) -> list[dict]:
        with self._lock:
            return [value for _, _, value in self.messages]

    def wait_for(self, predicate, timeout: float) -> tuple[float, bytes | None, dict]:
        """The first message whose value satisfies ``predicate``; fails after ``timeout``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                for item in self.messages:
                    if predicate(item[2]):
                        return item
            time.sleep(0.01)
        raise AssertionError(f"no matching message within {timeout} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def _create_topics(admin: AdminClient, *specs: tuple[str, int]) -> None:
    futures = admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in specs])
    for future in futures.values():
        future.result(15)


def _event(event_id: str, scale: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    row = {
        name: float(v)
        for name, v in zip(CREDITCARD_FEATURES, rng.normal(0, scale, 30), strict=True)
    }
    return {"event_id": event_id, "card_id": f"card-{seed % 7}", **row}


class Scorer:
    """The running pipeline, its topics, and helpers to produce events and read its outputs."""

    def __init__(self, kafka_config: KafkaConfig, model_root: str, tmp: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.input, self.output = f"score-in-{suffix}", f"score-out-{suffix}"
        self.alerts, self.dead = f"score-alert-{suffix}", f"score-dlq-{suffix}"
        self._admin = AdminClient(kafka_config.producer_dict())
        _create_topics(
            self._admin, (self.input, 3), (self.output, 3), (self.alerts, 1), (self.dead, 1)
        )
        self.model_root = model_root
        self.producer = Producer({**kafka_config.producer_dict(), "linger.ms": "0"})
        self.predictions = TopicCollector(kafka_config, self.output, 3)
        self.alert_messages = TopicCollector(kafka_config, self.alerts, 1)
        self.dead_letters = TopicCollector(kafka_config, self.dead, 1)
        extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
        self.log_path = os.path.join(tmp, "score_events.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.score_events",
                "--runner=FnApiRunner",
                "--streaming",
                f"--bootstrapServers={kafka_config.bootstrap_servers}",
                f"--kafkaConfig={extra}",
                f"--inputTopic={self.input}",
                f"--outputTopic={self.output}",
                f"--alertTopic={self.alerts}",
                f"--deadLetterTopic={self.dead}",
                f"--consumerGroupId=scorer-{suffix}",
                "--startOffset=earliest",
                f"--schemaPath={bundled_schema_path('creditcard')}",
                f"--modelPath={model_root}",
                "--modelPollSeconds=1",
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def produce(self, event: dict | bytes, key: bytes | None = None) -> float:
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        if key is None and isinstance(event, dict):
            key = event["card_id"].encode()
        self.producer.produce(self.input, value, key)
        self.producer.flush(10)
        return time.time()

    def wait_ready(self) -> None:
        """Produce a warm-up event until its prediction shows the pipeline is live."""
        self.produce(_event("warm-up", 0.1, 0))
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"scorer exited early:\n{self.tail_log()}")
            if any(v["event_id"] == "warm-up" for v in self.predictions.values()):
                return
            time.sleep(0.2)
        raise AssertionError(f"scorer not live after {STARTUP_TIMEOUT_S} s:\n{self.tail_log()}")

    def tail_log(self) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read()[-4000:].decode("utf-8", "replace")

    def stop(self) -> None:
        stop_process_group(self.process)
        for collector in (self.predictions, self.alert_messages, self.dead_letters):
            collector.close()
        self._log.close()
        self._admin.delete_topics([self.input, self.output, self.alerts, self.dead])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Version 1 under a fresh modelPath, exported by the trainer (a few epochs: speed only)."""
    work = tmp_path_factory.mktemp("trainer")
    rows = list(creditcard_transactions(2000, seed=3, fraud_rate=0.05))
    settings = TrainSettings(
        transform_dir=str(work / "transform"), model_path=str(work / "models"), epochs=3
    )
    return train(rows, bundled_schema("creditcard"), settings)


@pytest.fixture(scope="module")
def scorer(
    kafka_config: KafkaConfig, trained: TrainResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scorer]:
    model_root = os.path.dirname(trained.version_dir)
    running = Scorer(kafka_config, model_root, str(tmp_path_factory.mktemp("scorer")))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _batch_scores(version_dir: str, events: list[dict]) -> list[float]:
    """The model's batch evaluation of ``events``: one signature call, as a trainer would."""
    import tensorflow as tf

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    inputs = {n: tf.constant([e[n] for e in events], tf.float32) for n in CREDITCARD_FEATURES}
    return signature(**inputs)["score"].numpy().tolist()


def test_an_event_produced_while_running_is_scored_within_2_s(scorer: Scorer) -> None:
    latencies = []
    for i in range(5):
        event = _event(f"live-{i}", 1.0, 100 + i)
        sent = scorer.produce(event)
        arrived, key, prediction = scorer.predictions.wait_for(
            lambda v, eid=event["event_id"]: v["event_id"] == eid, timeout=10
        )
        latencies.append(arrived - sent)
        assert key == event["card_id"].encode()
        assert prediction["key"] == event["card_id"]
        assert prediction["model_version"] == 1
        assert prediction["score"] >= 0.0
        time.sleep(0.3)
    assert max(latencies) < 2.0, latencies


def test_streaming_scores_match_the_trainers_batch_evaluation(
    scorer: Scorer, trained: TrainResult
) -> None:
    events = trained.test_rows
    for event in events:
        scorer.produce(event)
    ids = {e["event_id"] for e in events}
    deadline = time.time() + 60
    while time.time() < deadline:
        streamed = {v["event_id"]: v for v in scorer.predictions.values() if v["event_id"] in ids}
        if len(streamed) == len(ids):
            break
        time.sleep(0.1)
    assert set(streamed) == ids

    batch = trained.test_scores.tolist()
    diffs = [abs(streamed[e["event_id"]]["score"] - s) for e, s in zip(events, batch, strict=True)]
    assert max(diffs) <= 1e-5
    flagged = {e["event_id"] for e, s in zip(events, batch, strict=True) if s > trained.threshold}
    assert flagged and flagged != ids
    assert {eid for eid, v in streamed.items() if v["is_anomaly"]} == flagged
    assert all(v["threshold"] == pytest.approx(trained.threshold) for v in streamed.values())
    # Alerts travel through their own topic: wait for the whole set, not just the first one.
    deadline = time.time() + 30
    while time.time() < deadline:
        alerted = {v["event_id"] for v in scorer.alert_messages.values()} & ids
        if alerted >= flagged:
            break
        time.sleep(0.1)
    assert alerted == flagged


def test_bad_events_go_to_the_dead_letter_topic(scorer: Scorer) -> None:
    scorer.produce(b'{"event_id": "broken", "Time": ', key=b"card-x")
    missing = _event("no-amount", 1.0, 300)
    del missing["Amount"]
    scorer.produce(missing)

    _, key, letter = scorer.dead_letters.wait_for(
        lambda v: v["payload"] is not None and b"broken" in _b64(v["payload"]), timeout=10
    )
    assert key == b"card-x"
    assert letter["stage"] == "decode"
    scorer.dead_letters.wait_for(lambda v: b"no-amount" in _b64(v["payload"]), timeout=10)
    assert not any(v["event_id"] in ("broken", "no-amount") for v in scorer.predictions.values())


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def test_a_new_model_version_is_used_without_restart_and_no_event_is_lost(
    scorer: Scorer,
) -> None:
    sent: list[dict] = []
    stop = threading.Event()

    def produce_steadily() -> None:
        i = 0
        while not stop.is_set():
            event = _event(f"reload-{i}", 1.0, 1000 + i)
            scorer.produce(event)
            sent.append(event)
            i += 1
            time.sleep(0.02)

    producer = threading.Thread(target=produce_steadily)
    producer.start()
    try:
        time.sleep(1.5)
        write_model(scorer.model_root, 2, weight=3.0)
        scorer.predictions.wait_for(
            lambda v: v["model_version"] == 2 and v["event_id"].startswith("reload-"), timeout=30
        )
        time.sleep(1.5)
    finally:
        stop.set()
        producer.join()
    ids = [e["event_id"] for e in sent]
    deadline = time.time() + 30
    while time.time() < deadline:
        seen = [v for v in scorer.predictions.values() if v["event_id"].startswith("reload-")]
        if {v["event_id"] for v in seen} >= set(ids):
            break
        time.sleep(0.2)

    by_id = {e["event_id"]: e for e in sent}
    assert {v["event_id"] for v in seen} == set(ids), "every input event has a prediction"
    duplicates = len(seen) - len({v["event_id"] for v in seen})
    assert duplicates == 0, f"{duplicates} duplicates without any failure or restart"
    versions = [v["model_version"] for v in seen]
    assert versions[0] == 1 and versions[-1] == 2
    scored_by_v1 = [by_id[v["event_id"]] for v in seen if v["model_version"] == 1]
    v1_scores = dict(
        zip(
            (e["event_id"] for e in scored_by_v1),
            _batch_scores(os.path.join(scorer.model_root, "1"), scored_by_v1),
            strict=True,
        )
    )
    for value in seen:
        event = by_id[value["event_id"]]
        if value["model_version"] == 1:
            expected = v1_scores[value["event_id"]]
        else:
            expected = expected_score(event, weight=3.0)
        assert value["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Per partition, once version 2 scores an event, later events never go back to version 1.
    for partition in range(3):
        in_order = sorted(
            (v for v in seen if v["partition"] == partition), key=lambda v: v["offset"]
        )
        first_v2 = next(i for i, v in enumerate(in_order) if v["model_version"] == 2)
        assert all(v["model_version"] == 2 for v in in_order[first_v2:])
