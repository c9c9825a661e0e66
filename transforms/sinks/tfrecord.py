"""Write rows as sharded TFRecord files of ``tf.train.Example``, with the schema beside them.

Training input for TensorFlow: ``tf.data.TFRecordDataset`` reads the shards back and
:func:`feature_spec` gives the ``tf.io.parse_example`` spec for the same schema. Works on local
paths and ``gs://`` (Beam FileSystems).

Feature encoding by schema type:

* FLOAT, NUMERIC → ``float_list``; INTEGER → ``int64_list``; BOOLEAN → ``int64_list`` (0/1);
* STRING → ``bytes_list`` (UTF-8); BYTES → ``bytes_list``; TIMESTAMP → ``bytes_list`` holding the
  RFC 3339 string of the row contract;
* REPEATED fields hold all their values; a NULLABLE field that is None or missing is an **absent
  feature** (parse it with a default or as ``tf.io.VarLenFeature``); RECORD is not supported.

A row that cannot be encoded (REQUIRED value missing, a field the schema does not declare, a
wrong type) becomes ``DeadLetter(stage="tfrecord")``.

Beside the shards (in the directory of ``output_prefix``) go ``schema.json`` (the BigQuery JSON
schema, loadable with ``RowSchema.load``) and, when ``transform_dir`` is given, ``transform.json``
pointing at the tf.Transform artifact. With bounded input they are written after the shards are
final, so their presence means the export is complete.

Usage::

    result = rows | WriteTFRecords("gs://bucket/export/data/part", schema, num_shards=4)
    result.dead_letters | ...

    # lists of rows (DecodeAndValidate(...).batched()): the same files, a batch per file write
    result = batches | WriteTFRecords("gs://bucket/export/data/part", schema).batched()
"""

from __future__ import annotations

import copy
import json
import logging
import operator
import struct
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import WriteToTFRecord

from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.schema import Field, RowSchema
from transforms.sinks.batch_files import WriteBatchFiles, tfrecord_frames

__all__ = [
    "WriteTFRecords",
    "TFRecordWriteResult",
    "row_to_example",
    "feature_spec",
    "SCHEMA_FILE",
    "TRANSFORM_POINTER_FILE",
]

_LOGGER = logging.getLogger(__name__)

#: Name of the schema file written beside the shards.
SCHEMA_FILE = "schema.json"
#: Name of the tf.Transform pointer written beside the shards when a transform dir is given.
TRANSFORM_POINTER_FILE = "transform.json"

_FLOAT_TYPES = frozenset({"FLOAT", "NUMERIC"})
_INT_TYPES = frozenset({"INTEGER", "BOOLEAN"})


class TFRecordWriteResult(NamedTuple):
    """``files``: the final shard names; ``metadata_files``: schema/transform JSON written;
    ``dead_letters``: rows that could not be encoded."""

    files: beam.PCollection
    metadata_files: beam.PCollection
    dead_letters: beam.PCollection


def _check_supported(schema: RowSchema) -> None:
    unsupported = [f.name for f in schema if f.type == "RECORD"]
    if unsupported:
        raise ValueError(f"RECORD fields cannot be written as tf.Example features: {unsupported}")


def _encode(field: Field, value: Any) -> Any:
    """One value as a float, int or bytes for its feature list; TypeError when it does not fit."""
    if field.type in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"field {field.name!r}: expected a number, got {value!r}")
        return float(value)
    if field.type == "INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"field {field.name!r}: expected an integer, got {value!r}")
        return value
    if field.type == "BOOLEAN":
        if not isinstance(value, bool):
            raise TypeError(f"field {field.name!r}: expected a boolean, got {value!r}")
        return int(value)
    if field.type == "BYTES":
        if not isinstance(value, bytes | bytearray):
            raise TypeError(f"field {field.name!r}: expected bytes, got {type(value).__name__}")
        return bytes(value)
    if not isinstance(value, str):  # STRING and TIMESTAMP (RFC 3339 text)
        raise TypeError(f"field {field.name!r}: expected a string, got {value!r}")
    return value.encode("utf-8")


