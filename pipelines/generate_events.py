"""Produce demo events to Kafka: synthetic credit-card or car-sensor rows, or a real creditcard.csv.

Rows come from :mod:`pipelines.demo.synthetic_data` (seeded, reproducible) and are produced as
compact
JSON keyed by ``card_id`` / ``car_id``, as fast as possible or at ``--rate`` messages per second,
with a progress bar. ``--malformed F`` corrupts that fraction of the messages (invalid JSON, wrong
types, missing fields, non-UTF-8) so the pipelines' dead-letter paths have something to catch.
The producer uses the same settings as the pipelines' ``WriteToKafka`` (idempotent, ``acks=all``,
Java-compatible partitioner); the topic is created with ``--partitions`` if it does not exist.

Usage::

    python -m pipelines.generate_events --kind creditcard --bootstrapServers 127.0.0.1:9092 \\
        --topic transactions --count 100000 --rate 1000 --seed 7 --malformed 0.01
    python -m pipelines.generate_events --kind creditcard --csv creditcard.csv ...

With ``--mqttBroker`` the events are published to MQTT instead (QoS 1, each acknowledged by the
broker), one topic per key: ``--mqttTopic`` (default ``cars/{key}/sensors``) with ``{key}``
replaced by the car or card id — connected cars reporting over MQTT::

    python -m pipelines.generate_events --kind car_sensor --mqttBroker mqtt://127.0.0.1:1883 \\
        --count 10000 --rate 500
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from pipelines.common.options import (
    KAFKA_CONNECTION,
    MQTT_CONNECTION,
    Option,
    OptionError,
    options_class,
    validate,
)
from pipelines.demo import synthetic_data
from transforms.kafka.config import KafkaConfig, KafkaConfigError
from transforms.kafka.writer import PRODUCER_DEFAULTS
from transforms.mqtt.config import MqttConfig, MqttConfigError

__all__ = [
    "OPTIONS",
    "GenerateEventsOptions",
    "ProduceSummary",
    "messages_for",
    "ensure_topic",
    "produce_messages",
    "publish_messages",
    "run",
]

_LOGGER = logging.getLogger(__name__)

_KEYS = {"creditcard": "card_id", "car_sensor": "car_id"}
_PROGRESS_EVERY = 256

OPTIONS: tuple[Option, ...] = (
    dataclasses.replace(KAFKA_CONNECTION[0], required=False),  # not with --mqttBroker
    *KAFKA_CONNECTION[1:],
    *MQTT_CONNECTION,
    Option("mqttTopic", "MQTT topic", "With --mqttBroker: topic of each event, {key} replaced "
           "by its car_id/card_id.", default="cars/{key}/sensors",
           regexes=(r"[^#+\x00]+",), example="cars/{key}/sensors"),
    Option("kind", "Event kind", "creditcard or car_sensor.", required=True,
           choices=tuple(_KEYS), example="creditcard"),
    Option("topic", "Topic", "Kafka topic to produce to (required without --mqttBroker).",
           regexes=(r"[A-Za-z0-9._\-]{1,249}",), example="transactions",
           param_type="KAFKA_TOPIC"),
    Option("count", "Count", "Number of events (with --csv: at most this many rows; default "
           "all).", type=int, regexes=(r"[0-9]{1,10}",), example="100000"),
    Option("rate", "Rate", "Messages per second; default as fast as possible.", type=float,
           regexes=(r"[0-9]*\.?[0-9]+",), example="1000"),
    Option("seed", "Seed", "Seed of the generator (same seed, same events).", type=int,
           default=0, regexes=(r"[0-9]{1,9}",), example="7"),
    Option("fraudRate", "Fraud rate", "Share of frauds (creditcard).", type=float,
           default=synthetic_data.DEFAULT_FRAUD_RATE, regexes=(r"0?\.[0-9]+|[01]",),
           example="0.00172"),
    Option("anomalyRate", "Anomaly rate", "Share of anomalous readings (car_sensor).",
           type=float, default=0.005, regexes=(r"0?\.[0-9]+|[01]",), example="0.005"),
    Option("cars", "Cars", "Number of simulated cars (car_sensor).", type=int, default=20,
           regexes=(r"[1-9][0-9]{0,6}",), example="20"),
    Option("malformed", "Malformed fraction", "Fraction of messages to corrupt.", type=float,
           default=0.0, regexes=(r"0?\.[0-9]+|[01]",), example="0.01"),
    Option("csv", "Kaggle CSV", "Produce the rows of a real creditcard.csv instead of "
           "synthetic ones (--kind creditcard).", example="/data/creditcard.csv"),
    Option("partitions", "Partitions", "Partitions of the topic if it has to be created.",
           type=int, default=3, regexes=(r"[1-9][0-9]{0,4}",), example="3"),
)  # fmt: skip

GenerateEventsOptions = options_class("GenerateEventsOptions", OPTIONS)


@dataclasses.dataclass
class ProduceSummary:
    """What was produced: delivered messages, corruptions by kind, delivery failures."""

    delivered: int = 0
    failed: int = 0
    malformed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def messages_for(values: Mapping[str, Any]) -> Iterator[synthetic_data.Message]:
    """The messages the options describe (rows encoded, some corrupted)."""
    kind = values["kind"]
    count = values.get("count")
    if values.get("csv"):
        if kind != "creditcard":
            raise OptionError("--csv needs --kind creditcard")
        rows: Iterable[Mapping[str, Any]] = synthetic_data.read_creditcard_csv(values["csv"])
        if count is not None:
            rows = itertools.islice(rows, count)
    elif count is None:
        raise OptionError("--count is required unless --csv is given")
    elif kind == "creditcard":
        rows = synthetic_data.creditcard_transactions(
            count, seed=values["seed"], fraud_rate=values["fraudRate"]
        )
    else:
        rows = synthetic_data.car_sensor_events(
            count, seed=values["seed"], cars=values["cars"], anomaly_rate=values["anomalyRate"]
        )
    return synthetic_data.encode_messages(
        rows, key_field=_KEYS[kind], malformed_fraction=values["malformed"], seed=values["seed"]
    )


def ensure_topic(config: KafkaConfig, topic: str, partitions: int, timeout: float = 10.0) -> None:
    """Create ``topic`` (replication factor 1 locally is the broker's choice) unless it exists."""
    admin = AdminClient(config.producer_dict())  # an admin client is a producer handle
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic]
    try:
        future.result(timeout)
        _LOGGER.info("Created topic %s with %d partitions", topic, partitions)
    except KafkaException as err:
        if "TOPIC_ALREADY_EXISTS" not in str(err):
            raise


