"""WriteTFRecords: rows → tf.Example shards that tf.data reads back, schema beside, dead letters."""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.decoding.schema import RowSchema
from transforms.sinks.example_wire import ExampleEncoder
from transforms.sinks.tfrecord import (
    SCHEMA_FILE,
    TRANSFORM_POINTER_FILE,
    WriteTFRecords,
    feature_spec,
    row_to_example,
)

SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "amount", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "count", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "flag", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "raw", "type": "BYTES", "mode": "NULLABLE"},
        {"name": "at", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    ]
)

GOOD = [
    {
        "event_id": "e1",
        "amount": 1.5,
        "count": 3,
        "flag": True,
        "raw": b"\x00\xff",
        "at": "2026-11-22T01:02:03.456000Z",
        "tags": ["a", "b"],
    },
    {"event_id": "e2", "amount": 2, "count": None, "tags": []},
]
BAD = [
    {"event_id": "e3"},  # REQUIRED amount missing
    {"event_id": "e4", "amount": "12"},  # wrong type
    {"event_id": "e5", "amount": 1.0, "extra": 1},  # undeclared field
]


def _read_back(pattern: str) -> list[dict]:
    files = sorted(glob.glob(pattern))
    assert files, f"no shards match {pattern}"
    parsed = tf.data.TFRecordDataset(files).map(
        lambda s: tf.io.parse_single_example(s, feature_spec(SCHEMA))
    )
    rows = []
    for item in parsed:
        row = {}
        for name, value in item.items():
            if isinstance(value, tf.SparseTensor):
                value = value.values
            value = value.numpy()
            row[name] = value if isinstance(value, bytes) else value.tolist()
        rows.append(row)
    return sorted(rows, key=lambda r: r["event_id"])


def test_rows_round_trip_through_tf_data_with_schema_and_transform_pointer(tmp_path):
    prefix = os.path.join(tmp_path, "data", "part")
    with TestPipeline() as p:
        result = (
            p
            | beam.Create(GOOD + BAD)
            | WriteTFRecords(prefix, SCHEMA, num_shards=2, transform_dir="gs://bucket/tft")
        )
        assert_that(
            result.dead_letters
            | beam.Map(lambda d: (d.stage, d.error_type, json.loads(d.payload)["event_id"])),
            equal_to(
                [
                    ("tfrecord", "ValueError", "e3"),
                    ("tfrecord", "TypeError", "e4"),
                    ("tfrecord", "ValueError", "e5"),
                ]
            ),
            label="dead letters",
        )
        assert_that(
            result.files | beam.Map(os.path.basename),
            equal_to(["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]),
            label="files",
        )

    assert _read_back(prefix + "-*-of-00002.tfrecord") == [
        {
            "event_id": b"e1",
            "amount": 1.5,
            "count": [3],
            "flag": [1],
            "raw": [b"\x00\xff"],
            "at": [b"2026-11-22T01:02:03.456000Z"],
            "tags": [b"a", b"b"],
        },
        {
            "event_id": b"e2",
            "amount": 2.0,
            "count": [],
            "flag": [],
            "raw": [],
            "at": [],
            "tags": [],
        },
    ]
    directory = os.path.join(tmp_path, "data")
    with open(os.path.join(directory, SCHEMA_FILE)) as handle:
        assert RowSchema.from_bigquery_json(json.load(handle)) == SCHEMA
    with open(os.path.join(directory, TRANSFORM_POINTER_FILE)) as handle:
        assert json.load(handle)["transform_dir"] == "gs://bucket/tft"


def test_nullable_none_is_an_absent_feature_and_bool_is_int64():
    example = row_to_example(
        {"event_id": "x", "amount": 0.25, "flag": False, "count": None}, SCHEMA
    )
    features = example.features.feature
    assert set(features) == {"event_id", "amount", "flag"}
    assert list(features["flag"].int64_list.value) == [0]
    assert list(features["amount"].float_list.value) == [0.25]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"event_id": "x", "amount": True}, "expected a number"),
        ({"event_id": "x", "amount": 1.0, "count": 1.5}, "expected an integer"),
        ({"event_id": "x", "amount": 1.0, "tags": "a"}, "expected a list"),
        ({"event_id": "x", "amount": 1.0, "raw": "text"}, "expected bytes"),
    ],
)
def test_type_mismatches_are_named(row, message):
    with pytest.raises(TypeError, match=message):
        row_to_example(row, SCHEMA)


