"""The synthetic generators: reproducible, schema-valid, plausible, and corruptible on purpose."""

from __future__ import annotations

import collections
import csv
import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.demo.synthetic_data import (
    CAR_SENSOR_FEATURES,
    CREDITCARD_FEATURES,
    MALFORMED_KINDS,
    car_sensor_events,
    creditcard_transactions,
    encode_messages,
    read_creditcard_csv,
)
from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import bundled_schema
from transforms.kafka.record import KafkaRecord


@pytest.fixture(scope="module")
def transactions() -> list[dict]:
    return list(creditcard_transactions(30_000, seed=11))


def test_same_seed_same_rows_and_shorter_runs_are_prefixes() -> None:
    long = list(creditcard_transactions(5_000, seed=3))  # crosses a generation chunk
    assert list(creditcard_transactions(5_000, seed=3)) == long
    assert list(creditcard_transactions(4_500, seed=3)) == long[:4_500]
    assert list(creditcard_transactions(100, seed=4)) != long[:100]
    cars = list(car_sensor_events(500, seed=3, cars=7))
    assert list(car_sensor_events(500, seed=3, cars=7)) == cars
    assert list(car_sensor_events(200, seed=3, cars=7)) == cars[:200]
    assert list(car_sensor_events(500, seed=5, cars=7)) != cars


def test_creditcard_rows_are_valid_for_the_bundled_schema(transactions: list[dict]) -> None:
    validator = RowValidator(bundled_schema("creditcard"))
    for row in transactions[:2_000]:
        assert validator.validate(row) == row
    assert [name for name in transactions[0] if name in CREDITCARD_FEATURES] == list(
        CREDITCARD_FEATURES
    )


def test_creditcard_shape_is_kaggle_like(transactions: list[dict]) -> None:
    ids = [r["event_id"] for r in transactions]
    assert len(set(ids)) == len(ids)
    times = np.array([r["Time"] for r in transactions])
    assert times[0] == 0.0 and (np.diff(times) >= 0).all()
    amounts = np.array([r["Amount"] for r in transactions])
    assert amounts.min() >= 0 and 10 < np.median(amounts) < 40
    labels = np.array([r["Class"] for r in transactions])
    # 0.172 % of 30,000 = 51.6 expected frauds (binomial sd ≈ 7.2).
    assert 30 <= labels.sum() <= 75
    v = np.array([[r[f"V{i}"] for i in range(1, 29)] for r in transactions])
    normal_std = v[labels == 0].std(axis=0)
    assert normal_std[0] > 1.6 and normal_std[-1] < 0.5  # differing, decreasing variances
    assert np.abs(v[labels == 0].mean(axis=0)).max() < 0.05


def test_frauds_are_distinguishable_but_overlap(transactions: list[dict]) -> None:
    labels = np.array([r["Class"] for r in transactions])
    v14 = np.array([r["V14"] for r in transactions])
    assert v14[labels == 1].mean() < v14[labels == 0].mean() - 1.5
    # Mild frauds lie inside the bulk of legitimate values.
    low, high = np.percentile(v14[labels == 0], [5, 95])
    assert ((v14[labels == 1] > low) & (v14[labels == 1] < high)).any()


def test_fraud_rate_is_a_parameter() -> None:
    labels = [r["Class"] for r in creditcard_transactions(4_000, seed=1, fraud_rate=0.25)]
    assert 900 < sum(labels) < 1_100
    with pytest.raises(ValueError, match="fraud_rate"):
        list(creditcard_transactions(1, fraud_rate=1.5))


def test_car_sensor_events_are_valid_correlated_and_labelled() -> None:
    events = list(car_sensor_events(20_000, seed=2, cars=10, anomaly_rate=0.01))
    validator = RowValidator(bundled_schema("car_sensor"))
    for row in events[:1_000]:
        assert validator.validate(row) == row
    assert {e["car_id"] for e in events} == {f"car-{i:04d}" for i in range(10)}
    columns = {f: np.array([e[f] for e in events]) for f in CAR_SENSOR_FEATURES}
    assert np.corrcoef(columns["speed_kmh"], columns["engine_rpm"])[0, 1] > 0.5
    labels = np.array([e["is_anomaly"] for e in events])
    assert 120 < labels.sum() < 280
    normal = labels == 0
    assert columns["engine_temp_c"][normal].max() < columns["engine_temp_c"][~normal].max()
    assert columns["tire_pressure_kpa"][~normal].min() < columns["tire_pressure_kpa"][normal].min()
    assert any(e["latitude"] is None for e in events)  # GPS dropouts (NULLABLE)
    car0 = [e["event_time"] for e in events if e["car_id"] == "car-0000"]
    assert car0 == sorted(car0) and car0[0] == "2026-01-01T00:00:00.000000Z"


def _records(messages: list) -> list[KafkaRecord]:
    return [
        KafkaRecord("t", 0, offset, m.key, m.value, 1_700_000_000_000 + offset)
        for offset, m in enumerate(messages)
    ]


def test_malformed_messages_are_dead_lettered_by_the_decoder() -> None:
    rows = list(creditcard_transactions(400, seed=5))
    messages = list(encode_messages(rows, key_field="card_id", malformed_fraction=0.2, seed=5))
    assert messages == list(
        encode_messages(rows, key_field="card_id", malformed_fraction=0.2, seed=5)
    )
    kinds = collections.Counter(m.malformed for m in messages if m.malformed)
    assert set(kinds) == set(MALFORMED_KINDS)
    assert 50 < sum(kinds.values()) < 110
    assert all(m.key == row["card_id"].encode() for m, row in zip(messages, rows, strict=True))
    good_ids = sorted(r["event_id"] for m, r in zip(messages, rows, strict=True) if not m.malformed)
    bad_offsets = sorted(i for i, m in enumerate(messages) if m.malformed)

    with TestPipeline() as p:
        decoded = (
            p | beam.Create(_records(messages)) | DecodeAndValidate(bundled_schema("creditcard"))
        )
        assert_that(decoded.rows | beam.Map(lambda r: r["event_id"]), equal_to(good_ids),
                    label="GoodRows")  # fmt: skip
        assert_that(decoded.dead_letters | beam.Map(lambda d: d.offset), equal_to(bad_offsets),
                    label="DeadLetters")  # fmt: skip


def test_well_formed_messages_are_compact_json_of_the_row() -> None:
    rows = list(car_sensor_events(3, seed=1))
    messages = list(encode_messages(rows, key_field="car_id"))
    assert [json.loads(m.value) for m in messages] == rows
    assert all(m.malformed is None and b" " not in m.value for m in messages)


def test_read_creditcard_csv(tmp_path) -> None:
    path = tmp_path / "creditcard.csv"
    header = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount", "Class"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(header)
        writer.writerow([0.0, *[0.5] * 28, 149.62, "0"])
        writer.writerow([2.0, *[-1.25] * 28, 2.69, "1"])
    rows = list(read_creditcard_csv(str(path)))
    assert [r["event_id"] for r in rows] == ["csv-000000000", "csv-000000001"]
    assert rows[1]["V28"] == -1.25 and rows[1]["Amount"] == 2.69 and rows[1]["Class"] == 1
    validator = RowValidator(bundled_schema("creditcard"))
    assert [validator.validate(r) for r in rows] == rows

    bad = tmp_path / "bad.csv"
    bad.write_text("Time,V1,Amount\n0,1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        list(read_creditcard_csv(str(bad)))
