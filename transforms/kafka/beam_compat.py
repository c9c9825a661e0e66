"""Beam's ``apache_beam.io.kafka`` API on our pure-Python reader and writer: no JVM, no jar.

Beam's own ``ReadFromKafka``/``WriteToKafka`` are Java cross-language transforms: building the
pipeline starts a Java expansion service downloaded from Maven, so it fails without a JVM or
offline. These take the same arguments (names, defaults, Java class names of the
(de)serializers) and produce the same elements, so migrating is one changed import::

    # from apache_beam.io.kafka import ReadFromKafka, WriteToKafka
    from transforms.kafka.beam_compat import ReadFromKafka, WriteToKafka

    records = p | ReadFromKafka(
        consumer_config={"bootstrap.servers": "broker:9092", "auto.offset.reset": "earliest"},
        topics=["events"],
        max_num_records=1000,
    )  # (key, value) tuples of bytes
    _ = records | WriteToKafka(producer_config={"bootstrap.servers": "broker:9092"}, topic="out")

Differences, each checked when the transform is built (never silently ignored):

* ``consumer_config``/``producer_config`` are handed to librdkafka, which shares most property
  names with the Java client. Java-only properties are an error naming them (with the librdkafka
  equivalent where one exists); ``sasl.jaas.config`` with a PLAIN or SCRAM login module becomes
  ``sasl.username``/``sasl.password``, ``max.poll.records`` the reader's batch size.
* Only the standard ``org.apache.kafka.common.serialization`` (de)serializers of bytes, strings
  and numbers exist in Python (:data:`DESERIALIZERS`, :data:`SERIALIZERS`); others are an error.
* ``expansion_service`` and ``consumer_factory_fn_class`` name Java things: an error if set.
* ``timestamp_policy`` ``CreateTime``/``LogAppendTime`` and ``with_metadata`` need each record's
  timestamp type, which Kafka sets per topic (``message.timestamp.type``): it is read once per
  topic with ``describe_configs`` when a worker sets up.
* ``max_read_time`` counts from when the pipeline is built (expanded), not from the first poll.
* ``WriteToKafka`` returns our per-bundle :class:`~transforms.kafka.writer.KafkaWriteResult`
  instead of ``PDone``; ``with_headers`` rows may not route records to another topic, a chosen
  partition or timestamp (an error naming the field, raised on the worker).

Delivery guarantees are our reader's and writer's: offsets are committed (with
``commit_offset_in_finalize`` or ``enable.auto.commit=true``) only after the bundle's output is
durable, writes are acknowledged before a bundle succeeds.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
import confluent_kafka
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.kafka.config import KafkaConfig, KafkaConfigError
from transforms.kafka.reader import ReadFromKafka as _ReadFromKafka
from transforms.kafka.record import KafkaRecord
from transforms.kafka.writer import WriteToKafka as _WriteToKafka

__all__ = [
    "DESERIALIZERS",
    "SERIALIZERS",
    "KAFKA_HEADER_ROW",
    "KAFKA_METADATA_ROW",
    "KafkaDeserializationError",
    "ReadFromKafka",
    "WriteToKafka",
]

_SERDE_PACKAGE = "org.apache.kafka.common.serialization."

#: Java's ``KafkaTimestampType``: name -> id, as in Beam's metadata rows.
_TIMESTAMP_TYPE_IDS = {"NoTimestampType": -1, "CreateTime": 0, "LogAppendTime": 1}

#: Schema of one header in a metadata row (KafkaIO's external read: ``key`` str, ``value`` bytes).
KAFKA_HEADER_ROW = RowTypeConstraint.from_fields([("key", str), ("value", bytes | None)])
#: Schema of ``ReadFromKafka(with_metadata=True)`` elements, field for field KafkaIO's external
#: read with metadata (``beam:transform:org.apache.beam:kafka_read_with_metadata:v1``).
KAFKA_METADATA_ROW = RowTypeConstraint.from_fields(
    [
        ("topic", str),
        ("partition", int),
        ("offset", int),
        ("timestamp", int),
        ("timestampTypeName", str),
        ("timestampTypeId", int),
        ("key", bytes | None),
        ("value", bytes | None),
        ("headers", list[KAFKA_HEADER_ROW]),
    ]
)


class KafkaDeserializationError(ValueError):
    """A key or value does not decode with the chosen deserializer (as Java's
    ``SerializationException``: the bundle fails, naming the record)."""


class _Fixed(NamedTuple):
    """A fixed-width big-endian number, as Java's numeric (de)serializers write it."""

    fmt: str
    python_type: type

    def decode(self, data: bytes) -> Any:
        if len(data) != struct.calcsize(self.fmt):
            raise ValueError(f"expected {struct.calcsize(self.fmt)} bytes, got {len(data)}")
        return struct.unpack(self.fmt, data)[0]

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, self.python_type) or isinstance(value, bool):
            raise TypeError(f"expected {self.python_type.__name__}, got {type(value).__name__}")
        return struct.pack(self.fmt, value)


