"""pipelines.mqtt_to_kafka on the real local Mosquitto and Kafka: nothing published is lost.

The bridge runs as ``python -m pipelines.mqtt_to_kafka --streaming`` (FnApiRunner) in its own
process group. Car-sensor messages are published with QoS 1 to ``cars/<car_id>/sensors``; a
publish counts once the broker acknowledged it. Checks:

* every acknowledged message reaches the Kafka topic (keyed by the car id, the MQTT topic in a
  header), and every bad payload reaches the dead-letter topic with its reason and raw bytes;
* the bridge killed with SIGKILL while messages flow, with more published while it is down, and
  started again on the same client id, loses none of them (duplicates allowed: at-least-once;
  their number is printed with ``pytest -s``).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import pytest
from kafka_topics import read_topic
from mqtt_bridge import Bridge, bridge_args, connect_publisher, event, event_ids, publish

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def mqtt_broker(stack_env: dict[str, str]) -> str:
    """``mqtt://127.0.0.1:<port>`` of the local Mosquitto."""
    return stack_env["MQTT_BROKER"]


def test_every_message_reaches_kafka(mqtt_broker, kafka_bootstrap, topic_factory, tmp_path) -> None:
    topic, dead = topic_factory(partitions=3), topic_factory(partitions=1)
    bridge = Bridge(
        bridge_args(mqtt_broker, kafka_bootstrap, topic, dead, f"it-{uuid.uuid4().hex[:8]}"),
        tmp_path / "bridge.log",
    )
    bad = [
        ("cars/car-1/sensors", b"{not json"),
        ("cars/car-2/sensors", b'{"event_id": "x", "car_id": "car-2"}'),  # fields missing
        ("cars/car-3/sensors", b"\xff\xfe"),
    ]
    publisher = connect_publisher(mqtt_broker)
    try:
        bridge.start()
        good = [event(i) for i in range(2000)]
        publish(publisher, good[:1000] + bad + good[1000:])
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            outputs, letters = (
                read_topic(kafka_bootstrap, topic, 3),
                read_topic(kafka_bootstrap, dead, 1),
            )
            if len(outputs) >= len(good) and len(letters) >= len(bad):
                break
            assert time.monotonic() < deadline, (
                f"{len(outputs)}/{len(good)} messages, {len(letters)}/{len(bad)} dead letters "
                f"after {DRAIN_TIMEOUT_S} s\n{bridge.tail()}"
            )
            time.sleep(0.5)
    finally:
        bridge.close()
        publisher.disconnect()
        publisher.loop_stop()
    ids = event_ids(outputs)
    assert set(ids) == {f"e{i}" for i in range(2000)}
    for message in outputs[:50]:
        topic_header = dict(message.headers())["mqtt_topic"].decode()
        assert message.key().decode() == topic_header.split("/")[1]
        assert message.key().decode() == json.loads(message.value())["car_id"]
    letters_by_payload = {
        base64.b64decode(json.loads(m.value())["payload"]): json.loads(m.value()) for m in letters
    }
    assert set(letters_by_payload) == {payload for _, payload in bad}
    for topic_name, payload in bad:
        letter = letters_by_payload[payload]
        assert letter["topic"] == topic_name
        assert letter["error_type"] and letter["error_message"]
    assert letters_by_payload[b"{not json"]["error_type"] == "InvalidJson"
    assert letters_by_payload[b"\xff\xfe"]["error_type"] == "NotUtf8"


def test_sigkill_and_restart_lose_nothing(
    mqtt_broker, kafka_bootstrap, topic_factory, tmp_path
) -> None:
    topic, dead = topic_factory(partitions=3), topic_factory(partitions=1)
    client_id = f"it-kill-{uuid.uuid4().hex[:8]}"
    bridge = Bridge(
        bridge_args(mqtt_broker, kafka_bootstrap, topic, dead, client_id), tmp_path / "bridge.log"
    )
    publisher = connect_publisher(mqtt_broker)
    total = 6000
    published = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:  # ~1,500 msg/s in slices, each acknowledged by the broker
        try:
            for start in range(0, total, 150):
                publish(publisher, [event(i) for i in range(start, min(start + 150, total))])
                time.sleep(0.1)
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)
        finally:
            published.set()

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        bridge.start()
        feeder.start()
        time.sleep(1.5)
        bridge.kill()  # SIGKILL mid-stream: records in flight, acks not sent
        time.sleep(1.5)  # messages published now wait in the bridge's session
        bridge.start()
        time.sleep(1.0)
        bridge.kill()  # a second kill, right after it resumed the session
        bridge.start()
        assert published.wait(60), "the feed did not finish"
        assert not errors, errors
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            ids = event_ids(read_topic(kafka_bootstrap, topic, 3))
            if len(ids) >= total:
                break
            assert time.monotonic() < deadline, (
                f"{len(ids)} of {total} events in Kafka after {DRAIN_TIMEOUT_S} s\n{bridge.tail()}"
            )
            time.sleep(0.5)
    finally:
        bridge.close()
        publisher.disconnect()
        publisher.loop_stop()
    assert set(ids) == {f"e{i}" for i in range(total)}
    duplicates = sum(ids.values()) - len(ids)
    print(f"\nSIGKILL x2: {total} published, all in Kafka, {duplicates} duplicates")
    assert read_topic(kafka_bootstrap, dead, 1) == []
