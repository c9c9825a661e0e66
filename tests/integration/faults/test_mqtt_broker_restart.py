"""The MQTT bridge through a restart of its broker: nothing published with QoS 1 is lost.

A Mosquitto of this test only (``scripts/stack.sh`` with a private state dir and port, so the
shared stack is untouched) feeds ``pipelines.mqtt_to_kafka`` (streaming, FnApiRunner). Half the
events are published, the broker is restarted (SIGTERM: it saves its sessions and queued
messages, then comes back on the same data and port) while the bridge holds received but not yet
acknowledged messages, and the other half is published. paho reconnects by itself; the broker
resends what was unacknowledged; every event must end in Kafka (duplicates allowed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka_topics import read_topic
from mqtt_bridge import Bridge, bridge_args, connect_publisher, event, event_ids, publish
from ports import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "scripts" / "stack.sh"
TOTAL = 4000
DRAIN_TIMEOUT_S = 90


class _PrivateMqtt:
    """A Mosquitto of this test only, driven through ``scripts/stack.sh``."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "KBML_PYTHON": sys.executable,
            "KBML_STACK_DIR": str(state_dir),
            "KBML_MQTT_PORT": str(self.port),
        }
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def stack(self, *args: str) -> None:
        result = subprocess.run(
            ["bash", str(STACK), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr


def test_broker_restart_loses_nothing(kafka_bootstrap, topic_factory, tmp_path) -> None:
    broker = _PrivateMqtt(tmp_path / "stack")
    broker.stack("up", "mqtt")
    topic, dead = topic_factory(partitions=3), topic_factory(partitions=1)
    bridge = Bridge(
        bridge_args(broker.url, kafka_bootstrap, topic, dead, f"it-restart-{uuid.uuid4().hex[:8]}"),
        tmp_path / "bridge.log",
    )
    try:
        bridge.start()
        publisher = connect_publisher(broker.url)
        publish(publisher, [event(i) for i in range(TOTAL // 2)])
        publisher.disconnect()
        publisher.loop_stop()
        broker.stack("restart", "mqtt", "--down-seconds", "2")
        publisher = connect_publisher(broker.url)
        publish(publisher, [event(i) for i in range(TOTAL // 2, TOTAL)])
        publisher.disconnect()
        publisher.loop_stop()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len(ids := event_ids(read_topic(kafka_bootstrap, topic, 3))) < TOTAL:
            assert bridge.process.poll() is None, f"the bridge exited:\n{bridge.tail()}"
            assert time.monotonic() < deadline, (
                f"{len(ids)} of {TOTAL} events in Kafka after the broker restart\n{bridge.tail()}"
            )
            time.sleep(0.5)
    finally:
        bridge.close()
        broker.stack("down", "mqtt")
    assert set(ids) == {f"e{i}" for i in range(TOTAL)}
    assert (
        b"reconnecting, unacked messages will be resent" in (tmp_path / "bridge.log").read_bytes()
    )
    print(
        f"\nbroker restart: {TOTAL} published, all in Kafka, {sum(ids.values()) - TOTAL} duplicates"
    )
