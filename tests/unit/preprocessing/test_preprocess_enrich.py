"""EnrichWithSideInput over file references: join types, keys, errors, and periodic refresh."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_metrics import committed_counters

from transforms.decoding.schema import RowSchema
from transforms.preprocessing.enrich import (
    BigQueryReference,
    EnrichWithSideInput,
    FileReference,
    ReferenceTable,
)
from transforms.preprocessing.row_stage import METRICS_NAMESPACE, RowStageError

CARS_SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "car_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "model", "type": "STRING"},
        {"name": "year", "type": "INTEGER"},
        {"name": "max_rpm", "type": "FLOAT"},
        {"name": "electric", "type": "BOOLEAN"},
    ]
)
EVENTS = [
    {"car_id": "car-1", "speed_kmh": 100.0},
    {"car_id": "car-2", "speed_kmh": 50.0},
    {"car_id": "car-9", "speed_kmh": 70.0},  # not in the reference
    {"car_id": None, "speed_kmh": 10.0},  # a null key never matches
]


@pytest.fixture
def cars_csv(tmp_path: Path) -> str:
    path = tmp_path / "cars.csv"
    path.write_text(
        "car_id,model,year,max_rpm,electric\n"
        "car-1,Roadster,2024,6500.5,true\n"
        "car-2,Van,,4000,false\n"
    )
    return str(path)


def test_file_reference_csv_with_schema_is_typed(cars_csv):
    assert FileReference(cars_csv, schema=CARS_SCHEMA).load() == [
        {"car_id": "car-1", "model": "Roadster", "year": 2024, "max_rpm": 6500.5, "electric": True},
        {"car_id": "car-2", "model": "Van", "year": None, "max_rpm": 4000.0, "electric": False},
    ]
    assert FileReference(cars_csv).load()[1]["year"] == ""  # without a schema CSV stays text


def test_file_reference_jsonl_and_globs(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"car_id": "car-1", "year": 2024}\n\n')
    (tmp_path / "b.jsonl").write_text('{"car_id": "car-2", "year": 2020}\n')
    rows = FileReference(str(tmp_path / "*.jsonl"), schema=CARS_SCHEMA).load()
    assert [(r["car_id"], r["year"], r["model"]) for r in rows] == [
        ("car-1", 2024, None),
        ("car-2", 2020, None),
    ]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("car_id,year\ncar-1,soon\n", "x.csv", "x.csv, line 2: invalid literal for int"),
        ("car_id,year\ncar-1,1,2\n", "x.csv", "line 2: more cells than header"),
        ('{"car_id": "c", "year": "1"}\n', "x.jsonl", "line 1: year: expected INTEGER"),
        ("[1]\n", "x.jsonl", "line 1: a JSON line must be an object"),
        ('{"year": 1}\n', "x.jsonl", "car_id: REQUIRED field is missing"),
    ],
)
def test_bad_reference_files_fail_the_load_naming_file_and_line(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        FileReference(str(tmp_path / name), schema=CARS_SCHEMA).load()


def test_reference_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        FileReference(str(tmp_path / "cars.txt"))
    with pytest.raises(FileNotFoundError, match="no reference file matches"):
        FileReference(str(tmp_path / "none.csv")).load()
    with pytest.raises(ValueError, match="exactly one of query or table"):
        BigQueryReference()
    with pytest.raises(ValueError, match="how must be one of"):
        EnrichWithSideInput(FileReference("x.csv"), key="k", how="outer")
    with pytest.raises(TypeError, match="load"):
        EnrichWithSideInput("x.csv", key="k")
    with pytest.raises(ValueError, match="differ in length"):
        EnrichWithSideInput(FileReference("x.csv"), key="k", reference_key=("a", "b"))
    with pytest.raises(ValueError, match="needs refresh_interval_s"):
        EnrichWithSideInput(FileReference("x.csv"), key="k", refresh_stop_after_s=1)


def test_reference_table_last_duplicate_wins_and_keys_are_required():
    table = ReferenceTable.build([{"k": 1, "v": "a"}, {"k": 1, "v": "b"}], ("k",), 0.0)
    assert table.index == {1: {"k": 1, "v": "b"}} and table.columns == ("v",)
    with pytest.raises(ValueError, match="no key column"):
        ReferenceTable.build([{"v": 1}], ("k",), 0.0)


def test_left_join_adds_columns_or_nulls(cars_csv):
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(EVENTS)
            | EnrichWithSideInput(
                FileReference(cars_csv, schema=CARS_SCHEMA),
                key="car_id",
                fields={"car_model": "model", "year": "year"},
            )
        )
        assert_that(
            out,
            equal_to(
                [
                    {**EVENTS[0], "car_model": "Roadster", "year": 2024},
                    {**EVENTS[1], "car_model": "Van", "year": None},
                    {**EVENTS[2], "car_model": None, "year": None},
                    {**EVENTS[3], "car_model": None, "year": None},
                ]
            ),
        )


def test_inner_join_drops_and_counts_unmatched_rows(cars_csv):
    pipeline = TestPipeline()
    out = (
        pipeline
        | beam.Create(EVENTS)
        | EnrichWithSideInput(
            FileReference(cars_csv, schema=CARS_SCHEMA), key="car_id", how="inner"
        )
    )
    assert_that(
        out | beam.Map(lambda r: (r["car_id"], r["model"], r["electric"])),
        equal_to([("car-1", "Roadster", True), ("car-2", "Van", False)]),
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = committed_counters(result, METRICS_NAMESPACE)
    assert (counters["enrich.matched"], counters["enrich.unmatched"]) == (2, 2)


def test_inner_join_with_dead_letters_keeps_unmatched_rows_as_letters(cars_csv):
    with TestPipeline() as pipeline:
        result = (
            pipeline
            | beam.Create(EVENTS)
            | EnrichWithSideInput(
                FileReference(cars_csv, schema=CARS_SCHEMA),
                key="car_id",
                fields=["model"],
                how="inner",
            ).with_dead_letters()
        )
        assert_that(
            result.rows | beam.Map(lambda r: r["model"]), equal_to(["Roadster", "Van"]), label="R"
        )
        assert_that(
            result.dead_letters
            | beam.Map(lambda d: (d.stage, d.error_type, json.loads(d.payload)["car_id"])),
            equal_to([("enrich", "NoMatch", "car-9"), ("enrich", "NoMatch", None)]),
            label="D",
        )


def test_compound_keys_with_different_reference_names(tmp_path):
    path = tmp_path / "limits.jsonl"
    path.write_text(
        '{"region": "eu", "kind": "van", "limit": 90}\n'
        '{"region": "eu", "kind": "car", "limit": 130}\n'
    )
    rows = [{"zone": "eu", "type": "car"}, {"zone": "us", "type": "car"}]
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(rows)
            | EnrichWithSideInput(
                FileReference(str(path)), key=("zone", "type"), reference_key=("region", "kind")
            )
        )
        assert_that(out, equal_to([{**rows[0], "limit": 130}, {**rows[1], "limit": None}]))


def test_a_column_already_in_the_row_is_a_clear_error(cars_csv):
    pipeline = TestPipeline()
    _ = (
        pipeline
        | beam.Create([{"car_id": "car-1", "model": "mine"}])
        | EnrichWithSideInput(FileReference(cars_csv), key="car_id")
    )
    with pytest.raises(RowStageError, match="column 'model' is already in the row"):
        pipeline.run().wait_until_finish()


class _VersionedReference:
    """Each load appends to a counter file and returns a table tagged with the load number."""

    def __init__(self, counter: str) -> None:
        self.counter = counter

    def load(self) -> list[dict]:
        with open(self.counter, "a+") as handle:
            handle.write("x\n")
            handle.seek(0)
            version = len(handle.readlines())
        return [{"car_id": "car-1", "version": version}]


def test_refresh_reloads_the_reference_and_rows_see_the_latest(tmp_path):
    counter = tmp_path / "loads"
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create([{"car_id": "car-1"}])
            | EnrichWithSideInput(
                _VersionedReference(str(counter)),
                key="car_id",
                refresh_interval_s=0.2,
                refresh_stop_after_s=1.0,
            )
        )
        loads = 5  # one per 0.2 s tick in [now, now + 1 s)
        assert_that(out, equal_to([{"car_id": "car-1", "version": loads}]))
    assert len(counter.read_text().splitlines()) == loads


def test_a_requested_column_the_reference_lacks_fails_the_load(cars_csv):
    pipeline = TestPipeline()
    _ = (
        pipeline
        | beam.Create(EVENTS)
        | EnrichWithSideInput(FileReference(cars_csv), key="car_id", fields=["modle"])
    )
    with pytest.raises(
        ValueError, match=r"reference has no column \['modle'\]; its columns: car_id"
    ):
        pipeline.run().wait_until_finish()
