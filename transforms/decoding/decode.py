"""Decode Kafka values (JSON or Avro) into typed rows checked against a :class:`RowSchema`.

Every record ends up in exactly one output: ``rows`` (plain dicts, see
:mod:`transforms.decoding.row_validation` for the coercion rules) or ``dead_letters``
(:class:`~transforms.dead_letter.DeadLetter` with the raw bytes, Kafka coordinates and a
:class:`~transforms.decoding.rejection.Reason` code). Counters in namespace
``kafka_beam_ml.decode``:
``rows``, ``dead_letters`` and one per reason code.

Usage::

    decoded = records | DecodeAndValidate(bundled_schema("car_sensor"), "JSON")
    decoded.rows | WriteRows(...)
    decoded.dead_letters | WriteDeadLetters(...)

    # keep the Kafka record beside the row (key, offsets, event time):
    pairs = records | DecodeAndValidate(schema, "AVRO_CONFLUENT_WIRE_FORMAT",
                                        schema_registry_url="http://registry:8081").with_records()

    # lists in, lists out (ReadFromKafka(...).batched()): one Batch of rows per polled list
    batches = polled | DecodeAndValidate(schema).with_records().batched()
    # the same pairs kept column-wise (the scorer reads its features without a dict per row)
    columns = polled | DecodeAndValidate(schema).with_records().columnar()
    # rows kept column-wise (the exports filter and encode them without a dict per row)
    rows = polled | DecodeAndValidate(schema).columnar()

JSON takes a fast path (:meth:`RowValidator.decode_json_fast`, parsing and checking in one pass)
and falls back to the exact one (``json`` + :meth:`RowValidator.validate`) whenever it cannot
vouch for the result.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils import windowed_value

from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.avro import AvroDecoder, ConfluentAvroDecoder
from transforms.decoding.columnar import ColumnarPairs
from transforms.decoding.rejection import Reason, Rejected
from transforms.decoding.row_validation import UNKNOWN_FIELD_POLICIES, RowValidator
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord

__all__ = ["DecodeAndValidate", "DecodeResult", "MESSAGE_FORMATS", "METRICS_NAMESPACE"]

_LOGGER = logging.getLogger(__name__)

MESSAGE_FORMATS = ("JSON", "AVRO", "AVRO_CONFLUENT_WIRE_FORMAT")
METRICS_NAMESPACE = "kafka_beam_ml.decode"
_STAGE = "decode"


class DecodeResult(NamedTuple):
    """Outputs of :class:`DecodeAndValidate`: good ``rows`` and ``dead_letters``."""

    rows: beam.PCollection
    dead_letters: beam.PCollection


def _reject_constant(name: str) -> None:
    raise Rejected(_STAGE, Reason.NON_FINITE, f"JSON contains {name}, which is not a finite number")


def _decode_json(payload: bytes) -> Mapping[str, Any]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected(_STAGE, Reason.NOT_UTF8, f"value is not UTF-8: {err}") from err
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:
        raise Rejected(_STAGE, Reason.INVALID_JSON, f"invalid JSON: {err}") from err
    if not isinstance(document, dict):
        raise Rejected(
            _STAGE,
            Reason.NOT_AN_OBJECT,
            f"JSON value is a {type(document).__name__}, not an object",
        )
    return document


class _Counters:
    """Beam counters per outcome, created lazily (one per reason code seen)."""

    def __init__(self) -> None:
        self.rows = Metrics.counter(METRICS_NAMESPACE, "rows")
        self.dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")
        self._by_reason: dict[str, Any] = {}

    def rejected(self, reason: str) -> None:
        self.dead_letters.inc()
        counter = self._by_reason.get(reason)
        if counter is None:
            counter = self._by_reason[reason] = Metrics.counter(METRICS_NAMESPACE, reason)
        counter.inc()


class _DecodeFn(beam.DoFn):
    """Decode + validate one KafkaRecord; Rejected → DeadLetter on the tagged output."""

    def __init__(
        self,
        schema: RowSchema,
        message_format: str,
        avro_schema: Mapping[str, Any] | None,
        registry_url: str | None,
        registry_config: Mapping[str, Any] | None,
        unknown_fields: str,
        max_message_bytes: int,
        with_records: bool,
        columnar: bool = False,
    ) -> None:
        self._schema = schema
        self._format = message_format
        self._avro_schema = avro_schema
        self._registry_url = registry_url
        self._registry_config = dict(registry_config or {})
        self._unknown_fields = unknown_fields
        self._max_bytes = max_message_bytes
        self._with_records = with_records
        self._columnar = columnar
        self._decode: Callable[[bytes], Mapping[str, Any]] | None = None
        self._validator: RowValidator | None = None
        self._counters: _Counters | None = None

    def setup(self) -> None:
        if self._format == "JSON":
            self._decode = _decode_json
        elif self._format == "AVRO":
            self._decode = AvroDecoder(self._avro_schema or self._schema.to_avro())
        else:
            self._decode = ConfluentAvroDecoder(
                self._registry_url,
                reader_schema=self._avro_schema,
                registry_config=self._registry_config,
            )
        self._validator = RowValidator(self._schema, self._unknown_fields)
        self._fast_json = self._format == "JSON"
        self._counters = _Counters()
        _LOGGER.info(
            "Decoding %s into rows of %d fields (unknown fields: %s)",
            self._format,
            len(self._schema),
            self._unknown_fields,
        )

    def process(self, record: KafkaRecord):
        output = self._decode_record(record)
        if type(output) is DeadLetter:
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, output)
        else:
            self._counters.rows.inc()
            yield output

    def _decode_record(self, record: KafkaRecord) -> Any:
        """The row (or ``(record, row)``), or the record's DeadLetter (counted here; rows are
        counted by the caller, once per batch in the batched form)."""
        try:
            payload = record.value
            if payload is None:
                raise Rejected(_STAGE, Reason.EMPTY_PAYLOAD, "value is null (tombstone)")
            if len(payload) > self._max_bytes:
                raise Rejected(
                    _STAGE,
                    Reason.OVERSIZE,
                    f"value is {len(payload)} bytes, over the {self._max_bytes}-byte limit",
                )
            row = self._validator.decode_json_fast(payload) if self._fast_json else None
            if row is None:
                row = self._validator.validate(self._decode(payload))
        except Rejected as err:
            self._counters.rejected(err.reason)
            _LOGGER.debug(
                "Dead letter %s at %s/%s@%s: %s",
                err.reason,
                record.topic,
                record.partition,
                record.offset,
                err.message,
            )
            return DeadLetter.from_record(record, err.stage, err.message, err.reason)
        return (record, row) if self._with_records else row


class _DecodeBatchFn(_DecodeFn):
    """One list of KafkaRecords → one list of rows; each dead letter at its record's time.

    For batched reads (``ReadFromKafka(...).batched()``): Beam's per-element cost between
    steps is then paid once per batch.
    """

    def process(self, records: list[KafkaRecord], window=beam.DoFn.WindowParam):
        decoded = self._decode_all(records)
        if decoded is not None:
            self._counters.rows.inc(len(decoded))
            if self._columnar:
                yield ColumnarPairs(records, decoded) if self._with_records else decoded
            elif self._with_records:
                yield Batch(zip(records, decoded, strict=True))
            else:
                yield Batch(decoded)
            return
        rows = Batch()
        for record in records:
            output = self._decode_record(record)
            if type(output) is DeadLetter:
                letter = windowed_value.create(output, record.timestamp_ms * 1000, (window,))
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            else:
                rows.append(output)
        if rows:
            self._counters.rows.inc(len(rows))
            yield rows

    def _decode_all(self, records: list[KafkaRecord]) -> Sequence[Any] | None:
        """Every record's row (a :class:`StructRows` if columnar) when the whole batch is JSON
        the fast path takes, else None (each record is then decoded on its own, a bad one
        becoming its dead letter)."""
        if not (self._fast_json and records):
            return None
        payloads = [record.value for record in records]
        if None in payloads or max(map(len, payloads)) > self._max_bytes:
            return None
        if self._columnar:
            return self._validator.decode_json_columns(payloads)
        return self._validator.decode_json_fast_all(payloads)


class DecodeAndValidate(beam.PTransform):
    """PCollection[KafkaRecord] → :class:`DecodeResult` (``rows``, ``dead_letters``).

    Element timestamps (the Kafka event time set by the reader) are kept.
    """

    def __init__(
        self,
        schema: RowSchema,
        message_format: str = "JSON",
        *,
        avro_schema: Mapping[str, Any] | None = None,
        schema_registry_url: str | None = None,
        schema_registry_config: Mapping[str, Any] | None = None,
        unknown_fields: str = "reject",
        max_message_bytes: int = 1_000_000,
        label: str | None = None,
    ) -> None:
        """Args:
        schema: the declared row shape every output row has.
        message_format: ``JSON``, ``AVRO`` (schemaless records; writer schema ``avro_schema``,
            default ``schema.to_avro()``) or ``AVRO_CONFLUENT_WIRE_FORMAT`` (writer schema from
            ``schema_registry_url``; ``avro_schema``, if given, is the reader schema).
        schema_registry_config: extra ``SchemaRegistryClient`` settings (auth, TLS).
        unknown_fields: ``reject`` (dead letter) or ``ignore`` (dropped from the row).
        max_message_bytes: longer values are dead-lettered before decoding.

        Returns: a :class:`DecodeResult`.
        """
        super().__init__(label)
        if message_format not in MESSAGE_FORMATS:
            raise ValueError(
                f"message_format must be one of {', '.join(MESSAGE_FORMATS)}, "
                f"got {message_format!r}"
            )
        if message_format == "AVRO_CONFLUENT_WIRE_FORMAT":
            urls = [u.strip() for u in (schema_registry_url or "").split(",")]
            if not all(u.startswith(("http://", "https://")) for u in urls):
                raise ValueError(
                    "AVRO_CONFLUENT_WIRE_FORMAT needs schema_registry_url: http(s)://host:port "
                    f"(comma-separated for several), got {schema_registry_url!r}"
                )
        if unknown_fields not in UNKNOWN_FIELD_POLICIES:
            raise ValueError(
                f"unknown_fields must be one of {UNKNOWN_FIELD_POLICIES}, got {unknown_fields!r}"
            )
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if avro_schema is not None:
            import fastavro

            fastavro.parse_schema(dict(avro_schema))  # fail at construction, not on a worker
        self._fn_args = (
            schema,
            message_format,
            avro_schema,
            schema_registry_url,
            schema_registry_config,
            unknown_fields,
            max_message_bytes,
        )
        self._with_records = False
        self._batched = False
        self._columnar = False

    def with_records(self) -> DecodeAndValidate:
        """The same transform whose ``rows`` are ``(KafkaRecord, row)`` pairs."""
        clone = copy.copy(self)
        clone._with_records = True
        return clone

    def batched(self) -> DecodeAndValidate:
        """The same transform on ``list[KafkaRecord]`` batches (``ReadFromKafka.batched()``).

        ``rows`` are then lists (one per input batch that kept any row, at the batch's time);
        dead letters stay single, each at its record's event time.
        """
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def columnar(self) -> DecodeAndValidate:
        """``batched()`` whose JSON batches stay column-wise: a batch the fast path decodes
        whole is a :class:`~transforms.decoding.columnar.StructRows` (with ``with_records()``:
        a :class:`~transforms.decoding.columnar.ColumnarPairs`), the same rows with no row dict
        built until one is asked for; other batches are lists as in ``batched()``.

        For steps that read a few columns of each batch (``ScoreEvents(...).batched()``) or
        encode whole columns (``Filter``, ``WriteTFRecords(...).batched()``, BigQuery loads).
        """
        clone = self.batched()
        clone._columnar = True
        return clone

    def expand(self, records: beam.PCollection) -> DecodeResult:
        if self._batched:
            decode = beam.ParDo(
                _DecodeBatchFn(
                    *self._fn_args, with_records=self._with_records, columnar=self._columnar
                )
            )
            decode = decode.with_output_types(Batch)  # the dead letters stay Any
        else:
            decode = beam.ParDo(_DecodeFn(*self._fn_args, with_records=self._with_records))
        outputs = records | "Decode" >> decode.with_outputs(DEAD_LETTER_TAG, main="rows")
        return DecodeResult(rows=outputs.rows, dead_letters=outputs[DEAD_LETTER_TAG])
