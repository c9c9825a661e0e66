"""MqttToKafkaMessages: keys from the topic, a level or a field; bad payloads dead-lettered."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.decoding.schema import RowSchema
from transforms.mqtt.keying import KafkaMessage, KeySpec, MqttToKafkaMessages
from transforms.mqtt.session import MqttRecord
from transforms.size_limits import FixedSizeLimit

SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "car_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "speed", "type": "FLOAT", "mode": "REQUIRED"},
    ]
)


def _record(topic: str, payload: bytes) -> MqttRecord:
    return MqttRecord(topic, payload, 1, False, 1_000)


def _header(topic: str) -> tuple[tuple[str, bytes], ...]:
    return (("mqtt_topic", topic.encode()),)


@pytest.mark.parametrize(
    "spec, key",
    [("topic", b"cars/c7/sensors"), ("topic:1", b"c7"), ("field:car_id", b"c7"), ("none", None)],
)
def test_keys(spec: str, key: bytes | None) -> None:
    payload = b'{"car_id": "c7", "speed": 3}'
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([_record("cars/c7/sensors", payload)])
            | MqttToKafkaMessages(KeySpec.parse(spec))
        )
        assert_that(
            out.messages,
            equal_to([KafkaMessage(key, payload, _header("cars/c7/sensors"))]),
            label="messages",
        )
        assert_that(out.dead_letters, equal_to([]), label="dead")


def test_bad_payloads_become_dead_letters_with_reason_and_raw_payload() -> None:
    good = _record("cars/c1/sensors", b'{"car_id": "c1", "speed": 1.5}')
    bad = [
        _record("cars/c2/sensors", b"{nope"),
        _record("cars/c3/sensors", b'{"car_id": "c3"}'),
        _record("cars/c4/sensors", b'{"car_id": "c4", "speed": "fast"}'),
        _record("cars/c5/sensors", b"\xff"),
        _record("cars/c6/sensors", b"[1, 2]"),
    ]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([[good, *bad]])
            | MqttToKafkaMessages(KeySpec.parse("field:car_id"), schema=SCHEMA).batched()
        )
        assert_that(
            out.messages | beam.Map(lambda batch: [m.key for m in batch]),
            equal_to([[b"c1"]]),
            label="messages",
        )
        letters = out.dead_letters | beam.Map(lambda d: (d.topic, d.payload, d.error_type))
        assert_that(
            letters,
            equal_to(
                [
                    ("cars/c2/sensors", b"{nope", "InvalidJson"),
                    ("cars/c3/sensors", b'{"car_id": "c3"}', "MissingField"),
                    ("cars/c4/sensors", b'{"car_id": "c4", "speed": "fast"}', "WrongType"),
                    ("cars/c5/sensors", b"\xff", "NotUtf8"),
                    ("cars/c6/sensors", b"[1, 2]", "NotAnObject"),
                ]
            ),
            label="dead",
        )


def test_missing_key_and_oversize_are_dead_letters() -> None:
    records = [
        _record("cars", b"{}"),  # no level 1
        _record("cars/c1/sensors", b"x" * 200),
        _record("cars/c2/sensors", b"ok"),
    ]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(records)
            | MqttToKafkaMessages(KeySpec.parse("topic:1"), limit=FixedSizeLimit(100, "topic t"))
        )
        assert_that(out.messages | beam.Map(lambda m: m.key), equal_to([b"c2"]), label="ok")
        assert_that(
            out.dead_letters | beam.Map(lambda d: (d.stage, d.error_type)),
            equal_to([("mqtt", "NoKey"), ("size", "RecordTooLarge")]),
            label="dead",
        )


def test_field_key_without_schema_needs_json_and_the_field() -> None:
    spec = KeySpec.parse("field:meta.vin")
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(
                [
                    _record("a", b'{"meta": {"vin": 42}}'),
                    _record("b", b'{"meta": {}}'),
                    _record("c", b"plain text"),
                ]
            )
            | MqttToKafkaMessages(spec)
        )
        assert_that(out.messages | beam.Map(lambda m: m.key), equal_to([b"42"]), label="ok")
        assert_that(
            out.dead_letters | beam.Map(lambda d: (d.topic, d.error_type)),
            equal_to([("b", "NoKey"), ("c", "InvalidJson")]),
            label="dead",
        )


@pytest.mark.parametrize("bad", ["", "field:", "topic:x", "key", "field:1a"])
def test_bad_key_specs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="message key"):
        KeySpec.parse(bad)
