"""tf.Example bytes from batches kept column-wise: byte for byte those of the row path."""

from __future__ import annotations

import glob
import json
import random

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.decoding.columnar import StructRows
from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing.filter_project import Filter
from transforms.sinks.example_wire import ExampleEncoder
from transforms.sinks.tfrecord import WriteTFRecords

# Every scalar type, packed FLOAT fields in two runs (a-c, then z), odd names (renamed
# attributes), NULLABLE fields of each kind.
SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "a", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "b", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "c-c", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "note", "type": "STRING", "mode": "NULLABLE"},
        {"name": "n", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "flag", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "at", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "raw", "type": "BYTES", "mode": "NULLABLE"},
        {"name": "price", "type": "NUMERIC", "mode": "NULLABLE"},
        {"name": "z", "type": "FLOAT", "mode": "NULLABLE"},
    ]
)
TEXTS = ["", "x", "é€😀", "y" * 119, "y" * 120, "w" * 20_000]  # one-, two-, three-byte lengths
INTEGERS = [0, 1, 127, 128, -1, 2**40, -(2**63), 2**63 - 1]


def _event(rng: random.Random, i: int) -> dict:
    event = {"id": f"e-{i}", "a": rng.uniform(-1e30, 1e30), "b": rng.choice([0, 3, -2.5]),
             "c-c": rng.random(), "z": rng.random()}  # fmt: skip
    optional = {
        "note": rng.choice(TEXTS),
        "n": rng.choice(INTEGERS),
        "flag": rng.choice([True, False]),
        "at": "2026-12-05T01:02:03.5+01:00",
        "raw": "AP8=",
        "price": rng.choice(["12.5", 7]),
    }
    event.update({k: v for k, v in optional.items() if rng.random() < 0.7})
    if rng.random() < 0.3:
        event.update(dict.fromkeys(rng.sample(sorted(optional), 2)))  # explicit nulls
    return event


def _columns(events: list[dict]) -> StructRows:
    rows = RowValidator(SCHEMA).decode_json_columns([json.dumps(e).encode() for e in events])
    assert rows is not None
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_column_wise_examples_are_the_row_paths_bytes(seed: int) -> None:
    rng = random.Random(seed)
    rows = _columns([_event(rng, i) for i in range(300)])
    encoder = ExampleEncoder(SCHEMA)
    expected = [encoder.serialize(row) for row in rows]
    assert encoder.serialize_columns(rows) == expected
    assert encoder.serialize_columns(rows[:1]) == expected[:1]
    assert encoder.serialize_columns(rows[:0]) == []
    # and protobuf reads them as the rows
    parsed = tf.train.Example.FromString(expected[0]).features.feature
    assert parsed["id"].bytes_list.value == [b"e-0"]


def test_rows_the_packed_path_cannot_take_go_row_by_row() -> None:
    rng = random.Random(7)
    events = [_event(rng, i) for i in range(5)]
    encoder = ExampleEncoder(SCHEMA)
    # a null in a packed FLOAT field, a float beyond float32: the row path orders those fields
    # differently, so the batch is left to it
    assert encoder.serialize_columns(_columns([*events, {**events[0], "z": None}])) is None
    assert encoder.serialize_columns(_columns([*events, {**events[0], "a": 1e39}])) is None
    assert encoder.serialize_columns(_columns(events)) is not None
    # rows of another schema: the row path names the fields
    other = RowSchema.from_bigquery_json([{"name": "id", "type": "STRING", "mode": "REQUIRED"}])
    assert ExampleEncoder(other).serialize_columns(_columns(events)) is None
    with pytest.raises(ValueError, match="not in the schema"):
        ExampleEncoder(other).serialize(_columns(events)[0])


def _record(value: bytes, offset: int) -> KafkaRecord:
    return KafkaRecord("t", 0, offset, None, value, 1_700_000_000_000 + offset)


def test_filtered_column_wise_batches_write_the_row_paths_files(tmp_path) -> None:
    rng = random.Random(3)
    events = [_event(rng, i) for i in range(40)]
    clean = [_record(json.dumps(e).encode(), i) for i, e in enumerate(events)]
    kept_late = {**events[0], "b": 1, "n": 5}  # in a batch with a dead letter: row by row
    mixed = [_record(json.dumps(kept_late).encode(), 50), _record(b"{", 51)]
    batches = [clean[:25], clean[25:], mixed]
    outputs = {}
    for name, decode in (
        ("columns", DecodeAndValidate(SCHEMA).columnar()),
        ("rows", DecodeAndValidate(SCHEMA).batched()),
    ):
        prefix = str(tmp_path / name / "part")
        with TestPipeline() as p:
            decoded = p | beam.Create(batches) | decode
            kept = decoded.rows | Filter("b >= 0 and n is not None").with_dead_letters().batched()
            kinds = kept.rows | beam.Map(lambda batch: type(batch).__name__)
            expected_kinds = ["StructRows"] * 2 + ["Batch"] if name == "columns" else ["Batch"] * 3
            assert_that(kinds, equal_to(expected_kinds), label="kinds")
            written = kept.rows | WriteTFRecords(prefix, SCHEMA, num_shards=1).batched()
            assert_that(written.dead_letters, equal_to([]), label="no encoding dead letters")
            assert_that(
                decoded.dead_letters | beam.Map(lambda d: d.offset), equal_to([51]), label="dead"
            )
        (shard,) = glob.glob(prefix + "*.tfrecord")
        outputs[name] = sorted(tf.data.TFRecordDataset(shard).as_numpy_iterator())
    kept_events = [e for e in [*events, kept_late] if e["b"] >= 0 and e.get("n") is not None]
    assert len(outputs["columns"]) == len(kept_events) > 0
    assert outputs["columns"] == outputs["rows"]


def test_a_row_the_expression_fails_on_is_dead_lettered_as_on_the_row_path() -> None:
    rng = random.Random(4)
    events = [{**_event(rng, i), "n": i} for i in range(6)]
    events[2]["n"] = None  # "n > 2" raises TypeError on this row
    batch = _columns(events)
    with TestPipeline() as p:
        kept = p | beam.Create([batch]) | Filter("n > 2").with_dead_letters().batched()
        assert_that(
            kept.rows | beam.Map(lambda rows: [row["id"] for row in rows]),
            equal_to([["e-3", "e-4", "e-5"]]),
            label="kept",
        )
        assert_that(
            kept.dead_letters | beam.Map(lambda d: (d.stage, d.error_type)),
            equal_to([("filter", "TypeError")]),
            label="dead",
        )
