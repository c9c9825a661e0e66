"""A broker that comes back without writes it had acknowledged, but with the group's offsets
past them: nothing is skipped.

noida-db persists by snapshot, and its snapshots are not one point in time: fresh-clone CI runs
found the group's newest committed offsets kept while the last input records below them were
gone (new records then took their offsets: 35 of 15,149 events never scored), and input records
kept while their predictions were gone (3 of 15,152). Here both states are made on purpose:
``score_events --streaming`` scores and commits, the private broker is stopped, the tail of a
partition is cut from its state file (committed offsets kept), and it starts again. The scorer
must notice by itself (``transforms/kafka/commit_trail.py``) and score every event the broker
holds.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_topics import read_event_ids
from private_broker import PrivateBroker, start_scorer
from processes import stop_process_group
from tiny_anomaly_model import creditcard_event, write_model

pytestmark = pytest.mark.integration

PARTITIONS = 2
TIMEOUT_S = 120


class Scene:
    """Topics on the private broker, a scorer reading them, and checks on both."""

    def __init__(self, broker: PrivateBroker, tmp_path: Path) -> None:
        self.broker = broker
        suffix = uuid.uuid4().hex[:6]
        self.topics = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dead": f"dlq-{suffix}"}
        self.group = f"scorer-{suffix}"
        self.log_path = tmp_path / "score_events.log"
        self.model_root = os.path.dirname(write_model(str(tmp_path / "models"), 1))
        self.scorer: subprocess.Popen | None = None
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        created = admin.create_topics(
            [
                NewTopic(self.topics["input"], PARTITIONS, 1),
                NewTopic(self.topics["output"], PARTITIONS, 1),
                NewTopic(self.topics["dead"], 1, 1),
            ]
        )
        for future in created.values():
            future.result(15)

    @contextmanager
    def scoring(self, *flags: str) -> Iterator[None]:
        with open(self.log_path, "wb") as log:
            self.scorer = start_scorer(
                self.broker, self.topics, self.model_root, log, self.group, *flags
            )
            try:
                yield
                assert self.scorer.poll() is None, "the scorer must keep running"
            finally:
                stop_process_group(self.scorer)

    def produce(self, ids: list[str], partition: int | None = None) -> None:
        producer = Producer({"bootstrap.servers": self.broker.bootstrap, "linger.ms": "5"})
        rng = np.random.default_rng(len(ids))
        for index, event_id in enumerate(ids):
            target = index % PARTITIONS if partition is None else partition
            value = creditcard_event(event_id, rng)
            producer.produce(self.topics["input"], value, event_id, partition=target)
        assert producer.flush(60) == 0

    def ends(self, topic: str) -> list[int]:
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "ends"})
        try:
            tps = [TopicPartition(self.topics[topic], p) for p in range(PARTITIONS)]
            return [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        finally:
            consumer.close()

    def committed(self) -> list[int]:
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": self.group})
        try:
            tps = [TopicPartition(self.topics["input"], p) for p in range(PARTITIONS)]
            return [tp.offset for tp in consumer.committed(tps, timeout=10)]
        finally:
            consumer.close()

    def wait_until_committed(self) -> None:
        ends = self.ends("input")
        self._wait(lambda: self.committed() == ends, "the input was not scored and committed")

    def wait_until_every_held_event_is_scored(self) -> None:
        held = self.event_ids("input")
        self._wait(lambda: held <= self.event_ids("output"), "held events were never scored")

    def event_ids(self, topic: str) -> set[str]:
        return read_event_ids(self.broker.bootstrap, self.topics[topic], PARTITIONS)

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            assert self.scorer.poll() is None, f"scorer exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{what}:\n{self.tail()}"
            time.sleep(1)

    def tail(self, chars: int = 4000) -> str:
        """The end of the scorer's log without librdkafka's connection-refused lines."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if "Connection refused" not in line)[-chars:]


def test_inputs_lost_below_the_committed_offset_are_replaced_and_scored(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """The last ~400 input records of partition 0 are lost, the committed offsets kept; new
    events take the freed offsets below the committed one. No replay window: the records
    themselves show the loss."""
    scene = Scene(private_broker, tmp_path)
    scene.produce([f"old-{n}" for n in range(3000)])
    with scene.scoring("--outageReplaySeconds=0"):
        scene.wait_until_committed()
        (end, _) = scene.ends("input")
        private_broker.stack("down", "kafka")
        kept = private_broker.drop_tail(scene.topics["input"], 0, keep_below=end - 400)
        assert kept < end - 200, "the cut kept too much for the test to mean anything"
        private_broker.stack("up", "kafka")
        scene.produce([f"new-{n}" for n in range(600)], partition=0)
        scene.wait_until_every_held_event_is_scored()
    assert "the broker no longer holds record" in scene.tail(10**6), scene.tail()


def test_predictions_lost_while_their_inputs_and_commits_were_kept_are_redone(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """Every input is kept, with the committed offsets past it, but the predictions of the
    last 1,000 events are lost: the restart after the outage replays what was committed in the
    last ``--outageReplaySeconds`` before it."""
    scene = Scene(private_broker, tmp_path)
    scene.produce([f"early-{n}" for n in range(2000)])
    with scene.scoring("--outageReplaySeconds=5"):
        scene.wait_until_committed()
        time.sleep(7)  # the early events' commits are older than the replay window
        scene.produce([f"late-{n}" for n in range(1000)])
        scene.wait_until_committed()
        ends = scene.ends("output")
        private_broker.stack("down", "kafka")
        for partition, end in enumerate(ends):
            private_broker.drop_tail(scene.topics["output"], partition, keep_below=end - 450)
        private_broker.stack("up", "kafka")
        lost = {f"late-{n}" for n in range(1000)} - scene.event_ids("output")
        assert len(lost) > 500, "the cut kept too much for the test to mean anything"
        scene.wait_until_every_held_event_is_scored()
    assert "after a broker outage, reading again from offset" in scene.tail(10**6), scene.tail()