def produce_messages(
    config: KafkaConfig,
    topic: str,
    messages: Iterable[synthetic_data.Message],
    *,
    total: int | None = None,
    rate: float | None = None,
    progress: bool = True,
) -> ProduceSummary:
    """Produce ``messages`` (at ``rate`` per second if given) and wait for every delivery.

    Raises:
      RuntimeError: some messages were not delivered (the summary is in the message).
    """
    producer = Producer({**PRODUCER_DEFAULTS, "linger.ms": "5", **config.producer_dict()})
    summary = ProduceSummary()

    def on_delivery(error: Any, _message: Any) -> None:
        if error is None:
            summary.delivered += 1
        else:
            summary.failed += 1
            _LOGGER.warning("delivery to %s failed: %s", topic, error)

    start = time.monotonic()
    bar = tqdm(total=total, unit="msg", disable=not progress, desc=topic)
    produced = 0
    for index, message in enumerate(messages):
        if rate:
            ahead = start + index / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, message.value, message.key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        produced += 1
        if message.malformed:
            summary.malformed[message.malformed] += 1
        if index % _PROGRESS_EVERY == 0:  # per-message bar updates would halve the rate
            producer.poll(0)
            bar.update(index + 1 - bar.n)
    remaining = producer.flush(60)
    bar.update(produced - bar.n)
    bar.close()
    summary.seconds = time.monotonic() - start
    if remaining or summary.failed:
        raise RuntimeError(
            f"{summary.failed} messages failed and {remaining} were still queued after 60 s "
            f"({summary.delivered} delivered to {topic})"
        )
    return summary


