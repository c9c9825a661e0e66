"""pipelines.score_events on the real local broker, streaming on the FnApiRunner in a subprocess.

The model is the trainer's (``pipelines.train`` on a small synthetic set, ~25 s), so the fidelity
check compares the trainer's own batch evaluation with the stream. One pipeline run serves the
module (start-up ~15 s): the checks run in file order, the hot reload last because it adds a
version under ``modelPath``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from scorer_process import Scorer, make_event
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from pipelines.demo.synthetic_data import creditcard_transactions
from pipelines.train import TrainResult, TrainSettings, train
from transforms.decoding.schema import bundled_schema
from transforms.kafka.config import KafkaConfig

pytestmark = pytest.mark.integration


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
        event = make_event(f"live-{i}", 1.0, 100 + i)
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
    missing = make_event("no-amount", 1.0, 300)
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
            event = make_event(f"reload-{i}", 1.0, 1000 + i)
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
