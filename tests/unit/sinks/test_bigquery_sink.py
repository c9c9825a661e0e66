"""WriteRowsToBigQuery / WriteDeadLettersToBigQuery against an in-process fake insertAll client.

The fake plays BigQuery's ``insertAll`` contract (per-row errors with a reason, dedupe by insert
id); the real emulator is exercised in tests/integration/test_kafka_to_bigquery.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid

import apache_beam as beam
import pytest
from apache_beam.io.gcp.bigquery import BigQueryDisposition
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.dead_letter import DeadLetter
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord
from transforms.sinks.bigquery import (
    BigQueryTransientError,
    WriteDeadLettersToBigQuery,
    WriteRowsToBigQuery,
    insert_id_for,
)

SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "Amount", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "raw", "type": "BYTES", "mode": "NULLABLE"},
    ]
)

_TABLES: dict[str, dict[str, dict]] = {}  # fake name → {insert id: row}; shared in-process
_LOCK = threading.Lock()


class FakeInsertAllClient:
    """insertAll semantics: a non-number Amount is ``invalid``; ids in ``flaky`` fail
    ``flaky_times`` times with ``backendError``; rows with a seen insert id are deduped."""

    def __init__(self, flaky: tuple[str, ...] = (), flaky_times: int = 1) -> None:
        self.name = uuid.uuid4().hex
        self.flaky = flaky
        self.flaky_times = flaky_times
        _TABLES[self.name] = {}
        _TABLES[self.name + "/attempts"] = {}

    @property
    def rows(self) -> dict[str, dict]:
        return _TABLES[self.name]

    def insert_rows_json(self, table, json_rows, row_ids, **kwargs):  # noqa: ANN001, ANN201
        assert table.startswith("test-project.ds."), table
        assert len(json.dumps(json_rows)) < 10_000_000, "insertAll request over BigQuery's limit"
        errors = []
        with _LOCK:
            attempts = _TABLES[self.name + "/attempts"]
            for index, (row, row_id) in enumerate(zip(json_rows, row_ids, strict=True)):
                attempts[row_id] = attempts.get(row_id, 0) + 1
                if row_id in self.flaky and attempts[row_id] <= self.flaky_times:
                    errors.append({"index": index, "errors": [{"reason": "backendError"}]})
                elif "Amount" in row and not isinstance(row["Amount"], int | float):
                    errors.append(
                        {
                            "index": index,
                            "errors": [
                                {
                                    "reason": "invalid",
                                    "location": "Amount",
                                    "message": "not a FLOAT",
                                }
                            ],
                        }
                    )
                else:
                    self.rows.setdefault(row_id, row)
        return errors


@dataclasses.dataclass(frozen=True)
class FakeEndpoints:
    client: FakeInsertAllClient
    project: str = "test-project"

    bigquery_retry = None

    def bigquery_client(self) -> FakeInsertAllClient:
        return self.client


def _record(offset: int, value: bytes) -> KafkaRecord:
    return KafkaRecord("payments", 1, offset, b"card", value, 1_700_000_000_000)


def _write(rows, client, **kwargs):  # noqa: ANN001, ANN202
    return rows | WriteRowsToBigQuery(
        "ds.events",
        SCHEMA,
        endpoints=FakeEndpoints(client),
        create_disposition=BigQueryDisposition.CREATE_NEVER,
        initial_backoff_s=0.01,
        **kwargs,
    )


def test_pairs_insert_with_kafka_ids_and_rejected_rows_keep_raw_bytes():
    client = FakeInsertAllClient(flaky=("payments/1/11",))
    pairs = [
        (_record(10, b'{"event_id":"a"}'), {"event_id": "a", "Amount": 1.0, "raw": b"\x01"}),
        (_record(11, b'{"event_id":"b"}'), {"event_id": "b", "Amount": 2.5}),
        (_record(12, b'{"event_id":"c"}'), {"event_id": "c", "Amount": "lots"}),
    ]
    with TestPipeline() as p:
        result = _write(p | beam.Create(pairs), client, batch_size=2)
        assert_that(
            result.dead_letters
            | beam.Map(
                lambda d: (d.stage, d.error_type, d.payload, d.topic, d.partition, d.offset)
            ),
            equal_to([("bigquery", "invalid", b'{"event_id":"c"}', "payments", 1, 12)]),
        )
    assert client.rows == {
        "payments/1/10": {"event_id": "a", "Amount": 1.0, "raw": "AQ=="},
        "payments/1/11": {"event_id": "b", "Amount": 2.5},  # retried after a backendError
    }


def test_replayed_records_dedupe_on_their_insert_ids():
    client = FakeInsertAllClient()
    pairs = [(_record(i, b"x"), {"event_id": str(i), "Amount": float(i)}) for i in range(5)]
    for _ in range(2):  # a replay after a crash sends the same records again
        with TestPipeline() as p:
            _write(p | beam.Create(pairs), client)
    assert sorted(client.rows) == [insert_id_for(record) for record, _ in pairs]


def test_plain_rows_use_insert_id_fn_and_dead_letter_the_row_as_json():
    client = FakeInsertAllClient()
    rows = [{"event_id": "a", "Amount": 1.0}, {"event_id": "b", "Amount": None}]
    with TestPipeline() as p:
        result = _write(p | beam.Create(rows), client, insert_id_fn=lambda r: r["event_id"])
        assert_that(
            result.dead_letters | beam.Map(lambda d: (d.error_type, json.loads(d.payload))),
            equal_to([("invalid", {"event_id": "b", "Amount": None})]),
        )
    assert client.rows == {"a": {"event_id": "a", "Amount": 1.0}}


def test_persistent_transient_errors_fail_the_bundle_instead_of_hanging():
    client = FakeInsertAllClient(flaky=("payments/1/0",), flaky_times=100)
    with pytest.raises(BigQueryTransientError, match="still failing after 2 retries"):
        with TestPipeline() as p:
            _write(
                p | beam.Create([(_record(0, b"x"), {"event_id": "a", "Amount": 1.0})]),
                client,
                max_retries=2,
            )


def test_dead_letters_go_in_with_stage_salted_ids():
    client = FakeInsertAllClient()
    letters = [
        DeadLetter.from_record(
            _record(7, b"\xff"),
            "decode",
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        ),
        DeadLetter("tfrecord", "TypeError", "bad", b"{}"),
    ]
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create(letters)
            | WriteDeadLettersToBigQuery(
                "ds.dead",
                endpoints=FakeEndpoints(client),
                create_disposition=BigQueryDisposition.CREATE_NEVER,
            )
        )
    by_stage = {row["stage"]: (row_id, row) for row_id, row in client.rows.items()}
    assert by_stage["decode"][0] == "payments/1/7/decode"
    assert by_stage["decode"][1]["payload"] == "/w=="
    assert by_stage["decode"][1]["error_type"] == "UnicodeDecodeError"
    assert by_stage["tfrecord"][1]["payload"] == "e30="


def test_requests_stay_under_the_payload_limit_and_oversize_rows_are_dead_letters():
    client = FakeInsertAllClient()
    blob = b"x" * 900_000  # ~1.2 MB once base64-encoded in JSON
    rows = [{"event_id": str(i), "Amount": 1.0, "raw": blob} for i in range(12)]
    huge = {"event_id": "huge", "Amount": 1.0, "raw": b"x" * 7_000_000}
    with TestPipeline() as p:
        result = _write(
            p | beam.Create([*rows, huge]), client, insert_id_fn=lambda r: r["event_id"]
        )
        assert_that(
            result.dead_letters
            | beam.Map(lambda d: (d.error_type, json.loads(d.payload)["event_id"])),
            equal_to([("RowTooLarge", "huge")]),
        )
    assert sorted(client.rows) == sorted(str(i) for i in range(12))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "STORAGE_WRITE_API"}, "method must be one of"),
        ({"write_disposition": "WRITE_TRUNCATE"}, "only appends"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WriteRowsToBigQuery("ds.events", SCHEMA, **kwargs)


def test_table_without_project_needs_one_configured():
    with pytest.raises(ValueError, match="names no project"):
        with TestPipeline() as p:
            _ = (
                p
                | beam.Create([{"event_id": "a", "Amount": 1.0}])
                | WriteRowsToBigQuery("ds.events", SCHEMA)
            )


def test_load_file_lines_are_the_streaming_rows_as_json_lines():
    from transforms.sinks.bigquery import _json_row
    from transforms.sinks.bigquery_loads import _json_lines

    rows = [
        {"event_id": "a", "Amount": 1.5, "raw": b"\x00\xff", "tags": ["x"], "n": None},
        {"event_id": "b", "Amount": 2.0, "nested": {"raw": b"\x01"}},
    ]
    lines = _json_lines(rows).decode().splitlines()
    assert [json.loads(line) for line in lines] == [_json_row(row) for row in rows]
    record = KafkaRecord("t", 0, 1, None, b"{}", 0)
    assert _json_lines([(record, row) for row in rows]) == _json_lines(rows)


def test_load_file_lines_of_rows_kept_column_wise_are_those_of_the_row_dicts():
    from transforms.decoding.row_validation import RowValidator
    from transforms.sinks.bigquery_loads import _json_lines

    schema = RowSchema.from_bigquery_json(
        [
            {"name": "event-id", "type": "STRING", "mode": "REQUIRED"},  # a renamed attribute
            {"name": "class", "type": "FLOAT", "mode": "NULLABLE"},
            {"name": "raw", "type": "BYTES", "mode": "NULLABLE"},
            {"name": "at", "type": "TIMESTAMP", "mode": "NULLABLE"},
            {"name": "price", "type": "NUMERIC", "mode": "NULLABLE"},
        ]
    )
    payloads = [
        b'{"event-id": "a", "class": 1, "raw": "AP8=", "at": "2026-12-05T01:02:03+01:00"}',
        b'{"event-id": "b", "price": 12.5, "class": null}',
    ]
    columns = RowValidator(schema).decode_json_columns(payloads)
    assert columns is not None
    assert _json_lines(columns) == _json_lines(list(columns))
