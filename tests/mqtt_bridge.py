"""Helpers of the MQTT bridge tests: the bridge in a subprocess, a QoS 1 publisher, car events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt

from transforms.mqtt import MqttConfig, end_session

__all__ = ["Bridge", "bridge_args", "connect_publisher", "event", "publish", "event_ids"]

REPO = Path(__file__).resolve().parent.parent
LIVE_TIMEOUT_S = 180  # start-up is ~3-15 s; generous for a loaded shared machine


class Bridge:
    """The bridge in a subprocess (own process group): ``start()`` returns once it subscribed,
    ``close()`` stops it and ends its MQTT session (else the broker keeps queuing for it)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self._args = args
        self._log = log
        self.process: subprocess.Popen | None = None
        options = dict(arg[2:].split("=", 1) for arg in args if "=" in arg)
        self._session = MqttConfig.from_url(
            options["mqttBroker"], client_id=options["mqttClientId"]
        )

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
            problem = None
            if self.process.poll() is not None:
                problem = "bridge exited"
            elif time.monotonic() > deadline:
                problem = f"bridge not live after {LIVE_TIMEOUT_S} s"
            if problem:
                self.kill()
                raise AssertionError(f"{problem}:\n{self.tail()}")
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        end_session(self._session)

    def tail(self) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-30:])


def bridge_args(broker: str, kafka_bootstrap: str, topic: str, dead: str, client_id: str):
    return [
        "--runner=FnApiRunner",
        "--streaming",
        f"--mqttBroker={broker}",
        "--mqttTopicFilter=cars/+/sensors",
        f"--mqttClientId={client_id}",
        "--mqttSessionExpirySeconds=600",  # a backstop: close() ends the session
        f"--bootstrapServers={kafka_bootstrap}",
        f"--kafkaConfig={os.environ['KAFKA_CONFIG']}",
        f"--outputTopic={topic}",
        "--messageKey=topic:1",
        f"--deadLetterTopic={dead}",
        "--schemaPath=transforms/decoding/schemas/car_sensor.json",
        "--progressSeconds=0",
    ]


def connect_publisher(broker: str) -> mqtt.Client:
    host, port = broker.removeprefix("mqtt://").split(":")
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=5
    )
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    return client


def event(index: int) -> tuple[str, bytes]:
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


def publish(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait until the broker acknowledged every one."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(30)
        assert info.is_published(), f"publish rc={info.rc}"


def event_ids(messages) -> Counter:
    return Counter(json.loads(m.value())["event_id"] for m in messages)
