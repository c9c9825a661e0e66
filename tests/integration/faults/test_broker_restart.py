"""A broker restart mid-stream: ``score_events --streaming`` resumes by itself and loses nothing.

A broker of its own (``scripts/stack.sh`` with a private state dir and port, so the shared
broker of the other tests is never stopped) is stopped with SIGTERM for :data:`DOWN_S` seconds
while events are fed live, then started again on the same data. The real faults follow: the
scorer's idempotent producer usually fails fatally ("out of order sequence number": noida-db
forgets producer state), and the broker comes back holding fewer records than it acknowledged,
giving the lost offsets to new records. The scorer must resume on its own within 30 s of the
broker's return, and every input record the broker holds afterwards must have a prediction
(duplicates allowed: at-least-once). The soak variant (10 minutes at 1,000/s) is
``bench/bench_soak.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_topics import read_topic
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS

# Out of CI again: after six passing runs, a fresh-clone CI run lost 35 of 15,149 held events
# (docs/faults.md, "Still open"). Run it with `scripts/test.sh -m by_hand tests/integration/faults`.
pytestmark = [pytest.mark.integration, pytest.mark.by_hand]

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "scripts" / "stack.sh"
DOWN_S = 30
RATE = 300  # events/s fed live
FEED_BEFORE_S = 10  # seconds of live feed before the broker stops
FEED_AFTER_S = 10  # ... and after it is back
RESUME_LIMIT_S = 30  # the bound: scoring resumes within 30 s of the broker's return
CATCH_UP_TIMEOUT_S = 120
PARTITIONS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """A noida-db of this test only, driven through ``scripts/stack.sh``."""

    def __init__(self, state_dir: Path) -> None:
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KBML_PYTHON": sys.executable,
            "KBML_STACK_DIR": str(state_dir),
            "KBML_KAFKA_PORT": str(self.port),
        }

    def stack(self, *args: str) -> None:
        subprocess.run(
            ["bash", str(STACK), *args], env=self.env, check=True, capture_output=True, timeout=300
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    private = PrivateBroker(tmp_path / "stack")
    private.stack("up", "kafka")
    try:
        yield private
    finally:
        private.stack("down")


def _event(n: int, rng: np.random.Generator) -> bytes:
    values = rng.normal(0, 1, len(CREDITCARD_FEATURES))
    row = {name: float(v) for name, v in zip(CREDITCARD_FEATURES, values, strict=True)}
    return json.dumps({"event_id": f"e{n}", "card_id": f"card-{n % 7}", **row}).encode()


class LiveFeed:
    """Produces events at :data:`RATE` per second in a thread; survives the broker's absence."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        # Not idempotent, long timeout: the feed's own records wait out the outage.
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": "5", "message.timeout.ms": "180000"}
        )
        self._topic = topic
        self._stop = threading.Event()
        self.produced = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LiveFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        start = time.monotonic()
        while not self._stop.is_set():
            try:
                self._producer.produce(self._topic, _event(self.produced, rng), str(self.produced))
                self.produced += 1
            except BufferError:
                self._producer.poll(0.1)
            self._producer.poll(0)
            time.sleep(max(0.0, start + self.produced / RATE - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self._producer.flush(120) == 0, "the feed could not deliver its events"


def _scorer(
    broker: PrivateBroker, topics: dict[str, str], model_root: str, log
) -> subprocess.Popen:
    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.score_events",
            "--runner=FnApiRunner",
            "--streaming",
            f"--bootstrapServers={broker.bootstrap}",
            f"--kafkaConfig={extra}",
            f"--inputTopic={topics['input']}",
            f"--outputTopic={topics['output']}",
            f"--deadLetterTopic={topics['dead']}",
            f"--consumerGroupId=scorer-{uuid.uuid4().hex[:8]}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            "--progressSeconds=10",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _predicted_ids(broker: PrivateBroker, topic: str) -> set[str]:
    messages = read_topic(broker.bootstrap, topic, PARTITIONS)
    return {json.loads(m.value())["event_id"] for m in messages}


def test_the_scorer_resumes_after_a_broker_restart_and_loses_nothing(broker, tmp_path):
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
    model_root = os.path.dirname(write_model(str(tmp_path / "models"), 1))
    log_path = tmp_path / "score_events.log"
    with open(log_path, "wb") as log:
        scorer = _scorer(broker, topics, model_root, log)
        feed = None
        try:
            feed = LiveFeed(broker.bootstrap, topics["input"]).start()
            time.sleep(FEED_BEFORE_S)
            broker.stack("restart", "kafka", "--down-seconds", str(DOWN_S))
            back = time.monotonic()
            time.sleep(FEED_AFTER_S)
            feed.stop()
            fed = feed.produced

            # Resumed: an event produced now is scored within the bound after the return.
            marker = Producer({"bootstrap.servers": broker.bootstrap})
            marker.produce(topics["input"], _event(10**9, np.random.default_rng(1)))
            assert marker.flush(30) == 0
            deadline = back + RESUME_LIMIT_S + FEED_AFTER_S
            while f"e{10**9}" not in _predicted_ids(broker, topics["output"]):
                assert scorer.poll() is None, f"scorer exited:\n{_tail(log_path)}"
                assert time.monotonic() < deadline, f"not resumed in time:\n{_tail(log_path)}"

            # Nothing lost: every record the broker holds now has a prediction.
            held = {
                json.loads(m.value())["event_id"]
                for m in read_topic(broker.bootstrap, topics["input"], PARTITIONS)
            }
            deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
            while missing := held - _predicted_ids(broker, topics["output"]):
                assert scorer.poll() is None, f"scorer exited:\n{_tail(log_path)}"
                assert time.monotonic() < deadline, (
                    f"{len(missing)} of {len(held)} held events never scored "
                    f"(fed {fed}):\n{_tail(log_path)}"
                )
            assert scorer.poll() is None, "the scorer must keep running"
        finally:
            if feed is not None and feed._thread.is_alive():
                feed.stop()
            if scorer.poll() is None:
                os.killpg(scorer.pid, signal.SIGTERM)
                try:
                    scorer.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(scorer.pid, signal.SIGKILL)
                    scorer.wait(10)
    text = log_path.read_text(errors="replace")
    # The outage itself makes the reader restart the run from the committed offsets (the
    # broker may have lost outputs it had acknowledged: transforms/kafka/broker_outage.py).
    # Most runs also hit the real fatal producer error (the broker forgot the idempotent
    # producer's sequence numbers), which restarts it too, depending on what was in flight;
    # the unit tests of the reader and the writer cover both deterministically.
    assert "restarting from the committed offsets" in text, _tail(log_path)
    causes = [name for name in ("Kafka brokers were unreachable", "failed fatally") if name in text]
    print(f"restarted after: {causes}")  # noqa: T201 - shown with pytest -s


def _tail(path: Path, chars: int = 4000) -> str:
    """The end of the scorer's log without librdkafka's connection-refused lines."""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "Connection refused" not in line)[-chars:]
