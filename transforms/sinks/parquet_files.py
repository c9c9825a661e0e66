"""Write Arrow tables (a batch of rows each) into sharded Parquet files, large row groups.

Why not Beam's ``WriteToParquetBatched``: it writes each element as its own row group, and a
row group per polled batch (~1,000 rows) made files 3× larger (a dictionary page per column per
group: 52.7 vs 16.7 MB for 200k card events) and 3× slower to write (0.39 vs 0.13 s). Here a
bundle's tables are buffered and written as one row group per ``row_group_rows`` rows.

Durability is Beam's ``FileBasedSink`` protocol, as in :mod:`transforms.sinks.batch_files`: a
bundle writes a temporary file, renamed to its final shard name only when the bundle commits.

Usage::

    files = tables | WriteParquetBatches("gs://bucket/out/part", schema)
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.iobase import Write

__all__ = ["WriteParquetBatches", "ROW_GROUP_ROWS"]

#: Rows per row group: large enough for compact dictionary pages, ~20 MB of card events.
ROW_GROUP_ROWS = 65_536


class _ParquetWriter:
    """One open file: a pyarrow writer plus the tables not yet written as a row group."""

    def __init__(self, handle: Any, schema: pa.Schema, row_group_rows: int) -> None:
        self.handle = handle
        self._writer = pq.ParquetWriter(handle, schema, compression="snappy")
        self._row_group_rows = row_group_rows
        self._pending: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= self._row_group_rows:
            pending = pa.concat_tables(self._pending)
            size = self._row_group_rows
            full = pending.num_rows // size * size
            self._writer.write_table(pending.slice(0, full), size)
            self._pending = [pending.slice(full)]
            self._rows = pending.num_rows - full

    def close(self) -> None:
        if self._rows:
            self._writer.write_table(pa.concat_tables(self._pending))
        self._writer.close()


class _ParquetBatchSink(filebasedsink.FileBasedSink):
    """A FileBasedSink of Arrow tables, buffered into row groups per open file."""

    def __init__(
        self, file_path_prefix: str, schema: pa.Schema, row_group_rows: int, **kwargs: Any
    ) -> None:
        super().__init__(
            file_path_prefix,
            coder=None,
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its pages
            **kwargs,
        )
        self._schema = schema
        self._row_group_rows = row_group_rows

    def open(self, temp_path: str) -> _ParquetWriter:
        return _ParquetWriter(super().open(temp_path), self._schema, self._row_group_rows)

    def write_record(self, file_handle: _ParquetWriter, value: pa.Table) -> None:
        if value.num_rows:
            file_handle.add(value)

    def close(self, file_handle: _ParquetWriter) -> None:
        file_handle.close()
        file_handle.handle.close()


class WriteParquetBatches(beam.PTransform):
    """Arrow tables of ``schema`` → Parquet shard files; returns the final file names.

    Args:
      file_path_prefix: files are ``<prefix>-SSSSS-of-NNNNN<suffix>``; local or ``gs://``.
      schema: every table's schema.
      file_name_suffix: ``.parquet`` by default.
      num_shards: 0 writes one file per bundle.
      row_group_rows: rows buffered per row group.
    """

    def __init__(
        self,
        file_path_prefix: str,
        schema: pa.Schema,
        *,
        file_name_suffix: str = ".parquet",
        num_shards: int = 0,
        row_group_rows: int = ROW_GROUP_ROWS,
    ) -> None:
        super().__init__()
        if row_group_rows <= 0:
            raise ValueError(f"row_group_rows must be positive, got {row_group_rows}")
        self._sink = _ParquetBatchSink(
            file_path_prefix,
            schema,
            row_group_rows,
            file_name_suffix=file_name_suffix,
            num_shards=num_shards,
            mime_type="application/octet-stream",
        )

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        if not tables.is_bounded:
            raise ValueError("WriteParquetBatches needs bounded input")
        return tables | "Write" >> Write(self._sink)
