"""The streaming scorer (``python -m pipelines.score_events``) in a subprocess, with its topics.

Shared by the integration tests that run it on the FnApiRunner (test_score_events.py) and through
the portable runner with SDK workers in other processes (test_portable_runner.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from processes import stop_process_group
from tiny_anomaly_model import CREDITCARD_FEATURES

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

__all__ = ["STARTUP_TIMEOUT_S", "TopicCollector", "Scorer", "make_event"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def make_event(event_id: str, scale: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    row = {
        name: float(v)
        for name, v in zip(CREDITCARD_FEATURES, rng.normal(0, scale, 30), strict=True)
    }
    return {"event_id": event_id, "card_id": f"card-{seed % 7}", **row}


class Scorer:
    """The running pipeline, its topics, and helpers to produce events and read its outputs."""

    def __init__(
        self,
        kafka_config: KafkaConfig,
        model_root: str,
        tmp: str,
        runner_args: Sequence[str] = ("--runner=FnApiRunner",),
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.input, self.output = f"score-in-{suffix}", f"score-out-{suffix}"
        self.alerts, self.dead = f"score-alert-{suffix}", f"score-dlq-{suffix}"
        self.group = f"scorer-{suffix}"
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
                *runner_args,
                "--streaming",
                f"--bootstrapServers={kafka_config.bootstrap_servers}",
                f"--kafkaConfig={extra}",
                f"--inputTopic={self.input}",
                f"--outputTopic={self.output}",
                f"--alertTopic={self.alerts}",
                f"--deadLetterTopic={self.dead}",
                f"--consumerGroupId={self.group}",
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
        self.produce(make_event("warm-up", 0.1, 0))
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
