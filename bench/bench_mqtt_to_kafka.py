"""Benchmark: the MQTT → Kafka bridge vs a raw paho → confluent-kafka loop, same run.

Both drain the same backlog the same way: ``--messages`` car-sensor JSON events (~400 bytes)
are published with QoS 1 to ``cars/<car_id>/sensors`` while the subscriber's persistent session
is offline; then the subscriber connects and the clock runs until every event is in a fresh
3-partition Kafka topic (and, for the bridge, every PUBACK sent after its bundle was durable).

* baseline — one paho client (``manual_ack``) whose network thread hands messages to a loop
  that produces them (idempotent, ``acks=all``, keyed by car id) and, every 1,000 messages or
  50 ms, flushes the producer and then acks that batch: the same at-least-once contract;
* bridge — ``python -m pipelines.mqtt_to_kafka --runner=FnApiRunner --streaming`` in a
  subprocess; timed from its "connected" log line (the CONNACK; start-up excluded) until the
  topic holds every event.

Prints msgs/s of each, the ratio, and medians over ``--repeats``. Uses the local stack
(``scripts/stack.sh up``), whose Mosquitto has no in-flight or queue limits.

    .venv/bin/python bench/bench_mqtt_to_kafka.py                     # 50k events x 3, ~2 min
    .venv/bin/python bench/bench_mqtt_to_kafka.py --messages 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.demo import synthetic_data
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.writer import PRODUCER_DEFAULTS
from transforms.mqtt.config import MqttConfig
from transforms.mqtt.session import end_session

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 3
FILTER = "cars/+/sensors"
_ACK_EVERY = 1000
_ACK_WAIT_S = 0.05


def _stack_env() -> dict[str, str]:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "stack.sh"), "env", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def _events(count: int) -> list[tuple[str, bytes]]:
    rows = synthetic_data.car_sensor_events(count, seed=7)
    return [
        (f"cars/{m.key.decode()}/sensors", m.value)
        for m in synthetic_data.encode_messages(rows, key_field="car_id")
    ]


def _queue_for(config: MqttConfig, events: list[tuple[str, bytes]]) -> None:
    """Create ``config``'s session (subscribed, then offline) and publish ``events`` into it."""
    client = config.new_client()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(FILTER, qos=1)
    config.connect(client)
    client.loop_start()
    assert subscribed.wait(60), "no SUBACK within 60 s"
    client.disconnect()
    client.loop_stop()
    publisher = MqttConfig(config.host, config.port, client_id=f"pub-{uuid.uuid4().hex}")
    pub = publisher.new_client()
    pub.max_queued_messages_set(0)
    publisher.connect(pub)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in events]
    for info in infos:
        info.wait_for_publish(60)
        assert info.is_published()
    pub.disconnect()
    pub.loop_stop()


def _topic(kafka: KafkaConfig) -> str:
    name = f"bench-mqtt-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka.producer_dict())
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(10)
    return name


def _count(consumer: confluent_kafka.Consumer, topic: str) -> int:
    return sum(
        consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=5)[1]
        for p in range(PARTITIONS)
    )


def raw_loop(config: MqttConfig, kafka: KafkaConfig, topic: str, count: int) -> float:
    """The baseline (see the module docstring). Returns seconds from connect to the last ack."""
    received: queue.SimpleQueue = queue.SimpleQueue()
    client = config.new_client()
    client.on_message = lambda _c, _u, message: received.put(message)
    client.on_connect = lambda c, *_: c.subscribe(FILTER, qos=1)
    producer = confluent_kafka.Producer({**PRODUCER_DEFAULTS, **kafka.producer_dict()})
    started = time.perf_counter()
    config.connect(client)
    client.loop_start()
    done = 0
    batch = []
    deadline = time.monotonic() + 600
    while done < count and time.monotonic() < deadline:
        try:
            message = received.get(timeout=_ACK_WAIT_S)
            key = message.topic.split("/")[1].encode()
            producer.produce(topic, message.payload, key)
            batch.append(message)
            if len(batch) < _ACK_EVERY:
                continue
        except queue.Empty:
            if not batch:
                continue
        assert producer.flush(30) == 0, "undelivered messages"
        for message in batch:
            client.ack(message.mid, message.qos)
        done += len(batch)
        batch = []
    seconds = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    assert done == count, f"raw loop got {done} of {count}"
    return seconds


def bridge(env: dict[str, str], config: MqttConfig, topic: str, count: int, log: Path) -> float:
    """The pipeline in a subprocess; seconds from its subscription until Kafka holds ``count``."""
    args = [
        sys.executable,
        "-m",
        "pipelines.mqtt_to_kafka",
        "--runner=FnApiRunner",
        "--streaming",
        f"--mqttBroker={env['MQTT_BROKER']}",
        f"--mqttTopicFilter={FILTER}",
        f"--mqttClientId={config.client_id}",
        f"--bootstrapServers={env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"--kafkaConfig={env['KAFKA_CONFIG']}",
        f"--outputTopic={topic}",
        "--messageKey=topic:1",
        "--progressSeconds=0",
    ]
    kafka = KafkaConfig(env["KAFKA_BOOTSTRAP_SERVERS"]).with_extra(LOCAL_BROKER_SETTINGS)
    consumer = confluent_kafka.Consumer(kafka.consumer_dict(f"bench-{uuid.uuid4().hex}"))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while b": connected (connection" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        started = time.perf_counter()
        while _count(consumer, topic) < count:
            assert process.poll() is None and time.monotonic() < deadline + 600, log.read_text()
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = _stack_env()
    host, port = env["MQTT_BROKER"].removeprefix("mqtt://").split(":")
    kafka = KafkaConfig(env["KAFKA_BOOTSTRAP_SERVERS"]).with_extra(LOCAL_BROKER_SETTINGS)
    events = _events(args.messages)
    print(f"{args.messages} events of ~{sum(len(p) for _, p in events) // len(events)} bytes")
    print(f"load before: {os.getloadavg()}")
    raw_rates, bridge_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, rates in (("raw", raw_rates), ("bridge", bridge_rates)):
                config = MqttConfig(host, int(port), client_id=f"bench-{uuid.uuid4().hex[:12]}")
                _queue_for(config, events)
                topic = _topic(kafka)
                if name == "raw":
                    seconds = raw_loop(config, kafka, topic, args.messages)
                else:
                    log = Path(tmp) / f"bridge-{repeat}.log"
                    seconds = bridge(env, config, topic, args.messages, log)
                end_session(config)  # else the broker keeps queuing for it
                rates.append(args.messages / seconds)
                print(f"repeat {repeat + 1} {name:>6}: {rates[-1]:>9,.0f} msgs/s ({seconds:.2f} s)")
            print(f"repeat {repeat + 1}  ratio: {bridge_rates[-1] / raw_rates[-1]:.2f}")
    raw, bridged = statistics.median(raw_rates), statistics.median(bridge_rates)
    print(
        f"median raw loop {raw:,.0f} msgs/s, bridge {bridged:,.0f} msgs/s, "
        f"ratio {bridged / raw:.2f} (load after: {os.getloadavg()})"
    )


if __name__ == "__main__":
    main()