def _varint(number: int) -> bytes:
    if number < 0x80:
        return _ONE_BYTE[number]
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited protobuf field: tag byte, varint length, payload."""
    return tag + _varint(len(payload)) + payload


def _packed_floats(values: list[float]) -> bytes:
    """float32 little-endian, as protobuf stores ``float_list``; beyond float32 range → ±inf."""
    try:
        return struct.pack(f"<{len(values)}f", *values)
    except OverflowError:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype="<f4").tobytes()


def _packed_int64s(values: list[int]) -> bytes:
    for value in values:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"value {value} is out of the int64 range")
    return b"".join(_varint(value & _UINT64_MASK) for value in values)


# Wire tags of tf.train.Example (tensorflow/core/example/{example,feature}.proto): every field
# used is length-delimited (wire type 2), field number n → tag (n << 3) | 2.
_TAG_1, _TAG_2, _TAG_3 = b"\x0a", b"\x12", b"\x1a"
_ONE_BYTE = tuple(bytes((number,)) for number in range(0x80))
_INT64_MIN, _INT64_MAX, _UINT64_MASK = -(2**63), 2**63 - 1, 2**64 - 1
_JUST_FLOAT = {float}


def _feature(field_type: str, values: list) -> bytes:
    """A ``Feature`` message: its float_list (2), int64_list (3) or bytes_list (1)."""
    if field_type in _FLOAT_TYPES:
        return _delimited(_TAG_2, _delimited(_TAG_1, _packed_floats(values)))
    if field_type in _INT_TYPES:
        return _delimited(_TAG_3, _delimited(_TAG_1, _packed_int64s(values)))
    return _delimited(_TAG_1, b"".join(_delimited(_TAG_1, v) for v in values))


def _map_entry(key: bytes, feature: bytes) -> bytes:
    """One ``Features.feature`` map entry (field 1 of Features): key (1), Feature (2)."""
    return _delimited(_TAG_1, key + _delimited(_TAG_2, feature))


def _entry_encoder(field: Field, key: bytes) -> Callable[[Any], bytes]:
    """``value → map entry bytes`` for one field (value not None); TypeError / ValueError when
    it does not fit. Single strings and small integers, with every length one varint byte, are
    written by one bytes formatting instead of the nested general path."""

    def general(value: Any) -> bytes:
        if field.repeated:
            if not isinstance(value, list | tuple):
                raise TypeError(f"REPEATED field {field.name!r}: expected a list, got {value!r}")
            return _map_entry(key, _feature(field.type, [_encode(field, v) for v in value]))
        return _map_entry(key, _feature(field.type, [_encode(field, value)]))

    if field.repeated:
        return general
    if field.type in ("STRING", "TIMESTAMP"):
        # entry = 0a L1 key 12 L2 feature; feature = 0a L3 (0a n value): L1 = len(key)+n+6
        limit = 0x80 - 6 - len(key)

        def short_string(value: Any) -> bytes:
            if type(value) is str:
                data = value.encode("utf-8")
                size = len(data)
                if size < limit:
                    return b"\x0a%c%b\x12%c\x0a%c\x0a%c%b" % (
                        size + 6 + len(key),
                        key,
                        size + 4,
                        size + 2,
                        size,
                        data,
                    )
            return general(value)

        return short_string
    if field.type == "INTEGER" and len(key) + 7 < 0x80:
        head = b"\x0a%c%b\x12\x05\x1a\x03\x0a\x01" % (len(key) + 7, key)

        def small_integer(value: Any) -> bytes:
            if type(value) is int and 0 <= value < 0x80:
                return head + _ONE_BYTE[value]
            return general(value)

        return small_integer
    return general


class _ExampleEncoder:
    """Rows of one schema → serialized ``tf.train.Example``, with the per-field plan built once.

    Why bytes written by hand: building the protobuf message cost ~25 µs per 33-field row (upb),
    most of the TFRecord export's time; the wire format of Example → Features → map entry
    (key, Feature) → Float/Int64/BytesList is small and fixed. A unit test checks that protobuf
    parses every encoding back to the message the protobuf API builds.
    """

    def __init__(self, schema: RowSchema) -> None:
        _check_supported(schema)
        self._fields = tuple(schema)
        self._names = frozenset(schema.names)
        self._keys = {f.name: _delimited(_TAG_1, f.name.encode("utf-8")) for f in self._fields}
        # Single FLOAT fields, the bulk of a training row, are packed by one struct call: each
        # map entry is a constant prefix (key + Feature{float_list{4 bytes}}) and the float.
        fast = [f for f in self._fields if f.type == "FLOAT" and not f.repeated]
        if len(fast) < 2:
            fast = []
        # (name, required, value → entry bytes) per field, all fields and those not packed fast
        plan = {f.name: (f.name, f.required, _entry_encoder(f, self._keys[f.name])) for f in schema}
        self._plan = tuple(plan.values())
        self._rest = tuple(plan[f.name] for f in self._fields if f not in fast)
        self._fast_get = operator.itemgetter(*(f.name for f in fast)) if fast else None
        # the entry of one float, less its last 4 bytes (the float)
        prefixes = [_map_entry(self._keys[f.name], _feature("FLOAT", [0.0]))[:-4] for f in fast]
        self._fast_pack = struct.Struct("<" + "".join(f"{len(p)}sf" for p in prefixes)).pack
        self._fast_args = [item for prefix in prefixes for item in (prefix, 0.0)]

    def serialize(self, row: Mapping[str, Any]) -> bytes:
        """The Example's wire bytes; ValueError / TypeError when the row does not fit."""
        if not self._names.issuperset(row):
            raise ValueError(f"fields not in the schema: {sorted(set(row) - self._names)}")
        entries = [self._pack_fast(row)]
        get = row.get
        for name, required, entry in self._rest if entries[0] else self._plan:
            value = get(name)
            if value is None:
                if required:
                    raise ValueError(f"REQUIRED field {name!r} is missing")
                continue
            entries.append(entry(value))
        return _delimited(_TAG_1, b"".join(entries))

    def _pack_fast(self, row: Mapping[str, Any]) -> bytes:
        """The single-FLOAT entries in one struct call, or b"" when a value is not a plain
        float (missing, None, int, beyond float32): then the general path encodes every field."""
        if self._fast_get is None:
            return b""
        try:
            values = self._fast_get(row)
        except KeyError:
            return b""
        if set(map(type, values)) != _JUST_FLOAT:
            return b""
        args = self._fast_args.copy()
        args[1::2] = values
        try:
            return self._fast_pack(*args)
        except OverflowError:
            return b""

    def __call__(self, row: Mapping[str, Any]) -> Any:
        """The row as a ``tf.train.Example`` message."""
        from tensorflow.core.example import example_pb2

        return example_pb2.Example.FromString(self.serialize(row))


