"""The streaming scorer through Beam's portable runner, its SDK workers in other processes.

What a Flink or Spark job server does: ``--runner=PortableRunner`` submits the pipeline as a
portable job (here to the embedded job service, ``--job_endpoint=embed``), and the Python steps
run in SDK workers started by a worker pool (``--environment_type=EXTERNAL``,
scripts/local_worker_pool.py). Checked: the splittable reader streams (it checkpoints with
``defer_remainder`` and is resumed: an event produced while running is scored within seconds),
scores are the model's, and offsets are committed by bundle finalization, which the runner
sends over the Fn API to the worker process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from scorer_process import REPO, Scorer, make_event
from tiny_anomaly_model import expected_score, write_model

from transforms.kafka.config import KafkaConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker_pool() -> Iterator[tuple[int, str]]:
    """Beam's worker pool on 127.0.0.1: (its pid, its address)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "local_worker_pool.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "ready 127.0.0.1:PORT"
        assert line.startswith("ready "), f"worker pool did not start: {line!r}"
        yield proc.pid, line.split()[1]
    finally:
        proc.terminate()
        proc.wait(30)


def _sdk_workers(pool_pid: int) -> list[int]:
    """SDK worker processes the pool started (children running Beam's SdkHarness)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if ppid == pool_pid and b"SdkHarness" in cmdline:
            found.append(int(entry))
    return found


def _committed(kafka_config: KafkaConfig, group: str, topic: str) -> int:
    consumer = Consumer(kafka_config.consumer_dict(group))
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.mark.timeout(240)
def test_streaming_scorer_on_the_portable_runner_with_external_sdk_workers(
    kafka_config: KafkaConfig, worker_pool, tmp_path
) -> None:
    pool_pid, pool_address = worker_pool
    model_root = str(tmp_path / "models")
    write_model(model_root, 1, weight=0.5, threshold=0.8)
    runner = (
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config={pool_address}",
    )
    scorer = Scorer(kafka_config, model_root, str(tmp_path), runner_args=runner)
    try:
        scorer.wait_ready()
        assert _sdk_workers(pool_pid), "no SDK worker process was started by the pool"
        assert scorer.process.pid not in _sdk_workers(pool_pid)

        events = [make_event(f"portable-{i}", 1.0, 500 + i) for i in range(12)]
        started = time.time()
        for event in events:
            scorer.produce(event)
        ids = {e["event_id"] for e in events}
        _wait(
            lambda: ids <= {v["event_id"] for v in scorer.predictions.values()},
            30,
            "every live event scored",
        )
        assert time.time() - started < 30
        by_id = {v["event_id"]: v for v in scorer.predictions.values()}
        for event in events:
            want = expected_score(event, weight=0.5)
            assert by_id[event["event_id"]]["score"] == pytest.approx(want, rel=1e-5)

        # Commits come from bundle finalization in the worker: every input offset, warm-up too.
        total = len(events) + 1
        _wait(
            lambda: _committed(kafka_config, scorer.group, scorer.input) == total,
            30,
            f"the group committing all {total} offsets",
        )
        assert scorer.process.poll() is None, "the streaming scorer stopped"
    finally:
        scorer.stop()
