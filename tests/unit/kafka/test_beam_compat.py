"""transforms.kafka.beam_compat without a broker: Beam's signatures, argument checks, element
conversion and (de)serializers (the broker tests are tests/integration/test_beam_compat.py)."""

from __future__ import annotations

import inspect
import struct

import apache_beam as beam
import apache_beam.io.kafka as beam_kafka
import pytest
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from transforms.kafka import beam_compat
from transforms.kafka.beam_compat import (
    DESERIALIZERS,
    SERIALIZERS,
    KafkaDeserializationError,
    ReadFromKafka,
    WriteToKafka,
)
from transforms.kafka.record import KafkaRecord

BROKER = {"bootstrap.servers": "127.0.0.1:1"}  # never contacted by these tests
SERDE = "org.apache.kafka.common.serialization."


@pytest.mark.parametrize(
    "ours, beams",
    [(ReadFromKafka, beam_kafka.ReadFromKafka), (WriteToKafka, beam_kafka.WriteToKafka)],
)
def test_same_parameters_and_defaults_as_beam(ours, beams):
    mine = inspect.signature(ours.__init__).parameters
    theirs = inspect.signature(beams.__init__).parameters
    assert list(mine) == list(theirs)
    for name, param in theirs.items():
        assert mine[name].default == param.default, name


