"""Where the trainer's raw rows come from: exported TFRecords, a BigQuery table, or Kafka itself.

All three give the same thing: a :class:`RowSchema` and a list of decoded rows (``dict`` of Python
values, the row contract), small enough for memory (the autoencoder trains on tens of thousands of
rows). Paths may be local or ``gs://``: files are read through Beam's ``FileSystems`` (which honours
the storage emulator), not TensorFlow's own GCS client.

Training "straight from Kafka" (the design's no-data-lake option) runs a bounded Beam pipeline —
the project's ``ReadFromKafka`` from the chosen start up to the end offsets at launch, then
``DecodeAndValidate`` — that stages the rows as TFRecords in a scratch directory; the trainer then
parses them back (``tf.io.parse_example``) like any export. Messages that fail to decode are
written as dead letters (JSON lines) beside the staged rows and counted, never silently dropped.

Usage::

    schema, rows = rows_from_tfrecords("gs://bucket/export/data/part-*")
    schema, rows = rows_from_bigquery("project:dataset.table", endpoints)
    schema, rows = rows_from_kafka(source, "/tmp/staging")
"""

from __future__ import annotations

import datetime
import logging
import posixpath
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from pipelines.common.row_source import DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES, RowSource
from transforms.decoding.schema import RowSchema
from transforms.sinks.gcp_endpoints import GcpEndpoints
from transforms.sinks.tfrecord import SCHEMA_FILE, WriteTFRecords, feature_spec
from transforms.size_limits import FitDeadLetters

__all__ = ["rows_from_tfrecords", "rows_from_bigquery", "rows_from_kafka", "KafkaStagingError"]

_LOGGER = logging.getLogger(__name__)

_PARSE_BATCH = 4096


class KafkaStagingError(RuntimeError):
    """The bounded Kafka read produced no usable rows."""


def _match(pattern: str) -> list[str]:
    files = sorted(
        metadata.path
        for result in FileSystems.match([pattern])
        for metadata in result.metadata_list
        if not metadata.path.endswith(".json")
    )
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    return files


def _serialized_examples(files: Sequence[str]) -> list[bytes]:
    records = []
    for path in files:
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
            while (record := _TFRecordUtil.read_record(handle)) is not None:
                records.append(record)
    return records


def _python(value: Any, field_type: str) -> Any:
    if isinstance(value, bytes):
        return value if field_type == "BYTES" else value.decode("utf-8")
    if field_type == "BOOLEAN":
        return bool(value)
    return value.item() if isinstance(value, np.generic) else value


def _batch_rows(parsed: dict[str, Any], schema: RowSchema) -> list[dict[str, Any]]:
    size = None
    columns: dict[str, list[Any]] = {}
    for field in schema:
        value = parsed[field.name]
        if isinstance(value, tf.SparseTensor):
            size = int(value.dense_shape[0])
            column: list[Any] = [None] * size
            for (row, _), item in zip(value.indices.numpy(), value.values.numpy(), strict=True):
                column[row] = _python(item, field.type)
        else:
            column = [_python(item, field.type) for item in value.numpy()]
            size = len(column)
        columns[field.name] = column
    return [{name: columns[name][i] for name in columns} for i in range(size or 0)]


def schema_beside(pattern: str) -> RowSchema | None:
    """The ``schema.json`` the TFRecord sink writes beside its shards, if there is one."""
    path = posixpath.join(posixpath.dirname(pattern), SCHEMA_FILE)
    return RowSchema.load(path) if FileSystems.exists(path) else None


