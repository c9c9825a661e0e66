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
from collections.abc import Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import WriteToTFRecord

from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.columnar import StructRows
from transforms.decoding.schema import RowSchema
from transforms.sinks.batch_files import WriteBatchFiles, tfrecord_frames
from transforms.sinks.example_wire import FLOAT_TYPES, INT_TYPES, ExampleEncoder, check_supported

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


class TFRecordWriteResult(NamedTuple):
    """``files``: the final shard names; ``metadata_files``: schema/transform JSON written;
    ``dead_letters``: rows that could not be encoded."""

    files: beam.PCollection
    metadata_files: beam.PCollection
    dead_letters: beam.PCollection


def row_to_example(row: Mapping[str, Any], schema: RowSchema) -> Any:
    """Encode one row as a ``tf.train.Example`` (see the module doc for the type mapping).

    Raises:
      ValueError / TypeError: the row does not match ``schema``.
    """
    return ExampleEncoder(schema)(row)


def feature_spec(schema: RowSchema) -> dict[str, Any]:
    """``tf.io.parse_example`` spec matching :func:`row_to_example`.

    REQUIRED scalars are ``FixedLenFeature([])``; NULLABLE and REPEATED are ``VarLenFeature``
    (absent → empty), so a reader decides how to fill gaps.
    """
    import tensorflow as tf

    check_supported(schema)
    spec = {}
    for field in schema:
        if field.type in FLOAT_TYPES:
            dtype = tf.float32
        elif field.type in INT_TYPES:
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
        self._encoder = ExampleEncoder(self._schema)
        self._encode = self._encoder.serialize

    def process(self, row: Mapping[str, Any]):  # noqa: ANN201
        try:
            yield self._encode(row)
        except (TypeError, ValueError) as err:
            yield self._dead_letter(row, err)

    def _dead_letter(self, row: Mapping[str, Any], err: Exception) -> beam.pvalue.TaggedOutput:
        self._rejected.inc()
        return beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter.from_row(row, "tfrecord", err))


class _ToExamplesFn(_ToExampleFn):
    """A batch of rows → one batch of Example wire bytes (dead letters one by one); a batch
    kept column-wise is encoded column-wise."""

    def process(self, rows: list[Mapping[str, Any]]):  # noqa: ANN201
        if type(rows) is StructRows:  # column-wise, unless a row needs the row path
            encoded = self._encoder.serialize_columns(rows)
            if encoded is not None:
                if encoded:
                    yield Batch(encoded)
                return
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
        check_supported(schema)
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
