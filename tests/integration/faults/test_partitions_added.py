"""Partitions added to a topic while a streaming read runs are read live, without a restart.

The first case starts ``tests/read_to_file_pipeline.py`` (ReadFromKafka on ``--runner=FnApiRunner
--streaming``, partitions listed every 2 s) on a 1-partition topic of the local broker, adds two
partitions with ``AdminClient.create_partitions`` and writes to them, some records before the
reader can have listed them. Every record must reach the pipeline's file sink while the same
process keeps running. The second case runs a real pipeline on a topic that does not exist: it
must stop at once, naming the topic and ``--inputTopic``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from pipelines.common.supervisor import EXIT_PERMANENT
from transforms.decoding.schema import bundled_schema_path

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).resolve().parents[2] / "read_to_file_pipeline.py"
DISCOVERY_S = 2.0
#: How long a record may take to arrive: the issue's bound plus one listing interval.
DELIVERY_S = 30 + DISCOVERY_S


def _start(bootstrap: str, topic: str, group: str, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                f"--bootstrap={bootstrap}",
                f"--topic={topic}",
                f"--out={out}",
                f"--group={group}",
                f"--discovery-s={DISCOVERY_S}",
                "--runner=FnApiRunner",
                "--streaming",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _arrived(out: Path) -> dict[tuple[int, int], int]:
    """``(partition, offset) -> received_ms`` of every record the sink wrote (first arrival)."""
    if not out.exists():
        return {}
    arrived: dict[tuple[int, int], int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) == 4:
            partition, offset, _, received_ms = map(int, fields)
            arrived.setdefault((partition, offset), received_ms)
    return arrived


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout:.0f}s (exit status {proc.poll()}):\n"
                + log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.1)


class _Sent:
    """A producer that remembers when each record was acknowledged, by (partition, offset)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.acked_ms: dict[tuple[int, int], int] = {}
        self.reconnect()

    def reconnect(self) -> None:
        """A new producer, which sees partitions added since (the old one's metadata is stale)."""
        self._producer = Producer({"bootstrap.servers": self._bootstrap, "linger.ms": 0})

    def send(self, topic: str, partition: int, count: int, *, pause_s: float = 0.0) -> None:
        for index in range(count):
            self._producer.produce(
                topic,
                key=b"key-%d-%d" % (partition, index),
                value=b"value-%d" % index,
                partition=partition,
                on_delivery=self._delivered,
            )
            self._producer.flush(10)
            time.sleep(pause_s)

    def _delivered(self, err, msg) -> None:
        assert err is None, err
        self.acked_ms[(msg.partition(), msg.offset())] = int(time.time() * 1000)


@pytest.mark.timeout(120)
def test_partitions_added_while_streaming_are_read_live(
    kafka_bootstrap, kafka_config, topic_factory, group_id, tmp_path
):
    topic = topic_factory(partitions=1)
    out, log = tmp_path / "arrived.txt", tmp_path / "pipeline.log"
    sent = _Sent(kafka_bootstrap)
    proc = _start(kafka_bootstrap, topic, group_id, out, log)
    try:
        sent.send(topic, 0, 1)
        _wait_for(lambda: _arrived(out), 60, "the first record", proc, log)
        sent.send(topic, 0, 5)

        admin = AdminClient(kafka_config.producer_dict())
        admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=10)
        sent.reconnect()
        # At once (before a listing can have seen them), then trickling while the pipeline runs.
        sent.send(topic, 1, 3)
        sent.send(topic, 2, 3)
        sent.send(topic, 1, 4, pause_s=0.25)
        sent.send(topic, 2, 4, pause_s=0.25)

        expected = set(sent.acked_ms)
        assert {p for p, _ in expected} == {0, 1, 2}
        _wait_for(lambda: expected <= set(_arrived(out)), DELIVERY_S, "every record", proc, log)
        assert proc.poll() is None, "the streaming pipeline stopped"
    finally:
        _stop(proc)
    arrived = _arrived(out)
    assert set(arrived) == expected  # nothing lost, nothing read that was not written
    late = {key: arrived[key] - sent.acked_ms[key] for key in expected}
    assert max(late.values()) < DELIVERY_S * 1000, late
    text = log.read_text(errors="replace")
    for partition in (1, 2):
        assert f"{topic}[{partition}]: new partition, reading from offset 0" in text


@pytest.mark.timeout(120)
def test_a_topic_missing_at_launch_stops_the_pipeline_naming_it(kafka_bootstrap, tmp_path):
    topic = f"missing-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.kafka_to_gcs",
            f"--bootstrapServers={kafka_bootstrap}",
            f"--inputTopic={topic}",
            "--consumerGroupId=missing-topic-test",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--outputDirectory={tmp_path / 'out'}",
            "--runner=FnApiRunner",
            "--streaming",  # a local stream restarts after faults, but not after this one
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == EXIT_PERMANENT, output[-3000:]
    stopped = [line for line in output.splitlines() if "kafka_to_gcs stopped:" in line]
    assert stopped, output[-3000:]
    assert f"Kafka topic {topic!r} is not readable: it does not exist" in stopped[0]
    assert "fix --inputTopic" in stopped[0]
    assert "restarting" not in output
    assert elapsed < 30, f"took {elapsed:.1f}s"