def test_record_fields_are_refused_up_front():
    nested = RowSchema.from_bigquery_json(
        [{"name": "r", "type": "RECORD", "fields": [{"name": "x", "type": "FLOAT"}]}]
    )
    with pytest.raises(ValueError, match="RECORD"):
        WriteTFRecords("/tmp/unused", nested)


def test_unbounded_rows_are_written_per_window(tmp_path):
    stream = (
        TestStream()
        .add_elements([TimestampedValue({"event_id": "a", "amount": 1.0}, 1)])
        .add_elements([TimestampedValue({"event_id": "b", "amount": 2.0}, 12)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    prefix = os.path.join(tmp_path, "part")
    with TestPipeline(options=options) as p:
        result = p | stream | WriteTFRecords(prefix, SCHEMA, triggering_frequency=10)
        assert_that(result.dead_letters, equal_to([]), label="no dead letters")
    shards = sorted(glob.glob(prefix + "*.tfrecord"))
    assert len(shards) == 2, shards  # one per 10 s window
    assert [r["event_id"] for r in _read_back(prefix + "*.tfrecord")] == [b"a", b"b"]
    assert os.path.exists(os.path.join(tmp_path, SCHEMA_FILE))


def test_unbounded_rows_need_a_triggering_frequency():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(options=options)
    with pytest.raises(ValueError, match="triggering_frequency"):
        _ = p | TestStream().advance_watermark_to_infinity() | WriteTFRecords("/tmp/x", SCHEMA)


WIDE = RowSchema.from_bigquery_json(
    [
        {"name": "f", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "n", "type": "NUMERIC", "mode": "NULLABLE"},
        {"name": "i", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "b", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "s", "type": "STRING", "mode": "NULLABLE"},
        {"name": "by", "type": "BYTES", "mode": "NULLABLE"},
        {"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "fs", "type": "FLOAT", "mode": "REPEATED"},
        {"name": "is", "type": "INTEGER", "mode": "REPEATED"},
        {"name": "ss", "type": "STRING", "mode": "REPEATED"},
        {"name": "ünï" + "x" * 200, "type": "FLOAT", "mode": "NULLABLE"},  # multi-byte varints
    ]
)


def _with_protobuf_api(row, schema):
    """The oracle: the same mapping built with the protobuf message API."""
    example = tf.train.Example()
    features = example.features.feature
    for field in schema:
        value = row.get(field.name)
        if value is None:
            continue
        values = value if field.repeated else [value]
        if field.type in ("FLOAT", "NUMERIC"):
            features[field.name].float_list.value.extend(float(v) for v in values)
        elif field.type in ("INTEGER", "BOOLEAN"):
            features[field.name].int64_list.value.extend(int(v) for v in values)
        else:
            features[field.name].bytes_list.value.extend(
                v if isinstance(v, bytes) else v.encode() for v in values
            )
    return example


@pytest.mark.parametrize(
    "row",
    [
        {"f": 0.5},
        {"f": -1e-45, "n": 3, "i": -(2**63), "b": True, "s": "é€😀", "by": b"\x00\xff"},
        {"f": 1e300, "n": -1e300, "i": 2**63 - 1, "b": False, "s": "", "by": b"", "t": "x"},
        {"f": float("inf"), "i": -1, "fs": [], "is": [], "ss": []},
        {"f": 3.4e38, "fs": [0.1, -2.5, 1e39], "is": [0, 1, -1, 300, 2**40], "ss": ["a", ""]},
        {"f": 2.0, "ünï" + "x" * 200: 7.25, "ss": ["y" * 300]},
        # the one-byte-length shortcut and just past it (key "s": 3 bytes, limit 119 bytes)
        {"f": 1.0, "s": "z" * 118, "t": "2026-12-04T00:00:00Z", "i": 127, "is": [127]},
        {"f": 1.0, "s": "z" * 119, "i": 128},
        {"f": 1.0, "s": "é" * 60, "i": 0, "b": True},
        {"f": 1.0, "n": "-12.500000001"},  # NUMERIC as the row contract holds it: exact text
    ],
)
def test_hand_written_wire_bytes_parse_to_what_the_protobuf_api_builds(row):
    serialized = ExampleEncoder(WIDE).serialize(row)
    assert tf.train.Example.FromString(serialized) == _with_protobuf_api(row, WIDE)


def test_integers_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="int64"):
        row_to_example({"f": 1.0, "i": 2**63}, WIDE)


def _records(pattern: str, compression: str = "") -> list[bytes]:
    files = sorted(glob.glob(pattern))
    assert files, f"no shards match {pattern}"
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type=compression))


@pytest.mark.parametrize("suffix", [".tfrecord", ".tfrecord.gz"], ids=["plain", "gzip"])
def test_batched_writes_the_records_and_dead_letters_of_the_row_path(tmp_path, suffix):
    rows = GOOD + BAD + [dict(GOOD[0], event_id=f"x{i}") for i in range(5)]
    batches = [rows[:3], [], rows[3:6], rows[6:]]
    with TestPipeline() as p:
        by_row = (
            p
            | "Rows" >> beam.Create(rows)
            | "ByRow"
            >> WriteTFRecords(
                os.path.join(tmp_path, "row", "part"), SCHEMA, file_name_suffix=suffix
            )
        )
        by_batch = (
            p
            | "Batches" >> beam.Create(batches)
            | "ByBatch"
            >> WriteTFRecords(
                os.path.join(tmp_path, "batch", "part"),
                SCHEMA,
                num_shards=2,
                file_name_suffix=suffix,
            ).batched()
        )
        for name, result in (("row", by_row), ("batch", by_batch)):
            assert_that(
                result.dead_letters
                | f"{name}Letters"
                >> beam.Map(lambda d: (d.stage, d.error_type, json.loads(d.payload)["event_id"])),
                equal_to(
                    [
                        ("tfrecord", "ValueError", "e3"),
                        ("tfrecord", "TypeError", "e4"),
                        ("tfrecord", "ValueError", "e5"),
                    ]
                ),
                label=f"{name} dead letters",
            )
        assert_that(
            by_batch.files | beam.Map(os.path.basename),
            equal_to([f"part-0000{i}-of-00002{suffix}" for i in range(2)]),
            label="batch files",
        )
    compression = "GZIP" if suffix.endswith(".gz") else ""
    by_row_records = _records(os.path.join(tmp_path, "row", f"part-*{suffix}"), compression)
    assert len(by_row_records) == 7
    assert _records(os.path.join(tmp_path, "batch", f"part-*{suffix}"), compression) == (
        by_row_records
    )
    assert os.path.exists(os.path.join(tmp_path, "batch", SCHEMA_FILE))


def test_batched_unbounded_batches_are_written_per_window(tmp_path):
    stream = (
        TestStream()
        .add_elements([TimestampedValue([{"event_id": "a", "amount": 1.0}], 1)])
        .add_elements([TimestampedValue([{"event_id": "b", "amount": 2.0}], 12)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    prefix = os.path.join(tmp_path, "part")
    with TestPipeline(options=options) as p:
        result = p | stream | WriteTFRecords(prefix, SCHEMA, triggering_frequency=10).batched()
        assert_that(result.dead_letters, equal_to([]), label="no dead letters")
    shards = sorted(glob.glob(prefix + "*.tfrecord"))
    assert len(shards) == 2, shards  # one per 10 s window
    assert [r["event_id"] for r in _read_back(prefix + "*.tfrecord")] == [b"a", b"b"]


def test_tfrecord_frames_are_beams_framing_byte_for_byte():
    import io

    from apache_beam.io.tfrecordio import _TFRecordUtil

    from transforms.sinks.batch_files import tfrecord_frames

    example = row_to_example(GOOD[0], SCHEMA).SerializeToString()
    records = [b"", b"x", bytes(range(256)) * 40, example, example, b"y", bytes(70_000), b"x"]
    expected = io.BytesIO()
    for record in records:
        _TFRecordUtil.write_record(expected, record)
    assert tfrecord_frames(records) == expected.getvalue()
