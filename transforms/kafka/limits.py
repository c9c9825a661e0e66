"""How big a record a producer can write to a topic: the smaller of two limits, minus framing.

Kafka refuses a record twice over: librdkafka's ``produce()`` raises ``MSG_SIZE_TOO_LARGE`` when
key + value + headers (+ 36 bytes) exceed the producer's ``message.max.bytes`` (default
1000000), and the broker rejects a record batch larger than the topic's ``max.message.bytes``
(Kafka's default 1048588; the batch adds 61 bytes of header and ~11 of record framing to a
single record). Either way the write fails and with it the bundle, so sinks check each record
against :class:`TopicRecordLimit` first (``transforms.size_limits``).

The limit is ``min(message.max.bytes, max.message.bytes) - RECORD_OVERHEAD_BYTES`` of key +
value + headers. The topic's setting is read once per process with
``AdminClient.describe_configs`` when a sink is set up; if it cannot be read the producer's
limit is used, with a warning.

Usage::

    limit = TopicRecordLimit(config, "predictions")
    if record_bytes(key, value) > limit.resolve():      # 999488 on a default cluster
        ...
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from transforms.kafka.config import KafkaConfig

__all__ = [
    "TopicRecordLimit",
    "record_bytes",
    "producer_max_bytes",
    "RECORD_OVERHEAD_BYTES",
    "PRODUCER_MAX_BYTES_DEFAULT",
]

_LOGGER = logging.getLogger(__name__)

#: librdkafka's ``message.max.bytes`` default.
PRODUCER_MAX_BYTES_DEFAULT = 1_000_000
#: Room left for what surrounds key, value and headers: the record batch header (61 bytes),
#: the record's varints (<= 30), librdkafka's own allowance (36). Measured against the local
#: broker: 72 bytes for a one-record batch. 512 leaves a safe margin.
RECORD_OVERHEAD_BYTES = 512

AdminFactory = Callable[[dict[str, Any]], Any]

_RESOLVED: dict[TopicRecordLimit, int] = {}
_RESOLVED_LOCK = threading.Lock()


def _new_admin(settings: dict[str, Any]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings)


def record_bytes(
    key: bytes | str | None,
    value: bytes | str | None,
    headers: Iterable[tuple[str, bytes | str | None]] | None = None,
) -> int:
    """Size of a record as the limits count it: key + value + header names and values.

    ``str`` parts count their UTF-8 length (what the producer sends).
    """
    size = _length(key) + _length(value)
    for name, header in headers or ():
        size += _length(name) + _length(header)
    return size


def _length(part: bytes | str | None) -> int:
    if part is None:
        return 0
    if isinstance(part, str):
        return len(part.encode("utf-8"))
    return len(part)


def producer_max_bytes(config: KafkaConfig) -> int:
    """The producer's ``message.max.bytes``: ``config.extra``'s, else librdkafka's default."""
    return int(config.extra.get("message.max.bytes", PRODUCER_MAX_BYTES_DEFAULT))


@dataclasses.dataclass(frozen=True)
class TopicRecordLimit:
    """The largest key + value + headers (bytes) a producer with ``config`` can write to ``topic``.

    Args:
        config: the cluster; ``message.max.bytes`` in ``config.extra`` is the producer limit.
        topic: the topic whose ``max.message.bytes`` applies.
        overhead_bytes: subtracted for batch and record framing.
        timeout_s: bound on the ``describe_configs`` call.
        admin_factory: builds the admin client from a librdkafka dict (tests pass a fake).
    """

    config: KafkaConfig
    topic: str
    overhead_bytes: int = RECORD_OVERHEAD_BYTES
    timeout_s: float = 10.0
    admin_factory: AdminFactory | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not self.topic:
            raise ValueError("TopicRecordLimit needs a topic name")
        if self.overhead_bytes < 0 or self.timeout_s <= 0:
            raise ValueError("overhead_bytes must be >= 0 and timeout_s > 0")

    def describe(self) -> str:
        return f"Kafka topic {self.topic!r}"

    def resolve(self) -> int:
        """The limit in bytes; asks the broker on the first call in this process only."""
        with _RESOLVED_LOCK:
            if self in _RESOLVED:
                return _RESOLVED[self]
        limit = self._read()
        with _RESOLVED_LOCK:
            return _RESOLVED.setdefault(self, limit)

    def _read(self) -> int:
        producer = producer_max_bytes(self.config)
        topic = self._topic_max_bytes()
        if topic is None:
            limit = producer
        else:
            limit = min(producer, topic)
            if producer > topic:
                _LOGGER.warning(
                    "Kafka topic %s accepts record batches up to max.message.bytes=%d but the "
                    "producer's message.max.bytes is %d: batches between the two are rejected "
                    "whole; set message.max.bytes (and batch.size) to at most %d",
                    self.topic,
                    topic,
                    producer,
                    topic,
                )
        result = limit - self.overhead_bytes
        if result <= 0:
            raise ValueError(
                f"Kafka topic {self.topic!r}: a limit of {limit} bytes leaves no room for a "
                f"record after {self.overhead_bytes} bytes of framing"
            )
        _LOGGER.info(
            "Kafka topic %s: records up to %d bytes (producer message.max.bytes=%d, topic "
            "max.message.bytes=%s, minus %d bytes of framing)",
            self.topic,
            result,
            producer,
            "unknown" if topic is None else topic,
            self.overhead_bytes,
        )
        return result

    def _topic_max_bytes(self) -> int | None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        factory = self.admin_factory or _new_admin
        try:
            admin = factory({**self.config.producer_dict(), "logger": _LOGGER})
            resource = ConfigResource(ResourceType.TOPIC, self.topic)
            futures = admin.describe_configs([resource], request_timeout=self.timeout_s)
            entries = futures[resource].result(timeout=self.timeout_s + 1)
            return int(entries["max.message.bytes"].value)
        except Exception as err:  # noqa: BLE001 - any failure means "unknown": fall back
            _LOGGER.warning(
                "Kafka topic %s: cannot read max.message.bytes (%s: %s); assuming the "
                "producer's message.max.bytes=%d",
                self.topic,
                type(err).__name__,
                err,
                producer_max_bytes(self.config),
            )
            return None
