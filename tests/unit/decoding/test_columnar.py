"""Column-wise decoded batches: the same rows as the row path, read a column at a time."""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.batch import Batch, BatchCoder
from transforms.decoding.columnar import ColumnarPairs, StructRows
from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.rejection import Reason
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema
from transforms.inference.model_handler import feature_matrix
from transforms.kafka.record import KafkaRecord

from .test_decode import CAR, GOOD, js

FEATURES = ("speed_kmh", "engine_rpm", "latitude", "longitude")


def payloads(count: int) -> list[bytes]:
    return [js({**GOOD, "event_id": f"e-{i}", "speed_kmh": 10.0 * i}) for i in range(count)]


def record(value: bytes, offset: int) -> KafkaRecord:
    return KafkaRecord("cars", 0, offset, b"car-7", value, 1_700_000_000_000 + offset)


def test_columns_hold_the_rows_of_the_row_path_including_converted_types() -> None:
    validator = RowValidator(CAR)
    batch = payloads(5)
    rows = validator.decode_json_columns(batch)
    assert type(rows) is StructRows
    expected = validator.decode_json_fast_all(batch)
    # TIMESTAMP is converted on the struct, as on the dict: the same normalised text.
    assert rows == expected and list(rows) == expected and rows[2] == expected[2]
    assert rows[0]["event_time"] == "2026-11-22T01:02:03.456000Z"
    assert rows[1:3] == expected[1:3] and type(rows[1:3]) is StructRows
    assert rows.column("event_id") == [f"e-{i}" for i in range(5)]
    assert rows.column("not_in_schema") == [None] * 5  # as row.get()
    assert rows.width == len(CAR)


def test_columns_give_up_like_the_row_path() -> None:
    validator = RowValidator(CAR)
    bad_time = js({**GOOD, "event_time": "2026-11-22 01:02:03"})  # no offset: converter fails
    assert validator.decode_json_columns([*payloads(2), bad_time]) is None
    assert validator.decode_json_columns([*payloads(2), b"{"]) is None
    nested = RowSchema.from_bigquery_json(
        [{"name": "pos", "type": "RECORD", "fields": [{"name": "lat", "type": "FLOAT"}]}]
    )
    assert RowValidator(nested).decode_json_columns([b'{"pos": {"lat": 1.0}}']) is None


def test_the_matrix_from_columns_equals_the_matrix_from_row_dicts() -> None:
    validator = RowValidator(CAR)
    batch = payloads(7)
    rows = validator.decode_json_columns(batch)
    dicts = validator.decode_json_fast_all(batch)
    matrix = rows.matrix(FEATURES)
    assert matrix.dtype == np.float32 and matrix.shape == (7, 4)
    np.testing.assert_array_equal(matrix, feature_matrix(dicts, FEATURES))
    np.testing.assert_array_equal(feature_matrix(rows, FEATURES), matrix)  # dispatches
    assert np.isnan(matrix[:, 3]).all()  # NULLABLE longitude missing: NaN, as from dicts
    np.testing.assert_array_equal(rows.matrix(["speed_kmh"]), matrix[:, :1])  # one feature
    with pytest.raises(KeyError, match="not_a_field"):
        rows.matrix(["speed_kmh", "not_a_field"])


def test_odd_field_names_are_read_through_renamed_attributes() -> None:
    schema = RowSchema.from_bigquery_json(
        [{"name": "class", "type": "FLOAT"}, {"name": "my-field", "type": "STRING"}]
    )
    validator = RowValidator(schema)
    batch = [b'{"class": 1.5, "my-field": "a"}', b'{"class": 2, "my-field": "b"}']
    rows = validator.decode_json_columns(batch)
    assert rows == [{"class": 1.5, "my-field": "a"}, {"class": 2.0, "my-field": "b"}]
    assert rows.column("my-field") == ["a", "b"]
    np.testing.assert_array_equal(rows.matrix(["class"]), [[1.5], [2.0]])


