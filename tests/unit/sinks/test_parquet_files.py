"""Arrow tables → Parquet shard files with row groups of the asked size."""

from __future__ import annotations

import glob

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.sinks.parquet_files import WriteParquetBatches

SCHEMA = pa.schema([pa.field("id", pa.string(), False), pa.field("x", pa.float64())])


def _table(start: int, rows: int) -> pa.Table:
    ids = [f"e-{i}" for i in range(start, start + rows)]
    return pa.table({"id": ids, "x": [i / 2 if i % 3 else None for i in range(rows)]}, SCHEMA)


def test_tables_land_in_one_file_in_row_groups_of_the_asked_size(tmp_path) -> None:
    tables = [_table(0, 40), _table(40, 0), _table(40, 35), _table(75, 30)]
    prefix = str(tmp_path / "rows")
    with TestPipeline() as p:
        files = (
            p
            | beam.Create([tables], reshuffle=False)
            | beam.FlatMap(list)
            | (WriteParquetBatches(prefix, SCHEMA, num_shards=1, row_group_rows=50))
        )
        assert_that(files | beam.Map(lambda f: f.rsplit("/", 1)[-1]),
                    equal_to(["rows-00000-of-00001.parquet"]))  # fmt: skip
    (path,) = glob.glob(prefix + "*.parquet")
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == SCHEMA
    # full groups of 50 as the rows arrive; the last 5 when the file closes
    groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    assert groups == [50, 50, 5]
    assert parquet.read().equals(pa.concat_tables(tables))


def test_a_row_group_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="row_group_rows"):
        WriteParquetBatches("/tmp/x", SCHEMA, row_group_rows=0)
