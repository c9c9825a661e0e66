"""pipelines.score_events on the stack's real model server (KServe serving our SavedModel).

The same events scored embedded (``--modelPath``) and remote (``--modelServerUrl``, OIP v2) get
the same scores; TF Serving's REST protocol (row and columnar) answers the same; and a model
server restarted under a streaming scorer loses no event (the batches it failed are retried).
"""

from __future__ import annotations

import json
import os
import signal
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
from ports import free_port
from tiny_anomaly_model import CREDITCARD_FEATURES, write_model

from transforms.decoding.schema import bundled_schema_path
from transforms.inference.model_handler import SavedModelHandler
from transforms.inference.model_server_handler import ModelServerEndpoint, ModelServerHandler
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EVENTS = 600
THRESHOLD = 72.0  # about the median score of _events rows under the served model


def _events(prefix: str, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 6, (count, len(CREDITCARD_FEATURES)))
    return [
        {
            "event_id": f"{prefix}-{i}",
            **dict(zip(CREDITCARD_FEATURES, map(float, row), strict=True)),
        }
        for i, row in enumerate(values)
    ]


def _topics(kafka_config: KafkaConfig, *names: str) -> None:
    admin = AdminClient(kafka_config.producer_dict())
    for future in admin.create_topics([NewTopic(n, 3, 1) for n in names]).values():
        future.result(15)


def _produce(producer: Producer, topic: str, events: list[dict]) -> None:
    for event in events:
        producer.produce(topic, json.dumps(event).encode(), event["event_id"].encode())
    producer.flush(30)


def _scorer_args(kafka_config: KafkaConfig, source: str, output: str, dead: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.score_events",
        "--runner=FnApiRunner",
        f"--bootstrapServers={kafka_config.bootstrap_servers}",
        "--kafkaConfig=" + ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items()),
        f"--inputTopic={source}",
        f"--outputTopic={output}",
        f"--deadLetterTopic={dead}",
        f"--consumerGroupId=scorer-{uuid.uuid4().hex[:8]}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
    ]


def _serve_new_version(root: Path, url: str) -> tuple[str, int]:
    """Export the tiny model as the newest version under ``root``; wait until ``url`` serves it."""
    versions = [int(p.name) for p in root.glob("*") if p.name.isdigit()] if root.is_dir() else []
    version = max(versions, default=0) + 1
    directory = write_model(str(root), version, center=0.5, weight=2.0, threshold=THRESHOLD)
    client = ModelServerHandler(ModelServerEndpoint(url, "anomaly")).create_client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.verdicts(_events("probe", 1, 0)).model_versions == [version]:
                return directory, version
        except Exception:  # noqa: BLE001 - not serving yet (503) or still loading
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not serve version {version} within 60 s")


@pytest.fixture(scope="module")
def served(stack_env: dict[str, str]) -> tuple[str, int]:
    """The stack's model server serving a fresh version of the tiny model."""
    return _serve_new_version(
        Path(stack_env["KBML_MODEL_ROOT"]), stack_env["KBML_MODEL_SERVER_URL"]
    )


