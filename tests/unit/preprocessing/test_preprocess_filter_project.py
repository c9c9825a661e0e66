"""Filter, Project and the safe expression language."""

from __future__ import annotations

import pickle

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.preprocessing.expressions import Expr
from transforms.preprocessing.filter_project import Filter, Project
from transforms.preprocessing.row_stage import METRICS_NAMESPACE, RowStageError

ROWS = [
    {"car_id": "car-1", "speed_kmh": 130.0, "engine_rpm": 3000.0, "latitude": None},
    {"car_id": "car-2", "speed_kmh": 90.0, "engine_rpm": 2000.0, "latitude": 48.1},
    {"car_id": "car-3", "speed_kmh": 150.0, "engine_rpm": 0.0, "latitude": 48.2},
]


# -- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("speed_kmh > 100", ROWS[0], True),
        ("speed_kmh > 100 and car_id in ('car-2', 'car-3')", ROWS[0], False),
        ("not (speed_kmh < 100) or latitude is None", ROWS[1], False),
        ("speed_kmh / 3.6", {"speed_kmh": 36.0}, 10.0),
        ("-a + b * 2 - c // 2 + c % 2", {"a": 1, "b": 2, "c": 5}, 2),
        ("coalesce(latitude, 0.0) > 1", ROWS[0], False),
        ("upper(car_id) == 'CAR-1' and len(car_id) == 5", ROWS[0], True),
        ("round(abs(x), 1) == max(1.2, min(0, 3))", {"x": -1.24}, True),
        ("x in [1, 2]", {"x": 2}, True),
    ],
)
def test_expressions_evaluate_like_python(text, row, expected):
    assert Expr(text)(row) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "only abs, round"),
        ("car_id.upper", "Attribute is not allowed"),
        ("car_id.upper()", "only abs, round"),
        ("row['x']", "Subscript is not allowed"),
        ("(lambda: 1)()", "only abs"),
        ("2 ** 64", "Pow is not allowed"),
        ("[x for x in y]", "ListComp is not allowed"),
        ("max(x, key=abs)", "keyword arguments"),
        ("speed >", "does not parse"),
        ("  ", "non-empty"),
    ],
)
def test_expressions_refuse_anything_but_the_safe_subset(text, message):
    with pytest.raises(ValueError, match=message):
        Expr(text)


def test_expression_unknown_field_and_pickling():
    expr = Expr("speed > 1")
    with pytest.raises(NameError, match="speed"):
        expr({"speed_kmh": 2})
    copy = pickle.loads(pickle.dumps(expr))
    assert copy == expr and copy({"speed": 2}) is True


def test_expressions_over_structs_read_the_fields_as_the_row_would():
    import msgspec

    layout = {"speed": "speed", "car-id": "f1", "abs": "f2", "x": "x"}
    Struct = msgspec.defstruct("Struct", [("speed", float), ("f1", str), ("f2", int), ("x", int)])
    struct = Struct(speed=130.0, f1="car-1", f2=-3, x=1)
    row = {"speed": 130.0, "car-id": "car-1", "abs": -3, "x": 1}
    for text in ("speed > 100 and x in (1, 2)", "abs + 1", "upper(lower('A')) == 'A'"):
        expr = Expr(text)
        assert expr.on_structs(layout)(struct) == expr(row), text  # a field shadows abs()
    fast = Expr("speed > 1")
    assert fast.on_structs(layout) is fast.on_structs(layout)  # compiled once per layout
    with pytest.raises(NameError, match="colour"):
        Expr("colour == 'red'").on_structs(layout)(struct)
    # the compiled argument's name, used as an unknown field, must not read the struct
    assert Expr("_kbml_row_struct is None").on_structs(layout) is None


# -- Filter / Project in pipelines ----------------------------------------------------------------


def test_filter_with_expression_and_callable_counts_rejections():
    pipeline = TestPipeline()
    rows = pipeline | beam.Create(ROWS)
    fast = rows | "Fast" >> Filter("speed_kmh > 100")
    running = rows | "Running" >> Filter(lambda r: r["engine_rpm"] > 0)
    assert_that(fast, equal_to([ROWS[0], ROWS[2]]), label="FastRows")
    assert_that(running, equal_to([ROWS[0], ROWS[1]]), label="RunningRows")
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name("filter.rejected")
    )["counters"]
    assert sorted((c.key.step.split("/")[0], c.committed) for c in counters) == [
        ("Fast", 1),
        ("Running", 1),
    ]


