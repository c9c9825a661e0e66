"""score_events keeps its promise through SIGKILLs: every input offset ends as an output.

The scorer (``pipelines.score_events``, streaming on the FnApiRunner, in a subprocess) reads a
topic fed live at ~300 events/s, a few of them malformed. Five times, a few seconds after the
scorer is live (its first prediction after a (re)start), the test SIGKILLs its process group and
starts it again with the same arguments. The same consumer group resumes from the committed
offsets: no other restart, no manual step. Once the feed stops, every input offset must have a
prediction (valid events) or a dead letter (malformed ones). Duplicates are allowed
(at-least-once); their ratio is printed (``pytest -s``) and shown in the failure messages.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_topics import read_topic
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
KILLS = 5
FEED_PER_S = 300
FEED_TICK_S = 0.1
MALFORMED_EVERY = 150  # one message in 150: broken JSON or a missing field, alternately
LIVE_TIMEOUT_S = 90  # start-up is ~10-15 s; generous for a loaded shared machine
RUN_AFTER_LIVE_S = 3.0
DRAIN_TIMEOUT_S = 60
_EVENT_ID = re.compile(rb'"event_id": "([^"]+)"')


def _rfc3339_ms(epoch_s: float) -> str:
    """``epoch_s`` in the scorer's ``scoring_time`` format, so the texts compare in time order."""
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


