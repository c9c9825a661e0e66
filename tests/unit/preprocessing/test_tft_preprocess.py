"""tf.Transform preprocessing from a RowSchema: analyze + write, then apply the saved artifact."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_transform as tft
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from transforms.decoding.schema import RowSchema
from transforms.preprocessing.tft import (
    MISSING_LABEL,
    AnalyzeAndWriteTransform,
    ApplySavedTransform,
    preprocessing_fn_for,
    saved_raw_schema,
    to_instance,
)

SCHEMA = RowSchema.from_bigquery_json(
    [
        {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "merchant", "type": "STRING", "mode": "REQUIRED"},
        {"name": "online", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "ts", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "x", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "Amount", "type": "FLOAT", "mode": "REQUIRED"},
        {"name": "opt", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "n", "type": "INTEGER", "mode": "REQUIRED"},
        {"name": "label", "type": "INTEGER", "mode": "NULLABLE"},
    ]
)

_X = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]
_AMOUNT = [0.0, 10.0, 100.0, 5.0, 2.5, 1000.0]
_OPT = [1.0, None, 3.0, None, 5.0, 7.0]
_N = [1, 1, 2, 3, 5, 8]
_MERCHANT = ["a", "b", "a", "c", "b", "a"]  # frequencies 3, 2, 1 → indices 0, 1, 2
_ONLINE = [True, False, True, None, True, False]
_LABEL = [0, 0, 1, None, 0, 1]

ROWS = [
    {
        "event_id": f"e{i}",
        "merchant": _MERCHANT[i],
        "online": _ONLINE[i],
        "ts": f"2026-11-22T01:02:0{i}.000000Z",
        "x": _X[i],
        "Amount": _AMOUNT[i],
        "opt": _OPT[i],
        "n": _N[i],
        "label": _LABEL[i],
    }
    for i in range(6)
]


def _z(values: list[float | None]) -> list[float]:
    present = np.array([v for v in values if v is not None], np.float64)
    mean, std = present.mean(), present.std()
    return [0.0 if v is None else (v - mean) / std for v in values]


def _expected() -> list[dict]:
    z_x, z_amount = _z(_X), _z([math.log1p(a) for a in _AMOUNT])
    z_opt, z_n = _z(_OPT), _z([float(n) for n in _N])
    online_index = {True: 0, False: 1, None: -1}
    return [
        {
            "event_id": f"e{i}",
            "merchant": {"a": 0, "b": 1, "c": 2}[_MERCHANT[i]],
            "online": online_index[_ONLINE[i]],
            "ts": ROWS[i]["ts"],
            "x": z_x[i],
            "Amount": z_amount[i],
            "opt": z_opt[i],
            "n": z_n[i],
            "label": MISSING_LABEL if _LABEL[i] is None else _LABEL[i],
        }
        for i in range(6)
    ]


def _matches(expected: list[dict]):
    def check(actual: list[dict]) -> None:
        by_id = {row["event_id"]: row for row in actual}
        if sorted(by_id) != sorted(row["event_id"] for row in expected):
            raise BeamAssertException(f"ids differ: {sorted(by_id)}")
        for want in expected:
            got = by_id[want["event_id"]]
            if set(got) != set(want):
                raise BeamAssertException(f"fields differ: {sorted(got)}")
            for name, value in want.items():
                same = (
                    got[name] == pytest.approx(value, abs=1e-5)
                    if isinstance(value, float)
                    else got[name] == value
                )
                if not same:
                    raise BeamAssertException(
                        f"{want['event_id']}.{name}: {got[name]!r} != {value!r}"
                    )

    return check


@pytest.fixture(scope="module")
def transform_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("tft") / "transform")
    with TestPipeline() as p:
        transformed = (
            p | beam.Create(ROWS) | AnalyzeAndWriteTransform(SCHEMA, directory, label="label")
        )
        assert_that(transformed, _matches(_expected()))
    return directory


def test_analyze_writes_a_loadable_artifact_and_the_raw_schema(transform_dir: str) -> None:
    output = tft.TFTransformOutput(transform_dir)
    assert set(output.transformed_feature_spec()) == set(SCHEMA.names)
    assert set(output.raw_feature_spec()) == set(SCHEMA.names)
    assert saved_raw_schema(transform_dir) == SCHEMA


def test_apply_saved_transform_reproduces_the_analysis(transform_dir: str) -> None:
    unseen = dict(ROWS[0], event_id="new", merchant="zzz", opt=None, label=None)
    expected = [*_expected(), dict(_expected()[0], event_id="new", merchant=3, opt=0.0, label=-1)]
    with TestPipeline() as p:
        transformed = p | beam.Create([*ROWS, unseen]) | ApplySavedTransform(transform_dir)
        assert_that(transformed, _matches(expected))


def test_transform_layer_serves_raw_tensors_like_the_pipeline(transform_dir: str) -> None:
    import tensorflow as tf

    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    out = layer({"x": tf.constant(_X, tf.float32), "Amount": tf.constant(_AMOUNT, tf.float32)})
    want = _expected()
    assert out["x"].numpy().tolist() == pytest.approx([w["x"] for w in want], abs=1e-5)
    assert out["Amount"].numpy().tolist() == pytest.approx([w["Amount"] for w in want], abs=1e-5)


def test_bad_declarations_and_rows_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="label 'nope'"):
        preprocessing_fn_for(SCHEMA, label="nope")
    with pytest.raises(ValueError, match="id fields not in the schema"):
        preprocessing_fn_for(SCHEMA, id_fields=["missing"])
    nested = RowSchema.from_bigquery_json(
        [{"name": "r", "type": "RECORD", "fields": [{"name": "a", "type": "FLOAT"}]}]
    )
    with pytest.raises(ValueError, match="flat scalar fields"):
        preprocessing_fn_for(nested)
    with pytest.raises(ValueError, match="REQUIRED field 'x' is missing"):
        to_instance({**ROWS[0], "x": None}, SCHEMA)
    with pytest.raises(ValueError, match="field 'n': expected a number"):
        to_instance({**ROWS[0], "n": "7"}, SCHEMA)
    assert to_instance(ROWS[3], SCHEMA)["opt"] == [] and to_instance(ROWS[0], SCHEMA)["opt"] == [
        1.0
    ]


def test_numeric_decimal_strings_become_floats() -> None:
    schema = RowSchema.from_bigquery_json(
        [{"name": "price", "type": "NUMERIC", "mode": "REQUIRED"}]
    )
    assert to_instance({"price": "12.50"}, schema) == {"price": 12.5}
    with pytest.raises(ValueError, match="field 'price': expected a number"):
        to_instance({"price": "twelve"}, schema)


def test_the_same_rows_give_bit_identical_analyzer_results(tmp_path) -> None:
    """Fixed analyzer batches: the trainer's seed must reproduce the model across processes."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    xs, amounts = rng.normal(size=3000).tolist(), rng.lognormal(size=3000).tolist()
    rows = [dict(ROWS[i % 6], event_id=f"e{i}", x=xs[i], Amount=amounts[i]) for i in range(3000)]
    probe = {"x": tf.constant([xs[0], 1e-3]), "Amount": tf.constant([amounts[0], 7.0])}
    results = []
    for run in ("first", "second"):
        directory = str(tmp_path / run)
        with beam.Pipeline(runner="FnApiRunner") as p:
            _ = (
                p
                | beam.Create(rows, reshuffle=False)
                | AnalyzeAndWriteTransform(SCHEMA, directory, label="label", batch_size=97)
            )
        layer = tft.TFTransformOutput(directory).transform_features_layer()
        outputs = layer(probe)
        results.append({name: outputs[name].numpy().tobytes() for name in ("x", "Amount")})
    assert results[0] == results[1]
