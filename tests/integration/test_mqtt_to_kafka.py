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
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from kafka_topics import read_topic

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LIVE_TIMEOUT_S = 90
DRAIN_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def mqtt_broker(stack_env: dict[str, str]) -> str:
    """``mqtt://127.0.0.1:<port>`` of the local Mosquitto."""
    return stack_env["MQTT_BROKER"]


class _Bridge:
    """The bridge in a subprocess (own process group); ``live()`` waits until it subscribed."""

    def __init__(self, args: list[str], log: Path) -> None:
        self._args = args
        self._log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self._log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.mqtt_to_kafka", *self._args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._live_marker = self._log.read_bytes().count(b"subscribed to") + 1
        deadline = time.monotonic() + LIVE_TIMEOUT_S
        while self._log.read_bytes().count(b"subscribed to") < self._live_marker:
            assert self.process.poll() is None, f"bridge exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"bridge not live:\n{self.tail()}"
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def tail(self) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-30:])


def _bridge_args(broker: str, kafka_bootstrap: str, topic: str, dead: str, client_id: str):
    return [
        "--runner=FnApiRunner",
        "--streaming",
        f"--mqttBroker={broker}",
        "--mqttTopicFilter=cars/+/sensors",
        f"--mqttClientId={client_id}",
        f"--bootstrapServers={kafka_bootstrap}",
        f"--kafkaConfig={os.environ['KAFKA_CONFIG']}",
        f"--outputTopic={topic}",
        "--messageKey=topic:1",
        f"--deadLetterTopic={dead}",
        "--schemaPath=transforms/decoding/schemas/car_sensor.json",
        "--progressSeconds=0",
    ]


def _publisher(broker: str) -> mqtt.Client:
    host, port = broker.removeprefix("mqtt://").split(":")
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=5
    )
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    return client


def _event(index: int) -> tuple[str, bytes]:
    car = f"car-{index % 7}"
    row = {
        "event_id": f"e{index}",
        "car_id": car,
        "event_time": "2026-12-04T08:00:00Z",
        **{name: 1.0 for name in _SENSOR_FIELDS},
    }
    return f"cars/{car}/sensors", json.dumps(row).encode()


def _sensor_fields() -> list[str]:
    path = REPO / "transforms/decoding/schemas/car_sensor.json"
    schema = json.loads(path.read_text())["fields"]
    required = [f for f in schema if f.get("mode") == "REQUIRED"]
    names = {"event_id", "car_id", "event_time"}
    unknown = [f["name"] for f in required if f["name"] not in names and f["type"] != "FLOAT"]
    assert not unknown, f"the test's event builder does not know {unknown}"
    return [f["name"] for f in required if f["type"] == "FLOAT"]


_SENSOR_FIELDS = _sensor_fields()


def _publish(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait until the broker acknowledged every one."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published(), f"publish rc={info.rc}"


def _event_ids(messages) -> Counter:
    return Counter(json.loads(m.value())["event_id"] for m in messages)


def test_every_message_reaches_kafka(mqtt_broker, kafka_bootstrap, topic_factory, tmp_path) -> None:
    topic, dead = topic_factory(partitions=3), topic_factory(partitions=1)
    bridge = _Bridge(
        _bridge_args(mqtt_broker, kafka_bootstrap, topic, dead, f"it-{uuid.uuid4().hex[:8]}"),
        tmp_path / "bridge.log",
    )
    bad = [
        ("cars/car-1/sensors", b"{not json"),
        ("cars/car-2/sensors", b'{"event_id": "x", "car_id": "car-2"}'),  # fields missing
        ("cars/car-3/sensors", b"\xff\xfe"),
    ]
    publisher = _publisher(mqtt_broker)
    bridge.start()
    try:
        good = [_event(i) for i in range(2000)]
        _publish(publisher, good[:1000] + bad + good[1000:])
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
        bridge.kill(signal.SIGTERM)
        publisher.disconnect()
        publisher.loop_stop()
    ids = _event_ids(outputs)
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
    bridge = _Bridge(
        _bridge_args(mqtt_broker, kafka_bootstrap, topic, dead, client_id), tmp_path / "bridge.log"
    )
    publisher = _publisher(mqtt_broker)
    total = 6000
    published = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:  # ~1,500 msg/s in slices, each acknowledged by the broker
        try:
            for start in range(0, total, 150):
                _publish(publisher, [_event(i) for i in range(start, min(start + 150, total))])
                time.sleep(0.1)
        except BaseException as err:  # noqa: BLE001 - reported by the test thread
            errors.append(err)
        finally:
            published.set()

    bridge.start()
    feeder = threading.Thread(target=feed, daemon=True)
    try:
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
            ids = _event_ids(read_topic(kafka_bootstrap, topic, 3))
            if len(ids) >= total:
                break
            assert time.monotonic() < deadline, (
                f"{len(ids)} of {total} events in Kafka after {DRAIN_TIMEOUT_S} s\n{bridge.tail()}"
            )
            time.sleep(0.5)
    finally:
        bridge.kill(signal.SIGTERM)
        publisher.disconnect()
        publisher.loop_stop()
    assert set(ids) == {f"e{i}" for i in range(total)}
    duplicates = sum(ids.values()) - len(ids)
    print(f"\nSIGKILL x2: {total} published, all in Kafka, {duplicates} duplicates")
    assert read_topic(kafka_bootstrap, dead, 1) == []