def test_project_selects_renames_and_computes_in_order():
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(ROWS[:2])
            | Project(
                "car_id",
                {"lat": "latitude", "speed m/s": Expr("round(speed_kmh / 3.6, 2)")},
                rpm="engine_rpm",
                fast=lambda r: r["speed_kmh"] > 100,
            )
        )
        assert_that(
            out | beam.Map(lambda r: list(r.items())),
            equal_to(
                [
                    [
                        ("car_id", "car-1"),
                        ("lat", None),
                        ("speed m/s", 36.11),
                        ("rpm", 3000.0),
                        ("fast", True),
                    ],
                    [
                        ("car_id", "car-2"),
                        ("lat", 48.1),
                        ("speed m/s", 25.0),
                        ("rpm", 2000.0),
                        ("fast", False),
                    ],
                ]
            ),
        )


def test_failing_rows_raise_naming_the_stage_by_default():
    pipeline = TestPipeline()
    _ = pipeline | beam.Create(ROWS) | Project("car_id", "colour")
    with pytest.raises(RowStageError, match="project stage failed on a row: KeyError.*'colour'"):
        pipeline.run().wait_until_finish()


def test_with_dead_letters_routes_failing_rows_and_keeps_the_rest():
    with TestPipeline() as pipeline:
        rows = pipeline | beam.Create(ROWS)
        filtered = (
            rows
            | "Ratio"
            >> Filter(lambda r: r["speed_kmh"] / r["engine_rpm"] > 0.04).with_dead_letters()
        )
        projected = rows | "Lat" >> Project(lat2=Expr("latitude * 2")).with_dead_letters()
        assert_that(filtered.rows, equal_to(ROWS[:2]), label="Kept")
        assert_that(
            filtered.dead_letters | "F" >> beam.Map(lambda d: (d.stage, d.error_type, d.payload)),
            equal_to(
                [
                    (
                        "filter",
                        "ZeroDivisionError",
                        b'{"car_id": "car-3", "engine_rpm": 0.0, "latitude": 48.2, '
                        b'"speed_kmh": 150.0}',
                    )
                ]
            ),
            label="FilterDead",
        )
        assert_that(projected.rows, equal_to([{"lat2": 96.2}, {"lat2": 96.4}]), label="Proj")
        assert_that(
            projected.dead_letters | "P" >> beam.Map(lambda d: (d.stage, d.error_type)),
            equal_to([("project", "TypeError")]),
            label="ProjectDead",
        )


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Filter(42), TypeError, "callable or an expression"),
        (lambda: Filter("import os"), ValueError, "does not parse"),
        (lambda: Project(), ValueError, "at least one column"),
        (lambda: Project("a", a="b"), ValueError, "named twice"),
        (lambda: Project(3), TypeError, "field name or a mapping"),
        (lambda: Project(a=3), TypeError, "field name or a callable"),
    ],
)
def test_bad_arguments_fail_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_batched_stages_give_the_rows_and_dead_letters_of_the_row_stages_in_lists():
    batches = [ROWS[:2], [], [ROWS[2]]]
    ratio = Filter(lambda r: r["speed_kmh"] / r["engine_rpm"] > 0.04).with_dead_letters()
    with TestPipeline() as pipeline:
        by_row = pipeline | "Rows" >> beam.Create(ROWS) | "ByRow" >> ratio
        by_batch = pipeline | "Batches" >> beam.Create(batches) | "ByBatch" >> ratio.batched()
        projected = by_batch.rows | Project(lat2=Expr("latitude * 2")).with_dead_letters().batched()
        assert_that(by_batch.rows, equal_to([ROWS[:2]]), label="KeptList")
        for name, result in (("Row", by_row), ("Batch", by_batch)):
            assert_that(
                result.dead_letters | f"{name}Dead" >> beam.Map(lambda d: (d.stage, d.payload)),
                equal_to(
                    [
                        (
                            "filter",
                            b'{"car_id": "car-3", "engine_rpm": 0.0, "latitude": 48.2, '
                            b'"speed_kmh": 150.0}',
                        )
                    ]
                ),
                label=f"{name}DeadLetters",
            )
        assert_that(projected.rows, equal_to([[{"lat2": 96.2}]]), label="Proj")
        assert_that(
            projected.dead_letters | "P" >> beam.Map(lambda d: d.error_type),
            equal_to(["TypeError"]),  # car-1 has no latitude
            label="ProjectDead",
        )


def test_batched_failure_raises_naming_the_stage_by_default():
    pipeline = TestPipeline()
    _ = pipeline | beam.Create([ROWS]) | Project("car_id", "colour").batched()
    with pytest.raises(RowStageError, match="project stage failed on a row: KeyError.*'colour'"):
        pipeline.run().wait_until_finish()