def publish_messages(
    config: MqttConfig,
    topic_template: str,
    messages: Iterable[synthetic_data.Message],
    *,
    total: int | None = None,
    rate: float | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> ProduceSummary:
    """Publish ``messages`` with QoS 1 to ``topic_template.format(key=...)``, wait for every ack.

    Raises:
      RuntimeError: the broker did not acknowledge every message within ``timeout_s``.
    """
    client = config.new_client()
    client.max_queued_messages_set(0)
    config.connect(client)
    client.loop_start()
    summary = ProduceSummary()
    pending = []
    start = time.monotonic()
    bar = tqdm(total=total, unit="msg", disable=not progress, desc=topic_template)
    try:
        for index, message in enumerate(messages):
            if rate:
                ahead = start + index / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            key = (message.key or b"").decode("utf-8", "replace") or "unkeyed"
            pending.append(client.publish(topic_template.format(key=key), message.value, qos=1))
            if message.malformed:
                summary.malformed[message.malformed] += 1
            if index % _PROGRESS_EVERY == 0:
                bar.update(index + 1 - bar.n)
        deadline = time.monotonic() + timeout_s
        for info in pending:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if info.is_published():
                summary.delivered += 1
            else:
                summary.failed += 1
        bar.update(len(pending) - bar.n)
    finally:
        bar.close()
        client.disconnect()
        client.loop_stop()
    summary.seconds = time.monotonic() - start
    if summary.failed:
        raise RuntimeError(
            f"{summary.failed} of {len(pending)} messages were not acknowledged by "
            f"{config.url} within {timeout_s:g} s"
        )
    return summary


def run(argv: Sequence[str] | None = None) -> ProduceSummary:
    """Parse the options, create the topic if needed and produce (or publish to MQTT)."""
    opts = GenerateEventsOptions(list(argv) if argv is not None else None)
    values = validate(opts, OPTIONS)
    if values.get("mqttBroker"):
        return _publish(values)
    for name in ("bootstrapServers", "topic"):
        if not values.get(name):
            raise OptionError(f"--{name} is required (unless --mqttBroker publishes to MQTT)")
    try:
        config = KafkaConfig.from_options(values)
    except KafkaConfigError as err:
        raise OptionError(str(err)) from err
    messages = messages_for(values)
    ensure_topic(config, values["topic"], values["partitions"])
    summary = produce_messages(
        config, values["topic"], messages, total=values.get("count"), rate=values.get("rate")
    )
    _LOGGER.info(
        "Produced %d %s events to %s in %.1f s (%.0f msg/s); malformed: %s",
        summary.delivered,
        values["kind"],
        values["topic"],
        summary.seconds,
        summary.rate,
        dict(summary.malformed) or "none",
    )
    return summary


def _publish(values: Mapping[str, Any]) -> ProduceSummary:
    try:
        config = MqttConfig.from_options(
            values, client_id=f"generate-events-{uuid.uuid4().hex[:12]}", session_expiry_s=60
        )
    except MqttConfigError as err:
        raise OptionError(str(err)) from err
    summary = publish_messages(
        config,
        values["mqttTopic"],
        messages_for(values),
        total=values.get("count"),
        rate=values.get("rate"),
    )
    _LOGGER.info(
        "Published %d %s events to %s (%s) in %.1f s (%.0f msg/s); malformed: %s",
        summary.delivered,
        values["kind"],
        config.url,
        values["mqttTopic"],
        summary.seconds,
        summary.rate,
        dict(summary.malformed) or "none",
    )
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
