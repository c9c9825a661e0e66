"""WindowedAggregate and WithEventTime: TestStream with on-time and late data, sliding, session."""

from __future__ import annotations

import datetime

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.decoding.row_validation import format_timestamp
from transforms.preprocessing.row_stage import RowStageError
from transforms.preprocessing.window_aggregate import (
    Count,
    CountDistinct,
    Max,
    Mean,
    Min,
    Session,
    Sliding,
    Sum,
    Tumbling,
    WindowedAggregate,
    WithEventTime,
    _AggregatesFn,
)

T0 = 1_795_305_600  # 2026-11-22T00:00:00Z, a multiple of 120 s


def iso(seconds: float) -> str:

    return format_timestamp(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def event(car: str, t: float, speed: float = 80.0) -> TimestampedValue:
    return TimestampedValue({"car_id": car, "speed_kmh": speed}, T0 + t)


def with_pane(row, pane=beam.DoFn.PaneInfoParam):
    return row["car_id"], row["n"], row["avg_speed"], PaneInfoTiming.to_string(pane.timing)


def test_seed_query_counts_per_car_per_two_minutes_with_on_time_and_late_data():
    """SELECT car_id, COUNT(*) n … WINDOW TUMBLING (SIZE 2 MINUTES) GROUP BY car_id HAVING n > 5."""
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([event("car-a", t, speed=float(t)) for t in (10, 20, 30, 40, 50, 60, 70)])
        .add_elements([event("car-b", 30)])  # only 1 event: removed by HAVING
        .advance_watermark_to(T0 + 150)  # window [0, 120) fires on time
        .add_elements([event("car-a", 100, speed=100.0)])  # late but within 60 s lateness
        .add_elements([event("car-b", 120 + t) for t in range(6)])
        .advance_watermark_to(T0 + 300)  # window [120, 240) fires; [0, 120) is now closed
        .add_elements([event("car-a", 110)])  # too late: dropped by the runner
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=PipelineOptions(streaming=True)) as pipeline:
        out = (
            pipeline
            | stream
            | WindowedAggregate(
                key="car_id",
                window=Tumbling(120),
                aggregates={"n": Count(), "avg_speed": Mean("speed_kmh")},
                having="n > 5",
                allowed_lateness_s=60,
            )
        )
        assert_that(
            out | "Panes" >> beam.Map(with_pane),
            equal_to_per_window(
                {
                    IntervalWindow(T0, T0 + 120): [
                        ("car-a", 7, 40.0, "ON_TIME"),
                        ("car-a", 8, 47.5, "LATE"),  # accumulating: the updated aggregate
                    ],
                    IntervalWindow(T0 + 120, T0 + 240): [("car-b", 6, 80.0, "ON_TIME")],
                }
            ),
            label="PerWindow",
        )
        assert_that(
            out | "Bounds" >> beam.Map(lambda r: (r["car_id"], r["window_start"], r["window_end"])),
            equal_to(
                [
                    ("car-a", iso(T0), iso(T0 + 120)),
                    ("car-a", iso(T0), iso(T0 + 120)),
                    ("car-b", iso(T0 + 120), iso(T0 + 240)),
                ]
            ),
            label="WindowBounds",
        )


def test_without_lateness_late_data_is_dropped():
    stream = (
        TestStream()
        .advance_watermark_to(T0)
        .add_elements([event("car-a", 10), event("car-a", 20)])
        .advance_watermark_to(T0 + 130)
        .add_elements([event("car-a", 30)])
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=PipelineOptions(streaming=True)) as pipeline:
        out = (
            pipeline
            | stream
            | WindowedAggregate(key="car_id", window=Tumbling(120), aggregates={"n": Count()})
        )
        assert_that(
            out | beam.Map(lambda r: r["n"]),
            equal_to_per_window({IntervalWindow(T0, T0 + 120): [2]}),
        )


def test_sliding_windows_put_an_event_in_every_window_that_covers_it():
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(
                [({"car_id": "a", "speed_kmh": 1.0}, 45), ({"car_id": "a", "speed_kmh": 3.0}, 75)]
            )
            | beam.MapTuple(lambda row, t: TimestampedValue(row, t))
            | WindowedAggregate(
                key="car_id",
                window=Sliding(60, 30),
                aggregates={"n": Count(), "total": Sum("speed_kmh")},
            )
        )
        assert_that(
            out | beam.Map(lambda r: (r["n"], r["total"])),
            equal_to_per_window(
                {
                    IntervalWindow(0, 60): [(1, 1.0)],
                    IntervalWindow(30, 90): [(2, 4.0)],
                    IntervalWindow(60, 120): [(1, 3.0)],
                }
            ),
        )