def rows_from_tfrecords(
    pattern: str, schema: RowSchema | None = None
) -> tuple[RowSchema, list[dict[str, Any]]]:
    """Rows of the ``tf.Example`` shards matching ``pattern`` (schema: given or beside them)."""
    files = _match(pattern)
    schema = schema or schema_beside(pattern)
    if schema is None:
        raise ValueError(
            f"no {SCHEMA_FILE} beside {pattern!r}: pass --schemaPath with the rows' schema"
        )
    serialized = _serialized_examples(files)
    spec = feature_spec(schema)
    # Parsed batch by batch in eager mode, not through a tf.data map: TensorFlow 2.21's map
    # logs an E-level "NodeDef mentions attribute use_unbounded_threadpool" at every run.
    rows = [
        row
        for start in range(0, len(serialized), _PARSE_BATCH)
        for row in _batch_rows(
            tf.io.parse_example(tf.constant(serialized[start : start + _PARSE_BATCH]), spec),
            schema,
        )
    ]
    _LOGGER.info("Read %d rows from %d TFRecord files matching %s", len(rows), len(files), pattern)
    return schema, rows


def _bigquery_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def rows_from_bigquery(
    table: str, endpoints: GcpEndpoints
) -> tuple[RowSchema, list[dict[str, Any]]]:
    """All rows of ``table`` (``project:dataset.table`` or ``project.dataset.table``)."""
    client = endpoints.bigquery_client()
    table_id = table.replace(":", ".", 1) if ":" in table else table
    found = client.get_table(table_id, retry=endpoints.bigquery_retry)
    schema = RowSchema.from_bigquery_json([field.to_api_repr() for field in found.schema])
    rows = [
        {name: _bigquery_value(value) for name, value in row.items()}
        for row in client.list_rows(found, retry=endpoints.bigquery_retry)
    ]
    _LOGGER.info("Read %d rows from BigQuery table %s", len(rows), table_id)
    return schema, rows


def _dead_letter_line(letter: Any) -> str:
    return letter.to_json().decode("utf-8")


def _dead_letter_payload_cap(source: RowSource) -> int:
    return source.values.get("deadLetterMaxPayloadBytes") or DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES


def build_staging_pipeline(p: beam.Pipeline, source: RowSource, staging_dir: str) -> Any:
    """Kafka (bounded) → decode → TFRecords and dead-letter JSON lines under ``staging_dir``."""
    decoded = source.read_and_decode(p)
    written = decoded.rows | "StageRows" >> WriteTFRecords(
        FileSystems.join(staging_dir, "rows", "part"), source.schema, num_shards=1
    )
    letters = (
        (decoded.dead_letters, written.dead_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "FitDeadLetters" >> FitDeadLetters(_dead_letter_payload_cap(source))
        | "DeadLetterJson" >> beam.Map(_dead_letter_line)
        | "WriteDeadLetters"
        >> beam.io.WriteToText(FileSystems.join(staging_dir, "dead_letters", "part"), ".jsonl")
    )
    return written, letters


def _count_lines(pattern: str) -> int:
    count = 0
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            with FileSystems.open(metadata.path) as handle:
                count += sum(1 for line in handle.read().splitlines() if line.strip())
    return count


def rows_from_kafka(
    source: RowSource, staging_dir: str, pipeline_options: Any = None
) -> tuple[RowSchema, list[dict[str, Any]]]:
    """Read the topic from the chosen start to the end offsets at launch; rows in memory.

    Raises:
      KafkaStagingError: the read produced no valid row.
    """
    with beam.Pipeline(options=pipeline_options) as p:
        build_staging_pipeline(p, source, staging_dir)
    rejected = _count_lines(FileSystems.join(staging_dir, "dead_letters", "part*"))
    if rejected:
        _LOGGER.warning(
            "%d Kafka messages were rejected while staging; see %s/dead_letters",
            rejected,
            staging_dir,
        )
    try:
        schema, rows = rows_from_tfrecords(
            FileSystems.join(staging_dir, "rows", "part*"), source.schema
        )
    except FileNotFoundError as err:
        raise KafkaStagingError(f"no rows staged from Kafka: {err}") from err
    if not rows:
        raise KafkaStagingError(
            f"topic {source.values['inputTopic']!r} gave no valid rows "
            f"({rejected} rejected) between the start position and the end at launch"
        )
    return schema, rows
