"""The car-sensor and fraud queries of docs/preprocessing.md, run on in-memory Kafka records."""

from __future__ import annotations

import datetime
import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.row_validation import format_timestamp
from transforms.decoding.schema import RowSchema, bundled_schema
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing.enrich import EnrichWithSideInput, FileReference
from transforms.preprocessing.filter_project import Filter, Project
from transforms.preprocessing.window_aggregate import (
    Count,
    Max,
    Mean,
    Sliding,
    Sum,
    Tumbling,
    WindowedAggregate,
    WithEventTime,
)

T0 = 1_795_305_600  # 2026-11-22T00:00:00Z


def iso(seconds: float) -> str:
    return format_timestamp(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def kafka(topic: str, offset: int, key: str | None, value: dict | bytes, t: float) -> KafkaRecord:
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    key_bytes = key.encode() if key else None
    return KafkaRecord(topic, 0, offset, key_bytes, payload, int(t * 1000))


def as_read(records):
    """What ReadFromKafka emits: records timestamped with their Kafka time."""
    return beam.Create(records) | beam.Map(lambda r: TimestampedValue(r, r.timestamp_ms / 1000))


def sensor(i: int, car: str, t: float, temp: float = 90.0, speed: float = 80.0) -> dict:
    return {
        "event_id": f"e{i}",
        "car_id": car,
        "event_time": iso(t),
        "speed_kmh": speed,
        "engine_rpm": 2500.0,
        "engine_temp_c": temp,
        "oil_pressure_kpa": 300.0,
        "battery_voltage": 12.5,
        "tire_pressure_kpa": 230.0,
    }


def test_car_sensor_queries(tmp_path):
    cars_csv = tmp_path / "cars.csv"
    cars_csv.write_text("car_id,model\ncar-1,Roadster\ncar-2,Van\n")
    cars_schema = RowSchema.from_bigquery_json(
        [{"name": "car_id", "type": "STRING"}, {"name": "model", "type": "STRING"}]
    )
    events = [sensor(i, "car-1", T0 + 10 * i, speed=60.0 + i) for i in range(7)]  # 7 in [0,120)
    events += [sensor(10 + i, "car-2", T0 + 10 * i) for i in range(3)]  # only 3: HAVING drops
    events += [sensor(20, "car-2", T0 + 30, temp=120.0), sensor(21, "car-9", T0 + 40, temp=115.0)]
    # Kafka time lags the sensors' own time by 5 minutes; WithEventTime uses the latter.
    records = [kafka("car_sensor", n, e["car_id"], e, T0 + 300 + n) for n, e in enumerate(events)]
    records.append(kafka("car_sensor", 99, "car-1", b"{broken", T0 + 400))

    with TestPipeline() as pipeline:
        decoded = pipeline | as_read(records) | DecodeAndValidate(bundled_schema("car_sensor"))
        busy_cars = (
            decoded.rows
            | WithEventTime("event_time")
            | WindowedAggregate(
                key="car_id",
                window=Tumbling(120),
                aggregates={
                    "n": Count(),
                    "avg_speed": Mean("speed_kmh"),
                    "max_temp": Max("engine_temp_c"),
                },
                having="n > 5",
                allowed_lateness_s=60,
            )
        )
        hot_engines = (
            decoded.rows
            | Filter("engine_temp_c > 110")
            | EnrichWithSideInput(
                FileReference(str(cars_csv), schema=cars_schema), key="car_id", fields=["model"]
            )
            | Project("car_id", "event_time", "engine_temp_c", "model")
        )
        assert_that(
            busy_cars,
            equal_to(
                [
                    {
                        "car_id": "car-1",
                        "window_start": iso(T0),
                        "window_end": iso(T0 + 120),
                        "n": 7,
                        "avg_speed": 63.0,
                        "max_temp": 90.0,
                    }
                ]
            ),
            label="BusyCars",
        )
        assert_that(
            hot_engines,
            equal_to(
                [
                    {
                        "car_id": "car-2",
                        "event_time": iso(T0 + 30),
                        "engine_temp_c": 120.0,
                        "model": "Van",
                    },
                    {
                        "car_id": "car-9",
                        "event_time": iso(T0 + 40),
                        "engine_temp_c": 115.0,
                        "model": None,
                    },
                ]
            ),
            label="HotEngines",
        )
        assert_that(
            decoded.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
            equal_to([(99, "InvalidJson")]),
            label="DeadLetters",
        )


def transaction(i: int, card: str | None, amount: float) -> dict:
    return {
        "event_id": f"tx{i}",
        "card_id": card,
        "Time": float(i),
        **{f"V{k}": 0.1 * k for k in range(1, 29)},
        "Amount": amount,
    }


def test_fraud_queries(tmp_path):
    cards = tmp_path / "cards.jsonl"  # stands in for the BigQuery table (integration-tested)
    cards.write_text('{"card_id": "c1", "home_country": "DE"}\n')
    txs = [
        (transaction(0, "c1", 1500.0), 10),
        (transaction(1, "c2", 2500.0), 20),  # large but unknown card: inner join drops it
        (transaction(2, "c1", 100.0), 70),
        (transaction(3, "c1", 450.0), 80),
        (transaction(4, None, 5.0), 90),  # no card: not in the bursts
    ]
    records = [kafka("transactions", n, tx["card_id"], tx, T0 + t) for n, (tx, t) in enumerate(txs)]
    with TestPipeline() as pipeline:
        tx_rows = (
            pipeline | as_read(records) | DecodeAndValidate(bundled_schema("creditcard"))
        ).rows
        large_tx = (
            tx_rows
            | Filter("Amount > 1000")
            | EnrichWithSideInput(FileReference(str(cards)), key="card_id", how="inner")
            | Project("event_id", "card_id", "Amount", "home_country")
        )
        card_bursts = (
            tx_rows
            | "HasCard" >> Filter("card_id is not None")
            | WindowedAggregate(
                key="card_id",
                window=Sliding(600, 60),
                aggregates={"n": Count(), "total": Sum("Amount")},
                having="n >= 3 and total > 500",
            )
        )
        assert_that(
            large_tx,
            equal_to(
                [{"event_id": "tx0", "card_id": "c1", "Amount": 1500.0, "home_country": "DE"}]
            ),
            label="LargeTx",
        )
        # c1 has 3 transactions at +10, +70, +80 s: every 10-minute window holding all three.
        starts = [T0 - 480 + 60 * k for k in range(9)]
        assert_that(
            card_bursts | beam.Map(lambda r: (r["card_id"], r["window_start"], r["n"], r["total"])),
            equal_to([("c1", iso(s), 3, 2050.0) for s in starts]),
            label="Bursts",
        )