def test_class_constants_match_beam():
    for name in (
        "byte_array_deserializer",
        "processing_time_policy",
        "create_time_policy",
        "log_append_time",
    ):
        assert getattr(ReadFromKafka, name) == getattr(beam_kafka.ReadFromKafka, name)
    assert WriteToKafka.byte_array_serializer == beam_kafka.WriteToKafka.byte_array_serializer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"expansion_service": "localhost:8097"}, "expansion_service"),
        ({"consumer_factory_fn_class": "org.Foo"}, "consumer_factory_fn_class"),
        (
            {"key_deserializer": "io.confluent.kafka.serializers.KafkaAvroDeserializer"},
            "key_deserializer='io.confluent",
        ),
        ({"value_deserializer": f"{SERDE}UUIDDeserializer"}, "value_deserializer="),
        ({"timestamp_policy": "EventTime"}, "timestamp_policy should be one of"),
        (
            {"with_metadata": True, "value_deserializer": f"{SERDE}StringDeserializer"},
            "with_metadata=True works with the default ByteArrayDeserializer",
        ),
        ({"commit_offset_in_finalize": True}, "needs group.id"),
        ({"max_num_records": -1}, "max_num_records must be >= 0"),
        ({"consumer_polling_timeout": 0}, "consumer_polling_timeout must be > 0"),
    ],
)
def test_read_refuses_what_it_cannot_honour(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ReadFromKafka(BROKER, ["t"], **kwargs)


@pytest.mark.parametrize(
    "config, message",
    [
        ({**BROKER, "ssl.truststore.location": "/x.jks"}, "ssl.truststore.location .*ssl.ca"),
        ({**BROKER, "value.deserializer": "x"}, "value.deserializer .*value_deserializer="),
        ({**BROKER, "no.such.property": "1"}, "no.such.property"),
        ({**BROKER, "auto.offset.reset": "none"}, "auto.offset.reset='none'"),
        ({"group.id": "g"}, "bootstrap.servers is required"),
        ({**BROKER, "sasl.jaas.config": "com.example.Module required;"}, "sasl.jaas.config"),
    ],
)
def test_read_refuses_java_only_or_bad_properties(config, message):
    with pytest.raises(ValueError, match=message):
        ReadFromKafka(config, ["t"])


def test_consumer_config_maps_to_the_reader():
    read = ReadFromKafka(
        {
            **BROKER,
            "group.id": "g",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "max.poll.records": 50,
        },
        ["a", "b"],
        max_num_records=10,
        dynamic_read_poll_interval_seconds=5,
    )
    kwargs = read._read_kwargs
    assert kwargs["group_id"] == "g" and kwargs["start"] == "committed"
    assert kwargs["start_fallback"] == "earliest" and kwargs["commit_offsets"] is True
    assert kwargs["batch_size"] == 50 and kwargs["max_records"] == 10
    assert kwargs["partition_discovery_s"] == 5
    assert "group.id" not in read._config.consumer_dict()
    # Without a group: auto.offset.reset (KafkaIO's default: latest) is the start.
    assert ReadFromKafka(BROKER, ["a"])._read_kwargs["start"] == "latest"
    assert ReadFromKafka(BROKER, ["a"], start_read_time=1234)._read_kwargs["start"] == 1234


def test_sasl_jaas_config_becomes_librdkafka_username_and_password():
    settings = beam_compat._librdkafka_settings(
        {
            **BROKER,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
            'username="svc" password="p\\"w";',
        },
        "consumer_config",
    )
    assert settings["sasl.username"] == "svc" and settings["sasl.password"] == 'p\\"w'
    assert "sasl.jaas.config" not in settings


@pytest.mark.parametrize(
    "name, value, encoded",
    [
        ("ByteArray", b"\x00\xff", b"\x00\xff"),
        ("String", "héllo", "héllo".encode()),
        ("Long", -2, struct.pack(">q", -2)),
        ("Integer", 7, struct.pack(">i", 7)),
        ("Short", 3, struct.pack(">h", 3)),
        ("Double", 1.5, struct.pack(">d", 1.5)),
        ("Float", 0.25, struct.pack(">f", 0.25)),
    ],
)
def test_serializers_write_what_java_writes_and_read_it_back(name, value, encoded):
    serializer = beam_compat._serde(f"{SERDE}{name}Serializer", "Serializer", "key_serializer")
    deserializer = beam_compat._serde(f"{SERDE}{name}Deserializer", "Deserializer", "k")
    assert serializer.encode(value) == encoded
    assert deserializer.decode(encoded) == value
    assert DESERIALIZERS[f"{SERDE}{name}Deserializer"] is SERIALIZERS[f"{SERDE}{name}Serializer"]


def test_serializer_refuses_the_wrong_type():
    serialize = beam_compat._Serialize(beam_compat._FORMATS["Long"], "value", False)
    with pytest.raises(TypeError, match="the value does not serialize: expected int, got str"):
        serialize((b"k", "7"))
    with pytest.raises(TypeError, match=r"expects \(key, value\) pairs"):
        serialize(b"v")


def test_row_headers_refuse_routing_fields():
    headers = beam_compat._RowHeaders("out")
    row = beam.Row(key=b"k", value=b"v", headers=[beam.Row(key="h", value=b"1")], topic="out")
    assert headers(row) == [("h", b"1")]
    with pytest.raises(ValueError, match="per-record topic 'other'"):
        headers(beam.Row(key=None, value=b"v", topic="other"))
    with pytest.raises(ValueError, match="per-record partition"):
        headers(beam.Row(key=None, value=b"v", partition=2))


class _FixedTypes:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def of(self, topic: str) -> str:
        return self.kind


RECORD = KafkaRecord("t", 2, 41, b"k", struct.pack(">q", 9), 1_700_000_000_123, (("h", b"1"),))


def _convert(fn, record=RECORD):
    fn.setup()
    return list(fn.process(record, Timestamp(micros=record.timestamp_ms * 1000), GlobalWindow()))


def test_elements_are_pairs_at_processing_time_by_default():
    fmt = beam_compat._FORMATS
    fn = beam_compat._ToBeamElementsFn(
        fmt["ByteArray"], fmt["Long"], "ProcessingTime", False, None, clock=lambda: 1234.5
    )
    [out] = _convert(fn)
    assert out.value == (b"k", 9)
    assert out.timestamp == Timestamp.of(1234.5)


def test_metadata_rows_have_kafkaio_fields_and_create_time():
    fmt = beam_compat._FORMATS["ByteArray"]
    fn = beam_compat._ToBeamElementsFn(fmt, fmt, "CreateTime", True, _FixedTypes("CreateTime"))
    [out] = _convert(fn)
    row = out.value
    assert (row.topic, row.partition, row.offset, row.timestamp) == ("t", 2, 41, RECORD[5])
    assert (row.timestampTypeName, row.timestampTypeId) == ("CreateTime", 0)
    assert (row.key, row.value) == (b"k", RECORD.value)
    assert [(h.key, h.value) for h in row.headers] == [("h", b"1")]
    assert out.timestamp == Timestamp(micros=RECORD.timestamp_ms * 1000)


def test_timestamp_policy_checks_the_topic_timestamp_type_as_kafkaio():
    fmt = beam_compat._FORMATS["ByteArray"]
    fn = beam_compat._ToBeamElementsFn(fmt, fmt, "LogAppendTime", False, _FixedTypes("CreateTime"))
    with pytest.raises(ValueError, match="Kafka record's timestamp is not 'LogAppendTime'"):
        _convert(fn)


def test_a_value_that_does_not_decode_names_the_record():
    fmt = beam_compat._FORMATS
    fn = beam_compat._ToBeamElementsFn(
        fmt["ByteArray"], fmt["Integer"], "ProcessingTime", False, None
    )
    with pytest.raises(KafkaDeserializationError, match=r"t\[2\]@41: the value .*expected 4 bytes"):
        _convert(fn)


def test_write_refuses_headers_with_other_serializers_and_expansion_service():
    with pytest.raises(ValueError, match="only supports ByteArraySerializer"):
        WriteToKafka(BROKER, "t", value_serializer=f"{SERDE}StringSerializer", with_headers=True)
    with pytest.raises(ValueError, match="expansion_service"):
        WriteToKafka(BROKER, "t", expansion_service="localhost:1")
    with pytest.raises(ValueError, match="key.serializer .*key_serializer="):
        WriteToKafka({**BROKER, "key.serializer": "x"}, "t")