def test_embedded_and_remote_scoring_give_the_same_predictions(
    kafka_config: KafkaConfig, stack_env: dict[str, str], served: tuple[str, int]
) -> None:
    version_dir, version = served
    suffix = uuid.uuid4().hex[:8]
    source, embedded, remote, dead = (f"ms-{n}-{suffix}" for n in ("in", "emb", "rem", "dlq"))
    _topics(kafka_config, source, embedded, remote, dead)
    _produce(Producer(kafka_config.producer_dict()), source, _events("e", EVENTS, 1))
    runs = (
        (embedded, [f"--modelPath={os.path.dirname(version_dir)}"]),  # newest = the served one
        (remote, [f"--modelServerUrl={stack_env['KBML_MODEL_SERVER_URL']}", "--modelName=anomaly"]),
    )
    for output, flags in runs:  # batch: the backlog present at launch, then the pipeline ends
        result = subprocess.run(
            [*_scorer_args(kafka_config, source, output, dead), *flags],
            cwd=REPO,
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()[-3000:]
    by_offset = [
        {(m.partition(), m.offset()): json.loads(m.value()) for m in read_topic(kafka_config, t, 3)}
        for t in (embedded, remote)
    ]
    assert len(by_offset[0]) == EVENTS and by_offset[0].keys() == by_offset[1].keys()
    assert read_topic(kafka_config, dead, 3) == []
    pairs = [(by_offset[0][k], by_offset[1][k]) for k in by_offset[0]]
    assert max(abs(a["score"] - b["score"]) for a, b in pairs) <= 1e-5
    assert all(a["is_anomaly"] == b["is_anomaly"] for a, b in pairs)
    assert 0 < sum(a["is_anomaly"] for a, _ in pairs) < EVENTS
    assert {
        (b["model_version"], b["threshold"], b["event_id"] == a["event_id"]) for a, b in pairs
    } == {(version, THRESHOLD, True)}


@pytest.mark.parametrize("protocol", ["v1-row", "v1-columnar", "v2"])
def test_each_protocol_of_the_real_server_answers_like_the_embedded_model(
    stack_env: dict[str, str], served: tuple[str, int], protocol: str
) -> None:
    version_dir, _ = served
    rows = _events("p", 300, 2)
    rows[7]["V3"] = None  # a null feature: NaN for the model, a dead letter either way
    embedded = SavedModelHandler(version_dir)
    expected = embedded.verdicts(rows, embedded.load_model())
    endpoint = ModelServerEndpoint(stack_env["KBML_MODEL_SERVER_URL"], "anomaly", None, protocol)
    got = ModelServerHandler(endpoint, max_batch_size=64).create_client().verdicts(rows)
    assert got.errors.keys() == expected.errors.keys() == {7}
    scored = [i for i in range(len(rows)) if i != 7]
    assert max(abs(got.scores[i] - expected.scores[i]) for i in scored) <= 1e-5
    assert [got.is_anomaly[i] for i in scored] == [expected.is_anomaly[i] for i in scored]


@pytest.fixture
def private_model_server(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A model server of our own (its own state dir and port): the test restarts it."""
    env = {
        **os.environ,
        "KBML_PYTHON": sys.executable,
        "KBML_STACK_DIR": str(tmp_path / "stack"),
        "KBML_MODEL_SERVER_PORT": str(free_port()),
    }
    url = f"http://127.0.0.1:{env['KBML_MODEL_SERVER_PORT']}"
    stack = ["bash", str(REPO / "scripts" / "stack.sh")]
    write_model(str(tmp_path / "stack/data/models/anomaly"), 1, center=0.5, threshold=THRESHOLD)
    up = subprocess.run([*stack, "up", "model-server"], env=env, capture_output=True, check=False)
    assert up.returncode == 0, up.stderr.decode()[-3000:]
    try:
        yield env, url
    finally:
        subprocess.run([*stack, "down"], env=env, capture_output=True, check=False)


def test_a_model_server_restart_mid_stream_loses_no_event(
    kafka_config: KafkaConfig, private_model_server: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, url = private_model_server
    suffix = uuid.uuid4().hex[:8]
    source, output, dead = (f"msr-{n}-{suffix}" for n in ("in", "out", "dlq"))
    _topics(kafka_config, source, output, dead)
    log = open(tmp_path / "scorer.log", "wb")  # noqa: SIM115 - closed below
    scorer = subprocess.Popen(
        [
            *_scorer_args(kafka_config, source, output, dead),
            "--streaming",
            f"--modelServerUrl={url}",
            "--modelServerRetries=6",
            "--modelServerTimeoutSeconds=5",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    producer = Producer({**kafka_config.producer_dict(), "linger.ms": "5"})
    sent: list[str] = []
    stop = threading.Event()

    def produce_steadily() -> None:
        for i in range(10**6):
            if stop.is_set():
                return
            event = _events(f"r{i}", 1, i)[0]
            _produce(producer, source, [event])
            sent.append(event["event_id"])
            time.sleep(0.01)

    def scored_ids() -> list[str]:
        return [json.loads(m.value())["event_id"] for m in read_topic(kafka_config, output, 3)]

    try:
        _produce(producer, source, [_events("warm-up", 1, 0)[0]])
        deadline = time.monotonic() + 120
        while "warm-up-0" not in scored_ids():
            assert scorer.poll() is None and time.monotonic() < deadline, "scorer not live"
            time.sleep(0.5)
        thread = threading.Thread(target=produce_steadily)
        thread.start()
        time.sleep(2)
        restart = subprocess.run(
            ["bash", str(REPO / "scripts/stack.sh"), "restart", "model-server", "--down-seconds=3"],
            env=env,
            capture_output=True,
            check=False,
        )
        assert restart.returncode == 0, restart.stderr.decode()[-3000:]
        time.sleep(2)
        stop.set()
        thread.join()
        deadline = time.monotonic() + 180
        while not set(sent) <= set(scored_ids()):
            assert scorer.poll() is None, "the scorer exited"
            assert time.monotonic() < deadline, f"{len(set(sent) - set(scored_ids()))} missing"
            time.sleep(1)
        assert read_topic(kafka_config, dead, 3) == []
    finally:
        if scorer.poll() is None:
            os.killpg(scorer.pid, signal.SIGTERM)
            scorer.wait(30)
        log.close()
    text = (tmp_path / "scorer.log").read_text(errors="replace")
    assert "HTTP 503" in text or "did not answer" in text, "the restart was not noticed"
