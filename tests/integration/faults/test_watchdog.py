"""The stall watchdog on a real read: a stuck pipeline exits with EXIT_STALLED, an idle one runs.

Each case starts ``blocked_read_pipeline.py`` (ReadFromKafka → a step that never returns, on the
streaming FnApiRunner) with ``--stallTimeoutSeconds=5`` against the local broker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pipelines.common.watchdog import EXIT_STALLED

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).resolve().parent / "blocked_read_pipeline.py"
STALL_S = 5


def _start(bootstrap: str, topic: str, group: str, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                f"--bootstrapServers={bootstrap}",
                f"--inputTopic={topic}",
                f"--consumerGroupId={group}",
                "--startOffset=earliest",
                "--progressSeconds=1",
                f"--stallTimeoutSeconds={STALL_S}",
                "--runner=FnApiRunner",
                "--streaming",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def _wait_for_line(log_path: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log_path.read_text(errors="replace"))
        if found:
            return found.group(0)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(
        f"no line matching {pattern!r} (exit status {proc.poll()}):\n"
        + log_path.read_text(errors="replace")[-3000:]
    )


@pytest.mark.timeout(120)
def test_a_stalled_read_exits_with_the_stall_status_and_names_the_lag(
    kafka_config, topic_factory, group_id, tmp_path
):
    topic = topic_factory(partitions=1)
    producer = Producer(kafka_config.producer_dict())
    for index in range(500):
        producer.produce(topic, value=b'{"n": %d}' % index)
    assert producer.flush(10) == 0
    log_path = tmp_path / "stalled.log"
    proc = _start(kafka_config.bootstrap_servers, topic, group_id, log_path)
    try:
        # The reader hands a batch of 100 to the blocked step: 400 left behind, nothing moves.
        _wait_for_line(log_path, r"progress: consumed=100\(", proc, 40)
        started = time.monotonic()
        proc.wait(STALL_S + 15)
        waited = time.monotonic() - started
    finally:
        _stop(proc)
    log = log_path.read_text(errors="replace")
    assert proc.returncode == EXIT_STALLED, log[-3000:]
    assert waited < STALL_S + 10
    stall = re.search(r"ERROR kafka_beam_ml.progress stalled: .*", log)
    assert stall, log[-3000:]
    assert f"--stallTimeoutSeconds={STALL_S}" in stall.group(0)
    assert f"{topic}[0] next=100 end=500 lag=400 committed=none" in stall.group(0)
    assert f"Exiting with status {EXIT_STALLED}" in log[stall.end() :]
    # The thread dump after it shows where the pipeline is stuck.
    assert re.search(r'blocked_read_pipeline\.py", line \d+ in process', log[stall.end() :])


@pytest.mark.timeout(120)
def test_an_idle_stream_is_not_a_stall(kafka_config, topic_factory, group_id, tmp_path):
    topic = topic_factory(partitions=1)
    log_path = tmp_path / "idle.log"
    proc = _start(kafka_config.bootstrap_servers, topic, group_id, log_path)
    try:
        _wait_for_line(log_path, rf"{re.escape(topic)}\[0\] next=0 end=0 lag=0", proc, 40)
        time.sleep(2 * STALL_S + 2)
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
    finally:
        _stop(proc)
    assert "stalled" not in log_path.read_text(errors="replace")