class _Collector:
    """Reads a topic from offset 0 in a background thread, keeping ``parse(value)`` of each."""

    def __init__(
        self, config: KafkaConfig, topic: str, partitions: int, parse: Callable[[dict], Any]
    ) -> None:
        self.items: list[Any] = []
        self._parse = parse
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(config.consumer_dict(f"collector-{uuid.uuid4().hex}"))
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = [
                self._parse(json.loads(m.value()))
                for m in self._consumer.consume(500, 0.1)
                if m.error() is None
            ]
            if batch:
                with self._lock:
                    self.items.extend(batch)

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class _Feed:
    """Produces creditcard events with unique ids at ~FEED_PER_S in a background thread."""

    def __init__(self, config: KafkaConfig, topic: str) -> None:
        self.sent = 0
        self.failed: list[str] = []
        self._topic = topic
        self._producer = Producer({**config.producer_dict(), "linger.ms": "5"})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_delivery(self, err, _message) -> None:
        if err is not None:
            self.failed.append(str(err))

    def _message(self, index: int, features: np.ndarray) -> tuple[bytes, bytes]:
        if index % MALFORMED_EVERY == 0:
            if index % (2 * MALFORMED_EVERY) == 0:
                return b"card-bad", b'{"event_id": "bad-json-%d", "Time": ' % index
            event = dict(zip(CREDITCARD_FEATURES[:-1], features.tolist(), strict=False))
            return b"card-bad", json.dumps({"event_id": f"bad-field-{index}", **event}).encode()
        card = f"card-{index % 31}"
        event = dict(zip(CREDITCARD_FEATURES, features.tolist(), strict=True))
        value = json.dumps({"event_id": f"e-{index}", "card_id": card, **event})
        return card.encode(), value.encode()

    def _run(self) -> None:
        rng = np.random.default_rng(11)
        per_tick = int(FEED_PER_S * FEED_TICK_S)
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for features in rng.normal(0.0, 1.0, (per_tick, len(CREDITCARD_FEATURES))):
                self.sent += 1
                key, value = self._message(self.sent, features)
                self._producer.produce(self._topic, value, key, on_delivery=self._on_delivery)
            self._producer.poll(0)
            next_tick += FEED_TICK_S
            time.sleep(max(0.0, next_tick - time.monotonic()))
        self._producer.flush(30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


class _ScorerProcess:
    """``pipelines.score_events`` in its own process group, restartable with the same arguments."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self._args = args
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(b"\n===== start %d =====\n" % self.starts)
            log.flush()
            self.started_at = time.time()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.score_events", *self._args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)

    def check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"scorer exited on its own:\n{self.tail_log()}")

    def tail_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _wait_live(scorer: _ScorerProcess, predictions: _Collector) -> float:
    """Seconds from the scorer's start to its first prediction scored after that start."""
    since = _rfc3339_ms(scorer.started_at)
    deadline = time.monotonic() + LIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        scorer.check_running()
        if any(p[3] >= since for p in predictions.snapshot()[-2000:]):
            return time.time() - scorer.started_at
        time.sleep(0.2)
    raise AssertionError(
        f"start {scorer.starts}: no prediction within {LIVE_TIMEOUT_S} s:\n{scorer.tail_log()}"
    )


def _read_input(config: KafkaConfig, topic: str, partitions: int) -> dict[tuple[int, int], str]:
    """``(partition, offset) -> event_id`` of every message of ``topic`` up to its end."""
    placed: dict[tuple[int, int], str] = {}
    for message in read_topic(config, topic, partitions):
        found = _EVENT_ID.search(message.value())
        assert found, message.value()[:200]
        placed[(message.partition(), message.offset())] = found.group(1).decode()
    return placed


@pytest.mark.timeout(420)
def test_five_sigkills_under_a_live_feed_leave_every_input_offset_accounted_for(
    kafka_config: KafkaConfig, topic_factory, group_id: str, tmp_path: Path
) -> None:
    source, output, dead = topic_factory(3), topic_factory(3), topic_factory(1)
    model_root = str(tmp_path / "models")
    write_model(model_root, 1)
    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    scorer = _ScorerProcess(
        [
            "--runner=FnApiRunner",
            "--streaming",
            f"--bootstrapServers={kafka_config.bootstrap_servers}",
            f"--kafkaConfig={extra}",
            f"--inputTopic={source}",
            f"--outputTopic={output}",
            f"--deadLetterTopic={dead}",
            f"--consumerGroupId={group_id}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            "--modelPollSeconds=1",
        ],
        tmp_path / "score_events.log",
    )
    predictions = _Collector(
        kafka_config,
        output,
        3,
        lambda v: (v["partition"], v["offset"], v["event_id"], v["scoring_time"], v["topic"]),
    )
    letters = _Collector(
        kafka_config, dead, 1, lambda v: (v["partition"], v["offset"], v["stage"], v["topic"])
    )
    feed = _Feed(kafka_config, source)
    began = time.monotonic()
    startups: list[float] = []
    try:
        scorer.start()
        for _ in range(KILLS):
            startups.append(_wait_live(scorer, predictions))
            time.sleep(RUN_AFTER_LIVE_S)
            scorer.check_running()
            scorer.kill()
            scorer.start()
        startups.append(_wait_live(scorer, predictions))
        time.sleep(RUN_AFTER_LIVE_S)
        feed.stop()
        assert not feed.failed, f"feed delivery errors: {feed.failed[:5]}"
        inputs = _read_input(kafka_config, source, 3)
        valid = {at for at, event_id in inputs.items() if not event_id.startswith("bad-")}
        malformed = set(inputs) - valid

        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            scorer.check_running()
            predicted = {(p, o) for p, o, *_ in predictions.snapshot()}
            lettered = {(p, o) for p, o, *_ in letters.snapshot()}
            if predicted >= valid and lettered >= malformed:
                break
            time.sleep(0.5)
        drained = time.monotonic()
    finally:
        feed.stop()
        scorer.kill()
        predictions.close()
        letters.close()

    scored = predictions.snapshot()
    dead_letters = letters.snapshot()
    by_prediction = Counter((p, o) for p, o, *_ in scored)
    by_letter = Counter((p, o) for p, o, *_ in dead_letters)
    outputs = len(scored) + len(dead_letters)
    duplicates = outputs - len(set(by_prediction) | set(by_letter))
    summary = (
        f"{len(inputs)} input offsets ({len(malformed)} malformed), {len(scored)} predictions, "
        f"{len(dead_letters)} dead letters; duplicates {duplicates} "
        f"({duplicates / len(inputs):.2%} of the input); start-up to first prediction "
        f"{', '.join(f'{s:.1f}' for s in startups)} s; drained "
        f"{drained - began:.0f} s after the first start"
    )
    print(f"\nSIGKILL x{KILLS}: {summary}")  # noqa: T201 - shown with pytest -s

    assert len(startups) == KILLS + 1
    missing = sorted(valid - set(by_prediction))
    assert not missing, f"{len(missing)} events without a prediction: {missing[:10]}; {summary}"
    missing = sorted(malformed - set(by_letter))
    assert not missing, f"{len(missing)} malformed without a dead letter: {missing[:10]}; {summary}"
    # Nothing else: each output points at an input offset of its kind, with the event's own id.
    assert {t for *_, t in scored} | {t for *_, t in dead_letters} == {source}
    assert set(by_prediction) <= valid, sorted(set(by_prediction) - valid)[:10]
    assert set(by_letter) <= malformed, sorted(set(by_letter) - malformed)[:10]
    wrong_id = [(p, o, eid) for p, o, eid, *_ in scored if inputs[(p, o)] != eid]
    assert not wrong_id, wrong_id[:10]
    stages = Counter(stage for _, _, stage, _ in dead_letters)
    assert set(stages) <= {"decode", "validate"}, stages