def row_to_example(row: Mapping[str, Any], schema: RowSchema) -> Any:
    """Encode one row as a ``tf.train.Example`` (see the module doc for the type mapping).

    Raises:
      ValueError / TypeError: the row does not match ``schema``.
    """
    return _ExampleEncoder(schema)(row)


def feature_spec(schema: RowSchema) -> dict[str, Any]:
    """``tf.io.parse_example`` spec matching :func:`row_to_example`.

    REQUIRED scalars are ``FixedLenFeature([])``; NULLABLE and REPEATED are ``VarLenFeature``
    (absent → empty), so a reader decides how to fill gaps.
    """
    import tensorflow as tf

    _check_supported(schema)
    spec = {}
    for field in schema:
        if field.type in _FLOAT_TYPES:
            dtype = tf.float32
        elif field.type in _INT_TYPES:
            dtype = tf.int64
        else:
            dtype = tf.string
        if field.required:
            spec[field.name] = tf.io.FixedLenFeature([], dtype)
        else:
            spec[field.name] = tf.io.VarLenFeature(dtype)
    return spec


class _ToExampleFn(beam.DoFn):
    """Row → Example wire bytes; a row that does not fit the schema → a dead letter."""

    def __init__(self, schema: RowSchema) -> None:
        self._schema = schema
        self._rejected = beam.metrics.Metrics.counter("tfrecord_sink", "rows_rejected")

    def setup(self) -> None:
        self._encode = _ExampleEncoder(self._schema).serialize

    def process(self, row: Mapping[str, Any]):  # noqa: ANN201
        try:
            yield self._encode(row)
        except (TypeError, ValueError) as err:
            yield self._dead_letter(row, err)

    def _dead_letter(self, row: Mapping[str, Any], err: Exception) -> beam.pvalue.TaggedOutput:
        self._rejected.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.from_row(row, "tfrecord", err))


class _ToExamplesFn(_ToExampleFn):
    """A batch of rows → one batch of Example wire bytes (dead letters one by one)."""

    def process(self, rows: list[Mapping[str, Any]]):  # noqa: ANN201
        examples = Batch()
        encode = self._encode
        for row in rows:
            try:
                examples.append(encode(row))
            except (TypeError, ValueError) as err:
                yield self._dead_letter(row, err)
        if examples:
            yield examples


