"""Rows → Arrow tables for Parquet load files: the same table from every batch form."""

from __future__ import annotations

import datetime
import decimal
import json

import pytest

from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord
from transforms.sinks.arrow_tables import ArrowTables, arrow_schema
from transforms.sinks.bigquery_loads import JSON_LINES, PARQUET, LoadBatchesToBigQuery
from transforms.sinks.gcp_endpoints import GcpEndpoints

SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "my-f", "type": "FLOAT", "mode": "NULLABLE"},  # a renamed struct attribute
        {"name": "i", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "b", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "n", "type": "NUMERIC", "mode": "NULLABLE"},
    ]
)
EVENTS = [
    {"id": "a", "my-f": 1, "i": 7, "b": True, "t": "2026-12-05T01:02:03.5+01:00", "n": "1.25"},
    {"id": "b", "my-f": None, "t": "0001-01-01T00:00:00Z", "n": -3},
]


def test_the_table_is_the_same_from_structs_dicts_and_pairs() -> None:
    validator = RowValidator(SCHEMA)
    payloads = [json.dumps(event).encode() for event in EVENTS]
    columns = validator.decode_json_columns(payloads)
    rows = validator.decode_json_fast_all(payloads)
    record = KafkaRecord("t", 0, 0, None, b"", 0)
    tables = ArrowTables(SCHEMA)
    table = tables(columns)
    assert table.equals(tables(rows)) and table.equals(tables([(record, r) for r in rows]))
    assert table.schema == arrow_schema(SCHEMA) and not table.schema.field("id").nullable
    assert table.to_pylist() == [
        {"id": "a", "my-f": 1.0, "i": 7, "b": True, "n": decimal.Decimal("1.250000000"),
         "t": datetime.datetime(2026, 12, 5, 0, 2, 3, 500000, tzinfo=datetime.UTC)},
        {"id": "b", "my-f": None, "i": None, "b": None, "n": decimal.Decimal("-3.000000000"),
         "t": datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)},
    ]  # fmt: skip
    assert tables([]).num_rows == 0 and tables([]).schema == table.schema


@pytest.mark.parametrize(
    "field",
    [
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
        {"name": "pos", "type": "RECORD", "fields": [{"name": "lat", "type": "FLOAT"}]},
        {"name": "raw", "type": "BYTES"},  # the emulator cannot load Parquet BYTES
    ],
)
def test_schemas_without_flat_parquet_columns_load_as_json(field) -> None:
    schema = RowSchema.from_bigquery_json([{"name": "id", "type": "STRING"}, field])
    assert arrow_schema(schema) is None
    with pytest.raises(ValueError, match="no Parquet load column"):
        ArrowTables(schema)
    endpoints = GcpEndpoints(project="p")
    load = LoadBatchesToBigQuery("p.d.t", schema.to_bigquery_json(), endpoints=endpoints,
                                 temp_location="/tmp")  # fmt: skip
    assert load._source_format == JSON_LINES
    with pytest.raises(ValueError, match="PARQUET loads need"):
        LoadBatchesToBigQuery("p.d.t", schema.to_bigquery_json(), endpoints=endpoints,
                              temp_location="/tmp", source_format=PARQUET)  # fmt: skip
    flat = LoadBatchesToBigQuery("p.d.t", SCHEMA.to_bigquery_json(), endpoints=endpoints,
                                 temp_location="/tmp")  # fmt: skip
    assert flat._source_format == PARQUET