def test_rows_kept_column_wise_filter_and_pickle_as_their_rows() -> None:
    validator = RowValidator(CAR)
    rows = validator.decode_json_columns(payloads(5))
    expected = validator.decode_json_fast_all(payloads(5))
    kept = rows.compress([1, 0, 0, 1, 1])
    assert type(kept) is StructRows and kept == [expected[0], expected[3], expected[4]]
    assert rows.tuples()[1] == tuple(expected[1].values())  # in the layout's field order
    assert rows.structs[2] is rows[2:3].structs[0] and rows.layout.names == tuple(CAR.names)
    copied = pickle.loads(pickle.dumps(rows))
    assert type(copied) is Batch and copied == expected
    assert 0 < BatchCoder().estimate_size(rows) == rows.estimate_bytes()
    assert rows[:0].estimate_bytes() == 0


def test_pairs_behave_and_pickle_as_the_list_of_pairs_they_stand_for() -> None:
    validator = RowValidator(CAR)
    batch = payloads(6)
    records = [record(value, offset) for offset, value in enumerate(batch)]
    pairs = ColumnarPairs(records, validator.decode_json_columns(batch))
    expected = list(zip(records, validator.decode_json_fast_all(batch), strict=True))
    assert len(pairs) == 6 and pairs == expected and pairs[4] == expected[4]
    assert type(pairs[1:4]) is ColumnarPairs and pairs[1:4] == expected[1:4]
    joined = ColumnarPairs.concat([pairs[:2], pairs[2:5], pairs[5:]])
    assert joined == expected and joined.rows.column("event_id") == [f"e-{i}" for i in range(6)]
    copied = pickle.loads(pickle.dumps(pairs))
    assert type(copied) is Batch and copied == expected  # another process gets plain pairs
    assert BatchCoder().decode(BatchCoder().encode(pairs)) == expected
    # Beam's size sampling: an estimate from the payloads, no pickling of the rows.
    assert pairs.estimate_bytes() == (len(batch[0]) + 64) * 6
    assert BatchCoder().estimate_size(pairs) == pairs.estimate_bytes()
    assert BatchCoder().estimate_size(Batch([pairs, pairs])) == 2 * pairs.estimate_bytes()
    with pytest.raises(ValueError, match="2 records for 6 rows"):
        ColumnarPairs(records[:2], pairs.rows)


def test_columnar_decode_emits_the_pairs_of_the_row_path_and_the_same_dead_letters() -> None:
    clean = [record(value, offset) for offset, value in enumerate(payloads(4))]
    mixed = [record(payloads(1)[0], 10), record(b"{", 11)]
    with TestPipeline() as p:
        decoded = p | beam.Create([clean, mixed]) | DecodeAndValidate(CAR).with_records().columnar()
        reference = (
            p | "Again" >> beam.Create([clean, mixed])
            | "Rows" >> DecodeAndValidate(CAR).with_records().batched()
        )  # fmt: skip
        kinds = decoded.rows | "Kinds" >> beam.Map(lambda batch: (type(batch).__name__, len(batch)))
        # A clean batch stays column-wise; one with a dead letter is decoded record by record.
        assert_that(kinds, equal_to([("ColumnarPairs", 4), ("Batch", 1)]), label="kinds")
        flat = decoded.rows | "Flat" >> beam.FlatMap(list)
        expected = reference.rows | "FlatReference" >> beam.FlatMap(list)
        assert_that(
            (flat, expected)
            | beam.Flatten()
            | beam.Map(lambda pair: (pair[0].offset, json.dumps(pair[1], sort_keys=True)))
            | beam.combiners.Count.PerElement()
            | beam.Map(lambda counted: counted[1]),
            equal_to([2] * 5),
            label="same pairs",
        )
        assert_that(
            decoded.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
            equal_to([(11, Reason.INVALID_JSON)]),
            label="dead",
        )
        rows = (
            p | "Plain" >> beam.Create([clean, mixed]) | "Cols" >> DecodeAndValidate(CAR).columnar()
        )
        assert_that(
            rows.rows | "RowKinds" >> beam.Map(lambda batch: (type(batch).__name__, len(batch))),
            equal_to([("StructRows", 4), ("Batch", 1)]),
            label="row kinds",
        )
