"""MqttToKafkaMessages: MQTT messages → keyed Kafka messages, bad payloads to dead letters.

Each :class:`~transforms.mqtt.session.MqttRecord` becomes a :class:`KafkaMessage` whose value is
the MQTT payload unchanged, whose key comes from a :class:`KeySpec` and whose ``mqtt_topic``
header keeps the MQTT topic. A message is dead-lettered (a
:class:`~transforms.dead_letter.DeadLetter` with the reason, the raw payload and the MQTT topic
in ``topic``) when its key cannot be taken from it (not JSON, no such field, no such topic
level), when it fails the optional row schema, or when it is too big for the Kafka topic.

Usage::

    out = records | MqttToKafkaMessages(KeySpec.parse("field:car_id"),
                                        schema=bundled_schema("car_sensor"),
                                        limit=TopicRecordLimit(config, "car-sensors"))
    out.messages | WriteToKafka(config, "car-sensors")
    out.dead_letters | WriteToKafka(config, "dead-letters", value_fn=DeadLetter.to_json)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils import windowed_value

from transforms import progress
from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.rejection import Reason, Rejected
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema
from transforms.mqtt.session import MqttRecord
from transforms.size_limits import SizeLimit

__all__ = ["KeySpec", "KafkaMessage", "MqttToKafkaMessages", "BridgeResult", "STAGE"]

#: ``stage`` of the bridge's dead letters.
STAGE = "mqtt"
_METRICS_NAMESPACE = "kafka_beam_ml.mqtt_to_kafka"
_TOPIC_HEADER = "mqtt_topic"
_SPEC = re.compile(r"topic|none|topic:(?P<level>[0-9]{1,3})|field:(?P<field>[A-Za-z_][\w.]*)")


class KafkaMessage(NamedTuple):
    """A Kafka message for ``WriteToKafka`` (key, value, headers attributes)."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class BridgeResult(NamedTuple):
    """Outputs of :class:`MqttToKafkaMessages`."""

    messages: beam.PCollection  # KafkaMessage (a Batch of them when batched)
    dead_letters: beam.PCollection  # DeadLetter


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """Where a Kafka key comes from: ``topic`` (the MQTT topic), ``topic:N`` (its level N,
    0-based: ``topic:1`` of ``cars/c7/sensors`` is ``c7``), ``field:NAME`` (a top-level JSON
    field of the payload; ``a.b`` for a nested one) or ``none`` (no key: spread over partitions).
    """

    kind: str
    level: int | None = None
    field: str | None = None

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        match = _SPEC.fullmatch(text or "")
        if match is None:
            raise ValueError(
                f"message key {text!r}: use topic, topic:<level>, field:<name> or none"
            )
        if match["level"] is not None:
            return cls("level", level=int(match["level"]))
        if match["field"] is not None:
            return cls("field", field=match["field"])
        return cls(text)

    @property
    def needs_json(self) -> bool:
        return self.kind == "field"

    def key(self, record: MqttRecord, row: Any) -> bytes | None:
        """The key of ``record`` (``row``: its parsed JSON, when needed). Raises Rejected."""
        if self.kind == "topic":
            return record.topic.encode("utf-8")
        if self.kind == "none":
            return None
        if self.kind == "level":
            levels = record.topic.split("/")
            if self.level >= len(levels) or not levels[self.level]:
                raise Rejected(
                    STAGE, "NoKey", f"topic {record.topic!r} has no level {self.level} for the key"
                )
            return levels[self.level].encode("utf-8")
        value = row
        for part in self.field.split("."):
            if not isinstance(value, dict) or value.get(part) is None:
                raise Rejected(STAGE, "NoKey", f"payload has no key field {self.field!r}")
            value = value[part]
        if isinstance(value, dict | list):
            raise Rejected(STAGE, "NoKey", f"key field {self.field!r} is not a scalar")
        return (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")


def _parse_json(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected(STAGE, Reason.NOT_UTF8, f"payload is not UTF-8: {err}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise Rejected(STAGE, Reason.INVALID_JSON, f"payload is not JSON: {err}") from None


class _BridgeFn(beam.DoFn):
    """One MqttRecord → a KafkaMessage or a DeadLetter."""

    def __init__(
        self, key_spec: KeySpec, schema: RowSchema | None, limit: SizeLimit | None
    ) -> None:
        self._key_spec = key_spec
        self._schema = schema
        self._limit = limit
        self._bridged = Metrics.counter(_METRICS_NAMESPACE, "messages_bridged")
        self._rejected = Metrics.counter(_METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._validator = RowValidator(self._schema) if self._schema is not None else None
        self._max_bytes = self._limit.resolve() if self._limit is not None else None

    def _convert(self, record: MqttRecord) -> KafkaMessage | DeadLetter:
        try:
            row = None
            if self._validator is not None:
                row = self._validator.decode_json_fast(record.payload)
                if row is None:
                    parsed = _parse_json(record.payload)
                    if not isinstance(parsed, dict):
                        raise Rejected("validate", Reason.NOT_AN_OBJECT, "payload is not an object")
                    row = self._validator.validate(parsed)
            elif self._key_spec.needs_json:
                row = _parse_json(record.payload)
            key = self._key_spec.key(record, row)
            topic = record.topic.encode("utf-8")
            size = len(record.payload) + (len(key) if key else 0) + len(topic) + 10
            if self._max_bytes is not None and size > self._max_bytes:
                raise Rejected(
                    "size",
                    "RecordTooLarge",
                    f"record of {size} bytes (key + value + header) exceeds the "
                    f"{self._max_bytes}-byte limit of {self._limit.describe()}",
                )
        except Rejected as err:
            self._rejected.inc()
            progress.add(progress.DEAD_LETTERS)
            return DeadLetter(
                stage=err.stage,
                error_type=err.reason,
                error_message=err.message,
                payload=record.payload,
                topic=record.topic,
            )
        return KafkaMessage(key, record.payload, ((_TOPIC_HEADER, topic),))

    def process(self, record: MqttRecord) -> Iterator[Any]:
        output = self._convert(record)
        if type(output) is DeadLetter:
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, output)
        else:
            self._bridged.inc()
            yield output


class _BridgeBatchFn(_BridgeFn):
    """A Batch of records → a Batch of messages; each dead letter at its record's time."""

    def process(self, records: list[MqttRecord], window=beam.DoFn.WindowParam) -> Iterator[Any]:
        messages = Batch()
        for record in records:
            output = self._convert(record)
            if type(output) is DeadLetter:
                letter = windowed_value.create(output, record.received_ms * 1000, (window,))
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            else:
                messages.append(output)
        if messages:
            self._bridged.inc(len(messages))
            yield messages


class MqttToKafkaMessages(beam.PTransform):
    """PCollection[MqttRecord] → :class:`BridgeResult` (Kafka messages and dead letters).

    Args:
        key_spec: where the key comes from (:class:`KeySpec`).
        schema: if given, every payload must be a JSON row valid against it (stage
            ``validate``/``mqtt``); the payload is forwarded unchanged.
        limit: the Kafka topic's record limit (``TopicRecordLimit``); larger messages become
            dead letters (stage ``size``) instead of failing the bundle.

    Returns:
        :class:`BridgeResult`; counters ``messages_bridged`` and ``dead_letters`` in
        ``kafka_beam_ml.mqtt_to_kafka``.
    """

    def __init__(
        self,
        key_spec: KeySpec,
        *,
        schema: RowSchema | None = None,
        limit: SizeLimit | None = None,
    ) -> None:
        super().__init__()
        self._args = (key_spec, schema, limit)
        self._batched = False

    def batched(self) -> MqttToKafkaMessages:
        """The same on batches (``ReadFromMqtt(...).batched()``): a Batch of messages per input
        batch that kept any."""
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def expand(self, records: beam.PCollection) -> BridgeResult:
        if self._batched:
            bridge = beam.ParDo(_BridgeBatchFn(*self._args)).with_output_types(Batch)
        else:
            bridge = beam.ParDo(_BridgeFn(*self._args))
        outputs = records | "Bridge" >> bridge.with_outputs(DEAD_LETTER_TAG, main="messages")
        return BridgeResult(outputs.messages, outputs[DEAD_LETTER_TAG])
