"""An open Parquet file fed Arrow tables: large row groups, written on a background thread.

Why large row groups: a row group per polled batch (~1,000 rows, as Beam's
``WriteToParquetBatched`` writes one per element) made files 3× larger (a dictionary page per
column per group: 52.7 vs 16.7 MB for 200k card events) and 3× slower to write (0.39 vs 0.13 s).
Here tables are buffered and written as one row group per ``row_group_rows`` rows.

Why a background thread: encoding, compressing and uploading a row group run in pyarrow's C++
and the storage client's socket calls, which release the GIL; on their own thread they overlap
the caller's decoding of the next rows (~0.15 s of a 200k-event export). One group is written at
a time, so memory stays at about two row groups; a write error is raised by the next
:meth:`~ParquetBatchWriter.add` or by :meth:`~ParquetBatchWriter.close`.

Usage::

    writer = ParquetBatchWriter(FileSystems.create(path), schema)
    for table in tables:
        writer.add(table)
    writer.close()  # the last rows, the footer, and the handle closed
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ParquetBatchWriter", "ROW_GROUP_ROWS"]

#: Rows per row group: large enough for compact dictionary pages, ~20 MB of card events.
ROW_GROUP_ROWS = 65_536


class ParquetBatchWriter:
    """Writes the tables added to it into ``handle`` (any writable binary file object, which it
    closes) as snappy-compressed row groups of ``row_group_rows`` rows."""

    def __init__(
        self, handle: Any, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS
    ) -> None:
        if row_group_rows <= 0:
            raise ValueError(f"row_group_rows must be positive, got {row_group_rows}")
        self._handle = handle
        self._writer = pq.ParquetWriter(handle, schema, compression="snappy")
        self._row_group_rows = row_group_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="parquet-writer")
        self._writing: Future | None = None

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; hand each full row group to the writing thread."""
        if not table.num_rows:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._row_group_rows:
            pending = pa.concat_tables(self._pending)
            full = pending.num_rows // self._row_group_rows * self._row_group_rows
            self._write(pending.slice(0, full))
            self._pending = [pending.slice(full)]
            self._pending_rows = pending.num_rows - full

    def close(self) -> None:
        """Write what is buffered and the footer, then close the handle."""
        try:
            if self._pending_rows:
                self._write(pa.concat_tables(self._pending))
            self._finish_write()
            self._writer.close()
            self._handle.close()
        finally:
            self._thread.shutdown(wait=True)

    def abort(self) -> None:
        """Stop without writing more (a failed bundle): the file is left incomplete."""
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _write(self, table: pa.Table) -> None:
        self._finish_write()  # one group in flight: bounded memory, errors surface here
        self._writing = self._thread.submit(self._writer.write_table, table, self._row_group_rows)

    def _finish_write(self) -> None:
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()