def _write_json(path: str, document: Mapping[str, Any]) -> str:
    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))
    _LOGGER.info("Wrote %s", path)
    return path


def _write_metadata(
    _: Any, schema_json: dict[str, Any], directory: str, transform_dir: str | None, files: Any
):  # noqa: ANN202 - generator of written paths
    del files  # only a side input so the metadata follows the shards
    yield _write_json(FileSystems.join(directory, SCHEMA_FILE), schema_json)
    if transform_dir is not None:
        pointer = {
            "transform_dir": transform_dir,
            "transform_fn": FileSystems.join(transform_dir, "transform_fn"),
            "transformed_metadata": FileSystems.join(transform_dir, "transformed_metadata"),
        }
        yield _write_json(FileSystems.join(directory, TRANSFORM_POINTER_FILE), pointer)


class WriteTFRecords(beam.PTransform):
    """Rows (dicts) → sharded TFRecord files of ``tf.train.Example`` plus the schema beside them.

    Args:
      output_prefix: shards are ``<output_prefix>-SSSSS-of-NNNNN<file_name_suffix>`` (windowed
        names when streaming); local path or ``gs://``.
      schema: the row declaration; decides each feature's list type.
      num_shards: 0 lets the runner choose.
      file_name_suffix: ``.tfrecord`` by default; ending in ``.gz`` writes GZIP-compressed shards
        (read them with ``TFRecordDataset(..., compression_type="GZIP")``).
      transform_dir: where the tf.Transform artifact of this data lives; recorded in
        ``transform.json``.
      triggering_frequency: seconds between file flushes for unbounded input (required there).

    Returns:
      :class:`TFRecordWriteResult`.
    """

    def __init__(
        self,
        output_prefix: str,
        schema: RowSchema,
        *,
        num_shards: int = 0,
        file_name_suffix: str = ".tfrecord",
        transform_dir: str | None = None,
        triggering_frequency: int | None = None,
    ) -> None:
        super().__init__()
        _check_supported(schema)
        if num_shards < 0:
            raise ValueError(f"num_shards must be >= 0, got {num_shards}")
        self._output_prefix = output_prefix
        self._schema = schema
        self._num_shards = num_shards
        self._file_name_suffix = file_name_suffix
        self._transform_dir = transform_dir
        self._triggering_frequency = triggering_frequency
        self._batched = False

    def batched(self) -> WriteTFRecords:
        """The same sink for batches of rows (lists, e.g. ``DecodeAndValidate(...).batched()``).

        Each batch is encoded and written to its bundle's shard file in one go
        (:mod:`transforms.sinks.batch_files`): the same files, without Beam's per-row cost. A
        batch lands in the window of its timestamp (unbounded input) as a whole.
        """
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def expand(self, rows: beam.PCollection) -> TFRecordWriteResult:
        if not rows.is_bounded and not self._triggering_frequency:
            raise ValueError("unbounded input needs triggering_frequency (seconds per file flush)")
        frequency = self._triggering_frequency if not rows.is_bounded else None
        if self._batched:
            encode = beam.ParDo(_ToExamplesFn(self._schema)).with_output_types(Batch)
            write = WriteBatchFiles(
                self._output_prefix,
                tfrecord_frames,
                file_name_suffix=self._file_name_suffix,
                num_shards=self._num_shards,
                triggering_frequency=frequency,
            )
        else:
            encode = beam.ParDo(_ToExampleFn(self._schema))
            write = WriteToTFRecord(
                self._output_prefix,
                file_name_suffix=self._file_name_suffix,
                num_shards=self._num_shards,
                triggering_frequency=frequency,
            )
        encoded = rows | "ToExample" >> encode.with_outputs(DEAD_LETTER_TAG, main="examples")
        files = encoded.examples | "WriteShards" >> write
        directory = FileSystems.split(self._output_prefix)[0]
        # Bounded: after the shards are final. Unbounded: once at start (files never "end").
        after = beam.pvalue.AsList(files) if rows.is_bounded else None
        metadata = (
            rows.pipeline
            | "MetadataTrigger" >> beam.Create([None])
            | "WriteMetadata"
            >> beam.FlatMap(
                _write_metadata,
                self._schema.to_bigquery_json(),
                directory,
                self._transform_dir,
                after,
            )
        )
        return TFRecordWriteResult(files, metadata, encoded[DEAD_LETTER_TAG])
