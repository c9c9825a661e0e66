"""A broker that comes back without records below the group's committed offset: nothing is skipped.

noida-db persists by snapshot, and a fresh-clone CI run once found a snapshot that held the
group's newest committed offsets but not the last input records below them; new records then
took those offsets, below the committed one, and were never scored (35 of 15,149 events). Here
that state is made on purpose: ``score_events --streaming`` scores and commits a backlog, the
private broker is stopped, the last few hundred records of one partition are cut from its state
file (committed offsets kept), and after its return new events take the freed offsets. The
scorer must notice by itself (``transforms/kafka/commit_trail.py``) and score every event the
broker holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_topics import read_event_ids
from private_broker import PrivateBroker, start_scorer
from tiny_anomaly_model import creditcard_event, write_model

pytestmark = pytest.mark.integration

PARTITIONS = 2
BACKLOG = 3000  # events scored and committed before the broker stops
CUT = 400  # about this many of partition 0's last records are lost
NEW = 600  # events produced to partition 0 after the broker's return
TIMEOUT_S = 120


def _produce(bootstrap: str, topic: str, ids: list[str], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    rng = np.random.default_rng(len(ids))
    for index, event_id in enumerate(ids):
        target = index % PARTITIONS if partition is None else partition
        producer.produce(topic, creditcard_event(event_id, rng), event_id, partition=target)
    assert producer.flush(60) == 0


def _committed(bootstrap: str, group: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def _wait(condition, scorer: subprocess.Popen, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert scorer.poll() is None, f"scorer exited:\n{_tail(log_path)}"
        assert time.monotonic() < deadline, f"{what}:\n{_tail(log_path)}"
        time.sleep(1)


def test_records_lost_below_the_committed_offset_are_replaced_and_scored(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    broker = private_broker
    suffix = uuid.uuid4().hex[:6]
    topics = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dlq-{suffix}"}
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    created = admin.create_topics(
        [
            NewTopic(topics["input"], PARTITIONS, 1),
            NewTopic(topics["output"], PARTITIONS, 1),
            NewTopic(topics["dead"], 1, 1),
        ]
    )
    for future in created.values():
        future.result(15)
    _produce(broker.bootstrap, topics["input"], [f"old-{n}" for n in range(BACKLOG)])
    model_root = os.path.dirname(write_model(str(tmp_path / "models"), 1))
    group = f"scorer-{suffix}"
    log_path = tmp_path / "score_events.log"
    with open(log_path, "wb") as log:
        scorer = start_scorer(broker, topics, model_root, log, group=group)
        try:
            ends = [BACKLOG // PARTITIONS] * PARTITIONS
            _wait(
                lambda: _committed(broker.bootstrap, group, topics["input"]) == ends,
                scorer,
                log_path,
                "the backlog was not scored and committed",
            )

            broker.stack("down", "kafka")
            end = broker.drop_tail(topics["input"], 0, keep_below=ends[0] - CUT)
            assert end < ends[0] - CUT // 2, "the cut kept too much for the test to mean anything"
            broker.stack("up", "kafka")
            # The freed offsets end..ends[0]-1 (below the committed offset) go to new events.
            _produce(broker.bootstrap, topics["input"], [f"new-{n}" for n in range(NEW)], 0)

            held = read_event_ids(broker.bootstrap, topics["input"], PARTITIONS)
            assert {f"new-{n}" for n in range(NEW)} <= held
            _wait(
                lambda: held <= read_event_ids(broker.bootstrap, topics["output"], PARTITIONS),
                scorer,
                log_path,
                "events the broker holds were never scored",
            )
            assert scorer.poll() is None, "the scorer must keep running"
        finally:
            if scorer.poll() is None:
                os.killpg(scorer.pid, signal.SIGTERM)
                try:
                    scorer.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(scorer.pid, signal.SIGKILL)
                    scorer.wait(10)
    text = log_path.read_text(errors="replace")
    assert "the broker no longer holds record" in text, _tail(log_path)


def _tail(path: Path, chars: int = 4000) -> str:
    """The end of the scorer's log without librdkafka's connection-refused lines."""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "Connection refused" not in line)[-chars:]
