"""Deterministic synthetic events for the demos: credit-card transactions and car sensor readings.

We cannot download the Kaggle ``creditcard.csv`` here, so :func:`creditcard_transactions` makes
rows shaped like it (``Time``, ``V1``..``V28``, ``Amount``, ``Class`` plus ``event_id`` and
``card_id``, the bundled ``creditcard`` schema) and :func:`car_sensor_events` makes connected-car
readings (the bundled ``car_sensor`` schema). Everything is a pure function of its arguments:
the same seed gives the same rows, and a shorter run is a prefix of a longer one, so tests, the
trainer and the scoring demo can regenerate exactly the events they need.

:func:`encode_messages` turns rows into Kafka key/value bytes and can corrupt a chosen fraction of
them (invalid JSON, wrong types, missing fields, non-UTF-8) to exercise dead-letter paths.

Usage::

    rows = list(creditcard_transactions(10_000, seed=7))
    for message in encode_messages(rows, key_field="card_id", malformed_fraction=0.01, seed=7):
        producer.produce(topic, key=message.key, value=message.value)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "CREDITCARD_FEATURES",
    "CREDITCARD_LABEL",
    "CAR_SENSOR_FEATURES",
    "CAR_SENSOR_LABEL",
    "DEFAULT_FRAUD_RATE",
    "MALFORMED_KINDS",
    "Message",
    "creditcard_transactions",
    "read_creditcard_csv",
    "car_sensor_events",
    "encode_messages",
]

#: Model features of the credit-card use case, in the order of the Kaggle set.
CREDITCARD_FEATURES: tuple[str, ...] = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")
CREDITCARD_LABEL = "Class"
#: Share of frauds in the Kaggle set (492 of 284,807).
DEFAULT_FRAUD_RATE = 0.00172

CAR_SENSOR_FEATURES: tuple[str, ...] = (
    "speed_kmh",
    "engine_rpm",
    "engine_temp_c",
    "oil_pressure_kpa",
    "battery_voltage",
    "tire_pressure_kpa",
)
CAR_SENSOR_LABEL = "is_anomaly"

MALFORMED_KINDS: tuple[str, ...] = ("invalid_json", "wrong_type", "missing_field", "non_utf8")

# Rows are drawn in fixed-size chunks, each from its own seeded stream, so a run of N rows is
# the prefix of a longer run with the same seed.
_CHUNK = 4096

# Standard deviations of V1..V28 in the Kaggle set (PCA components: decreasing variance).
_V_STD = np.array(
    [1.96, 1.65, 1.52, 1.42, 1.38, 1.33, 1.24, 1.19, 1.10, 1.09, 1.02, 1.00, 1.00, 0.96,
     0.92, 0.88, 0.85, 0.84, 0.81, 0.77, 0.73, 0.73, 0.62, 0.61, 0.52, 0.48, 0.40, 0.33]
)  # fmt: skip
# Mean shift of frauds in standard deviations at full severity, after the Kaggle fraud means
# (strongly negative V3, V10, V12, V14, V17; positive V2, V4, V11). Most Vs are not shifted.
_FRAUD_SHIFT = np.zeros(28)
for _index, _shift in {
    1: -1.6, 2: 1.6, 3: -3.0, 4: 2.6, 5: -1.4, 7: -2.8, 9: -1.6, 10: -3.2,
    11: 2.8, 12: -3.6, 14: -4.0, 16: -2.8, 17: -3.8, 18: -1.6,
}.items():  # fmt: skip
    _FRAUD_SHIFT[_index - 1] = _shift
# Legitimate behaviour has few degrees of freedom: V1..V28 mix 5 hidden factors (fixed loadings,
# unit variance per column) plus independent noise, so an autoencoder can learn what is normal.
_FACTORS = 4
_NOISE_SHARE = 0.15
_LOADINGS = np.random.default_rng(20261122).standard_normal((28, _FACTORS))
_LOADINGS /= np.linalg.norm(_LOADINGS, axis=1, keepdims=True)
_CARD_POOL = 20_000
_MEAN_SECONDS_BETWEEN_TRANSACTIONS = 0.6


def _chunk_rng(seed: int, stream: str, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), chunk])


def creditcard_transactions(
    count: int, *, seed: int = 0, fraud_rate: float = DEFAULT_FRAUD_RATE
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` Kaggle-shaped transactions; frauds (``Class`` 1) at ``fraud_rate``.

    Legitimate ``V`` values are centred with the Kaggle variances and come from a few hidden
    factors plus noise (unlike real PCA components they are correlated), with some heavy-tailed
    rows; a fraud shifts a subset of the ``V`` values by a random severity, so mild frauds
    overlap the legitimate rows (separable, not trivially). ``Amount`` is log-normal, ``Time``
    counts seconds from the first transaction, ``event_id`` is unique per seed and index.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= fraud_rate <= 1.0:
        raise ValueError(f"fraud_rate must be within [0, 1], got {fraud_rate}")
    elapsed = 0.0
    for chunk, start in enumerate(range(0, count, _CHUNK)):
        # Always draw a whole chunk (then use its head) so a run's length changes no values.
        size = _CHUNK
        rng = _chunk_rng(seed, "creditcard", chunk)
        fraud = rng.random(size) < fraud_rate
        # Heavy tails: some legitimate rows are further out along the factors than the bulk.
        latent = rng.standard_normal((size, _FACTORS))
        latent *= np.where(rng.random(size) < 0.05, 2.0, 1.0)[:, None]
        values = np.sqrt(1 - _NOISE_SHARE) * latent @ _LOADINGS.T
        values += np.sqrt(_NOISE_SHARE) * rng.standard_normal((size, 28))
        values += np.where(fraud, rng.uniform(0.25, 1.25, size), 0.0)[:, None] * _FRAUD_SHIFT
        values *= _V_STD
        # Legitimate amounts follow the first factor (Kaggle's Amount correlates with V2, V7,
        # V20); fraudulent ones do not: many tiny "test" charges, the rest large.
        legit_log_amount = 3.0 + 1.1 * latent[:, 0] + 0.5 * rng.standard_normal(size)
        amount = np.where(
            fraud,
            np.where(
                rng.random(size) < 0.4, rng.uniform(0.5, 2.0, size), rng.lognormal(4.2, 1.3, size)
            ),
            np.exp(np.minimum(legit_log_amount, 9.0)),
        )
        gaps = rng.exponential(_MEAN_SECONDS_BETWEEN_TRANSACTIONS, size)
        gaps[0] = 0.0 if start == 0 else gaps[0]
        times = elapsed + np.cumsum(gaps)
        elapsed = float(times[-1])
        cards = rng.integers(0, _CARD_POOL, size)
        for i in range(min(size, count - start)):
            row: dict[str, Any] = {
                "event_id": f"cc-{seed}-{start + i:09d}",
                "card_id": f"card-{cards[i]:05d}",
                "Time": round(float(times[i]), 3),
            }
            row.update({f"V{j + 1}": round(float(values[i, j]), 6) for j in range(28)})
            row["Amount"] = round(float(amount[i]), 2)
            row["Class"] = int(fraud[i])
            yield row


def read_creditcard_csv(path: str) -> Iterator[dict[str, Any]]:
    """Yield the rows of the real Kaggle ``creditcard.csv`` in the same shape as the generator.

    The file has no ids, so ``event_id`` is ``csv-<row number>`` and ``card_id`` is derived from
    the row number; the file must have the Kaggle header (a missing column is a clear error).
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [
            c
            for c in (*CREDITCARD_FEATURES, CREDITCARD_LABEL)
            if c not in (reader.fieldnames or ())
        ]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected the Kaggle header")
        for number, record in enumerate(reader):
            try:
                row: dict[str, Any] = {
                    "event_id": f"csv-{number:09d}",
                    "card_id": f"card-{zlib.crc32(str(number).encode()) % _CARD_POOL:05d}",
                }
                row.update({name: float(record[name]) for name in CREDITCARD_FEATURES})
                row[CREDITCARD_LABEL] = int(float(record[CREDITCARD_LABEL]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}: data row {number + 1}: {err}") from err
            yield row


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: Default start of the car-sensor clock (fixed so the output is reproducible).
CAR_SENSOR_EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def car_sensor_events(
    count: int,
    *,
    seed: int = 0,
    cars: int = 20,
    anomaly_rate: float = 0.005,
    start: datetime.datetime | None = None,
    interval_s: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` readings from ``cars`` simulated cars, one per car every ``interval_s``.

    Signals are coupled as in a real car: rpm follows speed and gear, the engine warms with
    load, oil pressure follows rpm and temperature, tyres warm up while driving. A reading is an
    anomaly (``is_anomaly`` 1) at ``anomaly_rate``: overheating, oil-pressure loss, a failing
    battery or a puncture. GPS drops out now and then (``latitude``/``longitude`` None).
    """
    if count < 0 or cars < 1:
        raise ValueError(f"need count >= 0 and cars >= 1, got count={count}, cars={cars}")
    origin = (start or CAR_SENSOR_EPOCH).timestamp()
    rng = _chunk_rng(seed, "car_sensor", 0)
    speed = rng.uniform(0, 90, cars)
    target = rng.uniform(30, 120, cars)
    temp = rng.uniform(60, 90, cars)
    tire_base = rng.normal(235, 6, cars)
    lat = 48.1 + rng.normal(0, 0.2, cars)
    lon = 11.5 + rng.normal(0, 0.3, cars)
    heading = rng.uniform(0, 2 * np.pi, cars)
    produced = 0
    tick = 0
    while produced < count:
        rng = _chunk_rng(seed, "car_sensor", tick + 1)
        retarget = rng.random(cars) < 0.02
        target = np.where(retarget, rng.choice([0.0, 50.0, 80.0, 120.0], cars), target)
        speed = np.clip(speed + 0.1 * (target - speed) + rng.normal(0, 2, cars), 0, 200)
        gear = np.clip(np.ceil(speed / 30), 1, 6)
        rpm = 800 + speed / gear * 95 + rng.normal(0, 60, cars)
        temp = temp + 0.05 * (88 + rpm / 1000 * 2 - temp) + rng.normal(0, 0.3, cars)
        oil = 120 + rpm * 0.07 - (temp - 90) * 0.6 + rng.normal(0, 8, cars)
        battery = 13.9 + rng.normal(0, 0.08, cars) - np.where(speed < 1, 1.3, 0.0)
        tire = tire_base + (temp - 60) * 0.15 + rng.normal(0, 1.5, cars)
        heading = heading + rng.normal(0, 0.1, cars)
        step_km = speed * interval_s / 3600
        lat = lat + step_km / 111 * np.cos(heading)
        lon = lon + step_km / 74 * np.sin(heading)
        anomaly = rng.random(cars) < anomaly_rate
        kind = rng.integers(0, 4, cars)
        hit = [anomaly & (kind == k) for k in range(4)]
        shown = {
            "engine_temp_c": np.where(hit[0], temp + rng.uniform(25, 40, cars), temp),
            "oil_pressure_kpa": np.where(hit[1], oil * rng.uniform(0.1, 0.35, cars), oil),
            "battery_voltage": np.where(hit[2], rng.uniform(10.5, 11.6, cars), battery),
            "tire_pressure_kpa": np.where(hit[3], tire - rng.uniform(60, 110, cars), tire),
        }
        gps_lost = rng.random(cars) < 0.01
        for car in range(min(cars, count - produced)):
            yield {
                "event_id": f"car-{seed}-{produced:09d}",
                "car_id": f"car-{car:04d}",
                "event_time": _rfc3339(origin + tick * interval_s + car * 0.001),
                "speed_kmh": round(float(speed[car]), 2),
                "engine_rpm": round(float(rpm[car]), 1),
                "engine_temp_c": round(float(shown["engine_temp_c"][car]), 2),
                "oil_pressure_kpa": round(float(shown["oil_pressure_kpa"][car]), 1),
                "battery_voltage": round(float(shown["battery_voltage"][car]), 3),
                "tire_pressure_kpa": round(float(shown["tire_pressure_kpa"][car]), 1),
                "latitude": None if gps_lost[car] else round(float(lat[car]), 6),
                "longitude": None if gps_lost[car] else round(float(lon[car]), 6),
                "is_anomaly": int(anomaly[car]),
            }
            produced += 1
        tick += 1


@dataclasses.dataclass(frozen=True)
class Message:
    """Kafka key/value bytes; ``malformed`` names the corruption applied, or is None."""

    key: bytes | None
    value: bytes
    malformed: str | None = None


def _corrupt(row: Mapping[str, Any], kind: str, rng: np.random.Generator) -> bytes:
    text = json.dumps(row, separators=(",", ":"))
    numeric = sorted(k for k, v in row.items() if isinstance(v, float))
    if kind == "invalid_json":
        return text[: int(rng.integers(1, len(text) - 1))].encode()
    if kind == "wrong_type" and numeric:
        broken = dict(row)
        broken[numeric[int(rng.integers(len(numeric)))]] = "not-a-number"
        return json.dumps(broken, separators=(",", ":")).encode()
    if kind == "missing_field":
        broken = dict(row)
        broken.pop("event_id", None)
        return json.dumps(broken, separators=(",", ":")).encode()
    return b"\xff\xfe" + text.encode("utf-16-le")  # non_utf8 (also the fallback)


def encode_messages(
    rows: Iterable[Mapping[str, Any]],
    *,
    key_field: str,
    malformed_fraction: float = 0.0,
    seed: int = 0,
) -> Iterator[Message]:
    """Encode rows as compact JSON keyed by ``key_field``; corrupt ``malformed_fraction`` of them.

    The corruption kinds cycle through :data:`MALFORMED_KINDS`, chosen by a seeded stream, so
    the same arguments give the same bytes.
    """
    if not 0.0 <= malformed_fraction <= 1.0:
        raise ValueError(f"malformed_fraction must be within [0, 1], got {malformed_fraction}")
    rng = _chunk_rng(seed, "malformed", 0)
    for row in rows:
        key = row.get(key_field)
        key_bytes = None if key is None else str(key).encode()
        if malformed_fraction and rng.random() < malformed_fraction:
            kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
            yield Message(key_bytes, _corrupt(row, kind, rng), kind)
        else:
            yield Message(key_bytes, json.dumps(row, separators=(",", ":")).encode())