def test_session_windows_and_compound_keys():
    rows = [
        ({"fleet": "f1", "car_id": "a", "speed_kmh": 1.0}, 0),
        ({"fleet": "f1", "car_id": "a", "speed_kmh": 2.0}, 10),
        ({"fleet": "f1", "car_id": "a", "speed_kmh": 3.0}, 50),
        ({"fleet": "f1", "car_id": "b", "speed_kmh": 4.0}, 5),
    ]
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(rows)
            | beam.MapTuple(lambda row, t: TimestampedValue(row, t))
            | WindowedAggregate(
                key=("fleet", "car_id"),
                window=Session(20),
                aggregates={"n": Count(), "top": Max("speed_kmh")},
            )
        )
        assert_that(
            out,
            equal_to(
                [
                    {
                        "fleet": "f1",
                        "car_id": "a",
                        "window_start": iso(0),
                        "window_end": iso(30),
                        "n": 2,
                        "top": 2.0,
                    },
                    {
                        "fleet": "f1",
                        "car_id": "a",
                        "window_start": iso(50),
                        "window_end": iso(70),
                        "n": 1,
                        "top": 3.0,
                    },
                    {
                        "fleet": "f1",
                        "car_id": "b",
                        "window_start": iso(5),
                        "window_end": iso(25),
                        "n": 1,
                        "top": 4.0,
                    },
                ]
            ),
        )


def test_with_event_time_windows_on_the_row_field():
    rows = [
        {"car_id": "a", "event_time": iso(T0 + 5)},
        {"car_id": "a", "event_time": iso(T0 + 125)},
        {"car_id": "a", "event_time": None},  # keeps its element timestamp (T0 + 10)
    ]
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(rows)
            | beam.Map(lambda r: TimestampedValue(r, T0 + 10))  # "Kafka time"
            | WithEventTime("event_time")
            | WindowedAggregate(key="car_id", window=Tumbling(120), aggregates={"n": Count()})
        )
        assert_that(
            out | beam.Map(lambda r: (r["window_start"], r["n"])),
            equal_to([(iso(T0), 2), (iso(T0 + 120), 1)]),
        )


def test_with_event_time_rejects_unparseable_values_clearly():
    pipeline = TestPipeline()
    _ = pipeline | beam.Create([{"event_time": "soon"}]) | WithEventTime("event_time")
    with pytest.raises(RowStageError, match="event_time stage failed on a row: ValueError"):
        pipeline.run().wait_until_finish()


def test_aggregates_ignore_nulls_and_merge():
    fn = _AggregatesFn(
        (
            ("n", Count()),
            ("n_speed", Count("speed")),
            ("sum", Sum("speed")),
            ("mean", Mean("speed")),
            ("min", Min("speed")),
            ("max", Max("speed")),
            ("cars", CountDistinct("car")),
            ("double", Sum(lambda r: 2 * (r["speed"] or 0))),
        )
    )
    rows = [{"speed": 3, "car": "a"}, {"speed": None, "car": "a"}, {"speed": 1, "car": None}]
    left = fn.add_input(fn.create_accumulator(), rows[0])
    right = fn.add_input(fn.add_input(fn.create_accumulator(), rows[1]), rows[2])
    merged = fn.merge_accumulators([left, fn.create_accumulator(), right])
    assert fn.extract_output(merged) == {
        "n": 3,
        "n_speed": 2,
        "sum": 4,
        "mean": 2.0,
        "min": 1,
        "max": 3,
        "cars": 1,
        "double": 8,
    }
    empty = fn.extract_output(fn.create_accumulator())
    assert (empty["sum"], empty["mean"], empty["min"], empty["n"]) == (None, None, None, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window": Tumbling(60), "aggregates": {}}, ValueError, "at least one"),
        ({"window": 60, "aggregates": {"n": Count()}}, TypeError, "Tumbling, Sliding or Session"),
        ({"window": Tumbling(60), "aggregates": {"n": len}}, TypeError, "must be an Aggregate"),
        ({"window": Tumbling(60), "aggregates": {"car_id": Count()}}, ValueError, "clash"),
        ({"window": Tumbling(60), "aggregates": {"window_end": Count()}}, ValueError, "clash"),
        (
            {"window": Tumbling(60), "aggregates": {"n": Count()}, "allowed_lateness_s": -1},
            ValueError,
            ">= 0",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        WindowedAggregate(key="car_id", **kwargs)


def test_window_specs_validate():
    with pytest.raises(ValueError, match="positive"):
        Tumbling(0)
    with pytest.raises(ValueError, match="skip events"):
        Sliding(60, 120)
    with pytest.raises(ValueError, match="needs a field"):
        Mean(None)


def test_rows_without_event_time_get_a_clear_error():
    pipeline = TestPipeline()
    _ = (
        pipeline
        | beam.Create([{"car_id": "a"}])  # timestamp = MIN_TIMESTAMP
        | WindowedAggregate(key="car_id", window=Tumbling(60), aggregates={"n": Count()})
    )
    with pytest.raises(ValueError, match="carry no event time"):
        pipeline.run().wait_until_finish()


def test_an_empty_key_aggregates_everything_per_window():
    rows = [({"speed_kmh": 10.0}, 5), ({"speed_kmh": 30.0}, 50), ({"speed_kmh": 7.0}, 70)]
    with TestPipeline() as pipeline:
        out = (
            pipeline
            | beam.Create(rows)
            | beam.MapTuple(lambda row, t: TimestampedValue(row, t))
            | WindowedAggregate(
                key=(), window=Tumbling(60), aggregates={"n": Count(), "low": Min("speed_kmh")}
            )
        )
        assert_that(
            out,
            equal_to(
                [
                    {"window_start": iso(0), "window_end": iso(60), "n": 2, "low": 10.0},
                    {"window_start": iso(60), "window_end": iso(120), "n": 1, "low": 7.0},
                ]
            ),
        )
