"""Arrow tables → one Parquet file in row groups of the asked size, written off the caller's
thread; a failed write surfaces in the caller."""

from __future__ import annotations

import io
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.sinks.parquet_files import ParquetBatchWriter

SCHEMA = pa.schema([pa.field("id", pa.string(), False), pa.field("x", pa.float64())])


def _table(start: int, rows: int) -> pa.Table:
    ids = [f"e-{i}" for i in range(start, start + rows)]
    return pa.table({"id": ids, "x": [i / 2 if i % 3 else None for i in range(rows)]}, SCHEMA)


class _Handle(io.BytesIO):
    """A file object that keeps its bytes after close and records the writing threads."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.data = b""
        self._fail_after = fail_after

    def write(self, data) -> int:  # noqa: ANN001
        self.threads.add(threading.current_thread().name)
        if self._fail_after is not None and self.tell() + len(data) > self._fail_after:
            raise OSError("disk full")
        return super().write(data)

    def close(self) -> None:
        self.data = self.getvalue()
        super().close()


def test_tables_land_in_row_groups_of_the_asked_size_written_off_the_callers_thread() -> None:
    tables = [_table(0, 40), _table(40, 0), _table(40, 35), _table(75, 30)]
    handle = _Handle()
    writer = ParquetBatchWriter(handle, SCHEMA, row_group_rows=50)
    for table in tables:
        writer.add(table)
    writer.close()
    assert handle.closed
    parquet = pq.ParquetFile(io.BytesIO(handle.data))
    assert parquet.metadata.num_rows == 105
    assert parquet.schema_arrow == SCHEMA
    # full groups of 50 as the rows arrive; the last 5 when the file closes
    groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    assert groups == [50, 50, 5]
    assert parquet.read().equals(pa.concat_tables(tables))
    assert any(name.startswith("parquet-writer") for name in handle.threads)


def test_a_failed_write_is_raised_to_the_caller() -> None:
    writer = ParquetBatchWriter(_Handle(fail_after=100), SCHEMA, row_group_rows=50)
    with pytest.raises(OSError, match="disk full"):
        for start in range(0, 1000, 50):  # the error of one group's write, at a later call
            writer.add(_table(start, 50))
        writer.close()


def test_an_aborted_writer_stops_without_closing_the_file() -> None:
    handle = _Handle()
    writer = ParquetBatchWriter(handle, SCHEMA, row_group_rows=50)
    writer.add(_table(0, 120))
    writer.abort()
    assert not handle.closed


def test_a_row_group_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="row_group_rows"):
        ParquetBatchWriter(_Handle(), SCHEMA, row_group_rows=0)