class _Bytes:
    python_type = bytes

    @staticmethod
    def decode(data: bytes) -> bytes:
        return data

    @staticmethod
    def encode(value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return value


class _Utf8:
    python_type = str

    @staticmethod
    def decode(data: bytes) -> str:
        return data.decode("utf-8")

    @staticmethod
    def encode(value: Any) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return value.encode("utf-8")


_FORMATS = {
    "ByteArray": _Bytes,
    "String": _Utf8,
    "Long": _Fixed(">q", int),
    "Integer": _Fixed(">i", int),
    "Short": _Fixed(">h", int),
    "Double": _Fixed(">d", float),
    "Float": _Fixed(">f", float),
}
#: Java deserializer classes we read, with the Python type of what they produce.
DESERIALIZERS = {
    f"{_SERDE_PACKAGE}{name}Deserializer": fmt.python_type for name, fmt in _FORMATS.items()
}
#: Java serializer classes we write, with the Python type they accept.
SERIALIZERS = {
    f"{_SERDE_PACKAGE}{name}Serializer": fmt.python_type for name, fmt in _FORMATS.items()
}


def _serde(class_name: str, kind: str, argument: str) -> Any:
    """The codec of a Java (de)serializer class name, or a ValueError naming the argument."""
    if isinstance(class_name, str) and class_name.startswith(_SERDE_PACKAGE):
        name = class_name[len(_SERDE_PACKAGE) :]
        if name.endswith(kind) and name[: -len(kind)] in _FORMATS:
            return _FORMATS[name[: -len(kind)]]
    known = ", ".join(f"{_SERDE_PACKAGE}{name}{kind}" for name in _FORMATS)
    raise ValueError(
        f"{argument}={class_name!r} is not supported without a JVM; use one of: {known} "
        "(and decode other formats in a step after the read, e.g. transforms.decoding)"
    )


# Java client properties with no librdkafka counterpart: what to do instead.
_JAVA_ONLY = {
    "key.deserializer": "pass key_deserializer= instead",
    "value.deserializer": "pass value_deserializer= instead",
    "key.serializer": "pass key_serializer= instead",
    "value.serializer": "pass value_serializer= instead",
    "ssl.truststore.location": "librdkafka reads PEM: set ssl.ca.location",
    "ssl.truststore.password": "librdkafka reads PEM: set ssl.ca.location",
    "ssl.truststore.type": "librdkafka reads PEM: set ssl.ca.location",
    "ssl.keystore.location": "set ssl.certificate.location and ssl.key.location (PEM)",
    "ssl.keystore.password": "set ssl.key.password",
    "ssl.keystore.type": "set ssl.certificate.location and ssl.key.location (PEM)",
    "sasl.login.callback.handler.class": "Java classes cannot be loaded",
    "sasl.client.callback.handler.class": "Java classes cannot be loaded",
    "interceptor.classes": "Java classes cannot be loaded",
    "partitioner.class": "set librdkafka's partitioner (e.g. murmur2_random)",
}
_JAAS = re.compile(
    r"org\.apache\.kafka\.common\.security\.(plain\.PlainLoginModule|scram\.ScramLoginModule)"
    r"\s+required(?P<options>.*);?\s*$",
    re.S,
)
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _from_jaas(text: str, argument: str) -> dict[str, str]:
    """``sasl.jaas.config`` of a PLAIN/SCRAM login module -> ``sasl.username``/``sasl.password``."""
    match = _JAAS.match(str(text).strip())
    options = dict(_JAAS_OPTION.findall(match.group("options"))) if match else {}
    if not match or "username" not in options or "password" not in options:
        raise ValueError(
            f"{argument}: sasl.jaas.config is only understood for PlainLoginModule or "
            "ScramLoginModule with username and password; set sasl.username and sasl.password"
        )
    return {"sasl.username": options["username"], "sasl.password": options["password"]}


def _librdkafka_settings(config: Mapping[str, Any], argument: str) -> dict[str, str]:
    """Beam users' Java client properties as librdkafka settings; Java-only ones are an error."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{argument} must be a dict of client properties, got {type(config)}")
    settings: dict[str, str] = {}
    refused = []
    for key, value in config.items():
        if key == "sasl.jaas.config":
            settings.update(_from_jaas(value, argument))
        elif key in _JAVA_ONLY:
            refused.append(f"{key} ({_JAVA_ONLY[key]})")
        else:
            settings[str(key)] = value if isinstance(value, str) else _text(value)
    if refused:
        raise ValueError(f"{argument}: Java-only properties: {'; '.join(refused)}")
    return settings


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _check_with_librdkafka(settings: Mapping[str, str], argument: str) -> None:
    """Let librdkafka reject unknown properties or bad values now, naming them.

    A client is created and closed at once (no group is joined, nothing is fetched).
    """
    try:
        client = confluent_kafka.Consumer({**settings, "group.id": "kafka-beam-ml-config-check"})
    except confluent_kafka.KafkaException as err:
        raise ValueError(f"{argument}: {err.args[0].str()}") from None
    client.close()


def _kafka_config(settings: Mapping[str, str], argument: str) -> KafkaConfig:
    try:
        return KafkaConfig.from_librdkafka_dict(settings)
    except KafkaConfigError as err:
        raise ValueError(f"{argument}: {err}") from None


_OFFSET_RESET = {
    "earliest": "earliest",
    "smallest": "earliest",
    "beginning": "earliest",
    "latest": "latest",
    "largest": "latest",
    "end": "latest",
}


def _refuse(**values: Any) -> None:
    """Raise naming every argument set to something only Java can honour."""
    named = [name for name, value in values.items() if value is not None]
    if named:
        raise ValueError(
            f"{', '.join(named)}: not supported without a Java expansion service; remove "
            f"{'them' if len(named) > 1 else 'it'} (transforms.kafka.beam_compat runs in Python)"
        )


class _TimestampTypes:
    """Each topic's ``message.timestamp.type``, read once per worker with ``describe_configs``."""

    def __init__(self, config: KafkaConfig, timeout_s: float = 20.0) -> None:
        self._config = config
        self._timeout_s = timeout_s
        self._types: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_types": {}}

    def of(self, topic: str) -> str:
        found = self._types.get(topic)
        if found is None:
            found = self._types[topic] = self._describe(topic)
        return found

    def _describe(self, topic: str) -> str:
        from confluent_kafka.admin import AdminClient, ConfigResource

        admin = AdminClient(self._config.producer_dict())
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        try:
            entries = admin.describe_configs([resource], request_timeout=self._timeout_s)
            entry = entries[resource].result(self._timeout_s).get("message.timestamp.type")
        except confluent_kafka.KafkaException as err:
            raise RuntimeError(
                f"cannot read message.timestamp.type of topic {topic!r} (needed for "
                f"timestamp_policy CreateTime/LogAppendTime and with_metadata): {err}"
            ) from err
        # Kafka's default when a broker does not report it.
        return entry.value if entry is not None and entry.value else "CreateTime"


class _ToBeamElementsFn(beam.DoFn):
    """KafkaRecord -> what Beam's ReadFromKafka emits: ``(key, value)`` or a metadata Row, at
    the time the timestamp policy gives."""

    def __init__(
        self,
        key_format: Any,
        value_format: Any,
        timestamp_policy: str,
        with_metadata: bool,
        timestamp_types: _TimestampTypes | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key_format = key_format
        self._value_format = value_format
        self._policy = timestamp_policy
        self._with_metadata = with_metadata
        self._types = timestamp_types
        self._clock = clock

    def process(
        self, record: KafkaRecord, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator[WindowedValue]:
        timestamp_type = self._types.of(record.topic) if self._types is not None else None
        if self._policy == "ProcessingTime":
            timestamp = Timestamp.of(self._clock())
        elif timestamp_type != self._policy:
            # KafkaIO's own check (ExtractOutputTimestampFns), same message.
            raise ValueError(
                f"Kafka record's timestamp is not '{self._policy}' (topic: {record.topic}, "
                f"partition {record.partition}, offset {record.offset}, timestamp type "
                f"'{timestamp_type}')"
            )
        if self._with_metadata:
            element = beam.Row(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                timestamp=record.timestamp_ms,
                timestampTypeName=timestamp_type,
                timestampTypeId=_TIMESTAMP_TYPE_IDS.get(timestamp_type, -1),
                key=record.key,
                value=record.value,
                headers=[beam.Row(key=name, value=value) for name, value in record.headers],
            )
        else:
            element = (
                self._decode(record, record.key, self._key_format, "key"),
                self._decode(record, record.value, self._value_format, "value"),
            )
        yield WindowedValue(element, timestamp, (window,))

    @staticmethod
    def _decode(record: KafkaRecord, data: bytes | None, fmt: Any, part: str) -> Any:
        if data is None:
            return None
        try:
            return fmt.decode(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise KafkaDeserializationError(
                f"Kafka {record.topic}[{record.partition}]@{record.offset}: the {part} does not "
                f"decode: {err}"
            ) from None


class ReadFromKafka(beam.PTransform):
    """``apache_beam.io.kafka.ReadFromKafka`` without a JVM: same arguments, same elements.

    Elements are ``(key, value)`` tuples (bytes with the default ByteArrayDeserializer, or what
    the deserializers give: str, int, float; ``None`` for a null key or value), or with
    ``with_metadata`` ``beam.Row`` s of :data:`KAFKA_METADATA_ROW` (topic, partition, offset,
    timestamp, timestampTypeName, timestampTypeId, key, value, headers).

    Args:
        consumer_config: client properties; ``bootstrap.servers`` is required. ``group.id``
            resumes from the group's committed offsets; ``auto.offset.reset`` (default
            ``latest``, as KafkaIO's) applies where there are none.
        topics: topic names (a list, as in Beam; one name is accepted too).
        key_deserializer: Java class name, one of :data:`DESERIALIZERS`.
        value_deserializer: Java class name, one of :data:`DESERIALIZERS`.
        start_read_time: start at the first record at or after this time (epoch ms).
        max_num_records: stop after this many records (a bounded read).
        max_read_time: stop reading about this many seconds after the pipeline was built (a
            bounded read): at the first record stamped later, or when caught up after then.
        commit_offset_in_finalize: commit read offsets to ``group.id`` once the bundle's output
            is durable (``enable.auto.commit=true`` does the same).
        timestamp_policy: ``ProcessingTime`` (default), ``CreateTime`` or ``LogAppendTime``:
            the element time, with KafkaIO's check of the record's timestamp type.
        consumer_polling_timeout: longest one poll waits (s); our reader polls for at most
            0.1 s of it, since an empty poll checkpoints rather than fails.
        with_metadata: emit metadata rows (only with the ByteArray deserializers, as in Beam).
        expansion_service: must be None.
        redistribute: reshuffle the records right after the read.
        redistribute_num_keys: the number of keys of that reshuffle (0: the runner's choice).
        allow_duplicates: accepted (a hint; the read is at-least-once anyway).
        dynamic_read_poll_interval_seconds: list the topics' partitions this often to read new
            ones (None: only at launch).
        consumer_factory_fn_class: must be None.
        consumer_factory_fn_params: must be None.
    """

    byte_array_deserializer = f"{_SERDE_PACKAGE}ByteArrayDeserializer"
    processing_time_policy = "ProcessingTime"
    create_time_policy = "CreateTime"
    log_append_time = "LogAppendTime"

    def __init__(
        self,
        consumer_config,
        topics,
        key_deserializer=byte_array_deserializer,
        value_deserializer=byte_array_deserializer,
        start_read_time=None,
        max_num_records=None,
        max_read_time=None,
        commit_offset_in_finalize=False,
        timestamp_policy=processing_time_policy,
        consumer_polling_timeout=2,
        with_metadata=False,
        expansion_service=None,
        redistribute=False,
        redistribute_num_keys=0,
        allow_duplicates=False,
        dynamic_read_poll_interval_seconds: int | None = None,
        consumer_factory_fn_class: str | None = None,
        consumer_factory_fn_params: Mapping | None = None,
    ) -> None:
        super().__init__()
        _refuse(
            expansion_service=expansion_service,
            consumer_factory_fn_class=consumer_factory_fn_class,
            consumer_factory_fn_params=consumer_factory_fn_params,
        )
        if timestamp_policy not in ("ProcessingTime", "CreateTime", "LogAppendTime"):
            raise ValueError(
                "timestamp_policy should be one of [ProcessingTime, CreateTime, LogAppendTime]"
            )
        if with_metadata and _not_byte_arrays(key_deserializer, value_deserializer):
            raise ValueError(
                "with_metadata=True works with the default ByteArrayDeserializer for key and "
                "value only (as in Beam); decode key and value in a later step"
            )
        self._key_format = _serde(key_deserializer, "Deserializer", "key_deserializer")
        self._value_format = _serde(value_deserializer, "Deserializer", "value_deserializer")
        if not consumer_polling_timeout or consumer_polling_timeout <= 0:
            raise ValueError(
                f"consumer_polling_timeout must be > 0, got {consumer_polling_timeout}"
            )
        for name, value in (("max_num_records", max_num_records), ("max_read_time", max_read_time)):
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be >= 0 or None, got {value!r}")
        if redistribute_num_keys < 0:
            raise ValueError(f"redistribute_num_keys must be >= 0, got {redistribute_num_keys}")

        settings = _librdkafka_settings(consumer_config, "consumer_config")
        group_id = settings.pop("group.id", None)
        reset = settings.pop("auto.offset.reset", "latest")  # KafkaIO's default
        if reset not in _OFFSET_RESET:
            raise ValueError(
                f"consumer_config: auto.offset.reset={reset!r} must be earliest or latest"
            )
        auto_commit = settings.pop("enable.auto.commit", "false").lower() == "true"
        batch_size = int(settings.pop("max.poll.records", 1000))
        _check_with_librdkafka(settings, "consumer_config")
        commit = bool(commit_offset_in_finalize) or auto_commit
        if commit and group_id is None:
            raise ValueError(
                "commit_offset_in_finalize (or enable.auto.commit) needs group.id in "
                "consumer_config"
            )
        if start_read_time is not None:
            start: Any = int(start_read_time)
        else:
            start = "committed" if group_id is not None else _OFFSET_RESET[reset]
        self._read_kwargs = {
            "group_id": group_id,
            "start": start,
            "start_fallback": _OFFSET_RESET[reset],
            "max_records": max_num_records,
            "commit_offsets": commit,
            "batch_size": batch_size,
            "poll_timeout_s": min(float(consumer_polling_timeout), 0.1),
            "partition_discovery_s": dynamic_read_poll_interval_seconds,
        }
        self._config = _kafka_config(settings, "consumer_config")
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self._max_read_time = max_read_time
        self._policy = timestamp_policy
        self._with_metadata = bool(with_metadata)
        self._redistribute = bool(redistribute)
        self._redistribute_num_keys = int(redistribute_num_keys) or None

    def _output_type(self) -> Any:
        if self._with_metadata:
            return KAFKA_METADATA_ROW
        key_type = self._key_format.python_type
        value_type = self._value_format.python_type
        return tuple[key_type | None, value_type | None]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        stop_ms = None
        if self._max_read_time is not None:  # resolved when built, not when imported
            stop_ms = int((time.time() + self._max_read_time) * 1000)
        records = pbegin | "Read" >> _ReadFromKafka(
            self._config, self._topics, stop_timestamp_ms=stop_ms, **self._read_kwargs
        )
        needs_types = self._with_metadata or self._policy != "ProcessingTime"
        convert = _ToBeamElementsFn(
            self._key_format,
            self._value_format,
            self._policy,
            self._with_metadata,
            _TimestampTypes(self._config) if needs_types else None,
        )
        elements = records | "ToBeamElements" >> beam.ParDo(convert).with_output_types(
            self._output_type()
        )
        if self._redistribute:
            elements = elements | "Redistribute" >> beam.Reshuffle(self._redistribute_num_keys)
        return elements


def _not_byte_arrays(key_deserializer: str, value_deserializer: str) -> bool:
    """True when either deserializer is not ByteArray (with_metadata needs bytes, as in Beam)."""
    default = ReadFromKafka.byte_array_deserializer
    return key_deserializer != default or value_deserializer != default


class _Serialize:
    """Element part -> bytes with a Java serializer's encoding (picklable, for key_fn etc.)."""

    def __init__(self, fmt: Any, part: str, with_headers: bool) -> None:
        self._fmt = fmt
        self._part = part
        self._with_headers = with_headers

    def __call__(self, element: Any) -> bytes | None:
        if self._with_headers:
            value = getattr(element, self._part)
        else:
            if not isinstance(element, tuple | list) or len(element) != 2:
                raise TypeError(
                    f"WriteToKafka expects (key, value) pairs, got {type(element).__name__}"
                )
            value = element[0 if self._part == "key" else 1]
        if value is None:
            return None
        try:
            return self._fmt.encode(value)
        except TypeError as err:
            raise TypeError(f"WriteToKafka: the {self._part} does not serialize: {err}") from None


class _RowHeaders:
    """A ``with_headers`` row -> producer headers; refuses routing fields we cannot honour."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def __call__(self, row: Any) -> list[tuple[str, bytes | None]]:
        for field in ("partition", "timestamp"):
            if getattr(row, field, None) is not None:
                raise ValueError(
                    f"WriteToKafka(with_headers=True): per-record {field} is not supported; "
                    "leave it unset (None)"
                )
        topic = getattr(row, "topic", None)
        if topic is not None and topic != self._topic:
            raise ValueError(
                f"WriteToKafka(with_headers=True): per-record topic {topic!r} differs from the "
                f"transform's topic {self._topic!r}; split the collection and write each topic"
            )
        return [(header.key, header.value) for header in (getattr(row, "headers", None) or ())]


class WriteToKafka(beam.PTransform):
    """``apache_beam.io.kafka.WriteToKafka`` without a JVM: same arguments, same input.

    Input: ``(key, value)`` tuples whose parts the serializers accept (bytes by default; a
    ``None`` key lets the partitioner choose, a ``None`` value is a tombstone), or with
    ``with_headers`` rows with ``key``, ``value`` and optional ``headers`` (rows of ``key``,
    ``value``). Returns :class:`~transforms.kafka.writer.KafkaWriteResult` per bundle.

    Args:
        producer_config: client properties; ``bootstrap.servers`` is required.
        topic: the topic written to.
        key_serializer: Java class name, one of :data:`SERIALIZERS`.
        value_serializer: Java class name, one of :data:`SERIALIZERS`.
        with_headers: the input is rows with headers (ByteArraySerializer only, as in Beam).
        expansion_service: must be None.
    """

    byte_array_serializer = f"{_SERDE_PACKAGE}ByteArraySerializer"

    def __init__(
        self,
        producer_config,
        topic,
        key_serializer=byte_array_serializer,
        value_serializer=byte_array_serializer,
        with_headers=False,
        expansion_service=None,
    ) -> None:
        super().__init__()
        _refuse(expansion_service=expansion_service)
        if with_headers and (
            key_serializer != self.byte_array_serializer
            or value_serializer != self.byte_array_serializer
        ):
            raise ValueError(
                "WriteToKafka(with_headers=True) only supports ByteArraySerializer for key and "
                "value."
            )
        key_format = _serde(key_serializer, "Serializer", "key_serializer")
        value_format = _serde(value_serializer, "Serializer", "value_serializer")
        settings = _librdkafka_settings(producer_config, "producer_config")
        _check_with_librdkafka(settings, "producer_config")
        self._sink = _WriteToKafka(
            _kafka_config(settings, "producer_config"),
            topic,
            key_fn=_Serialize(key_format, "key", with_headers),
            value_fn=_Serialize(value_format, "value", with_headers),
            headers_fn=_RowHeaders(topic) if with_headers else None,
        )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Write" >> self._sink
