"""The trainer: held-out quality, train/serve fidelity, layout, determinism, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines.common.options import OptionError
from pipelines.demo.synthetic_data import CREDITCARD_FEATURES, creditcard_transactions
from pipelines.train import TrainSettings, next_version, run, split_of, train
from pipelines.training.data import rows_from_tfrecords
from pipelines.training.evaluation import average_precision
from transforms.decoding.schema import bundled_schema
from transforms.inference.model_store import latest_version, read_model_info
from transforms.sinks.tfrecord import SCHEMA_FILE, row_to_example

TRAIN_ROWS = 30_000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training run at the defaults on 30k generated rows (seed 0)."""
    root = tmp_path_factory.mktemp("train")
    rows = list(creditcard_transactions(TRAIN_ROWS, seed=0))
    settings = TrainSettings(
        transform_dir=str(root / "transform"), model_path=str(root / "models"), seed=0
    )
    return settings, train(rows, bundled_schema("creditcard"), settings)


def _serve(version_dir: str, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    signature = loaded.signatures["serving_default"]
    inputs = {
        name: tf.constant([r[name] for r in rows], tf.float32) for name in CREDITCARD_FEATURES
    }
    outputs = signature(**inputs)
    return outputs["score"].numpy(), outputs["is_anomaly"].numpy()


def test_model_reaches_pr_auc_on_held_out_generator_data(trained) -> None:
    _, result = trained
    # Fresh draws from the generator (other seeds, same Time range as the training data):
    # ~155 frauds among 90k rows, scored by the exported model itself.
    held_out = [
        row for seed in (101, 102, 103) for row in creditcard_transactions(TRAIN_ROWS, seed=seed)
    ]
    scores, _ = _serve(result.version_dir, held_out)
    labels = np.array([r["Class"] for r in held_out])
    assert labels.sum() > 120
    assert average_precision(labels, scores) >= 0.8
    assert result.metrics["test"]["pr_auc"] is not None
    assert result.metrics["test"]["positives"] > 0


def test_serving_signature_matches_the_trainers_batch_evaluation(trained) -> None:
    _, result = trained
    scores, flags = _serve(result.version_dir, result.test_rows)
    assert len(result.test_rows) == len(result.test_scores) > 5_000
    np.testing.assert_allclose(scores, result.test_scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(flags, scores > np.float32(result.threshold))


def test_export_follows_the_model_contract(trained) -> None:
    settings, result = trained
    newest = latest_version(settings.model_path)
    assert (newest.version, result.version) == (1, 1)
    info = read_model_info(newest.path)
    assert info.features == CREDITCARD_FEATURES
    assert (info.label, info.id_field) == ("Class", "event_id")
    assert info.threshold == pytest.approx(result.threshold)
    assert info.metrics["pr_auc"] == result.metrics["test"]["pr_auc"]
    directory = result.version_dir
    with open(os.path.join(directory, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["test"] == result.metrics["test"] and metrics["history"]["val_loss"]
    for name in ("pr_curve.png", "score_histogram.png"):
        with open(os.path.join(directory, name), "rb") as handle:
            assert handle.read(4) == b"\x89PNG"
    events = [f for _, _, files in os.walk(os.path.join(directory, "logs")) for f in files]
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_same_seed_same_model_and_versions_count_up(trained) -> None:
    settings, _ = trained
    rows = list(creditcard_transactions(3_000, seed=8, fraud_rate=0.02))
    quick = TrainSettings(
        transform_dir=settings.transform_dir, model_path=settings.model_path, epochs=2, seed=5
    )
    first = train(rows, bundled_schema("creditcard"), quick)
    second = train(rows, bundled_schema("creditcard"), quick)
    assert (first.version, second.version) == (2, 3)
    assert next_version(settings.model_path) == 4
    np.testing.assert_array_equal(first.test_scores, second.test_scores)
    assert first.threshold == second.threshold


def _write_tfrecords(directory, rows: list[dict]) -> str:
    import tensorflow as tf

    schema = bundled_schema("creditcard")
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "part-00000-of-00001.tfrecord")) as writer:
        for row in rows:
            writer.write(row_to_example(row, schema).SerializeToString())
    with open(os.path.join(directory, SCHEMA_FILE), "w") as handle:
        json.dump(schema.to_bigquery_json(), handle)
    return os.path.join(directory, "part-*")


def test_cli_trains_from_exported_tfrecords(trained, tmp_path) -> None:
    settings, _ = trained
    rows = list(creditcard_transactions(2_000, seed=9, fraud_rate=0.02))
    rows[0]["card_id"] = None  # NULLABLE: an absent feature in the tf.Example
    pattern = _write_tfrecords(tmp_path / "export", rows)

    schema, read = rows_from_tfrecords(pattern)
    assert schema == bundled_schema("creditcard") and len(read) == len(rows)
    assert read[0]["card_id"] is None and read[1]["card_id"] == rows[1]["card_id"]
    assert read[5]["event_id"] == rows[5]["event_id"] and read[5]["Class"] == rows[5]["Class"]
    assert read[5]["V3"] == pytest.approx(rows[5]["V3"], rel=1e-6)  # float_list is float32

    result = run(
        [
            f"--trainingData={pattern}",
            f"--transformDir={settings.transform_dir}",
            f"--modelPath={tmp_path / 'models'}",
            "--epochs=2",
            "--seed=1",
        ]
    )
    assert result.version == 1 and sum(result.metrics["rows"].values()) == len(rows)
    assert read_model_info(result.version_dir).features == CREDITCARD_FEATURES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "exactly one training source"),
        (["--trainingData=/x/*", "--bigqueryTable=proj:d.t"], "exactly one training source"),
        (["--trainingData=/x/*", "--targetPrecision=7"], "--targetPrecision"),
    ],
)
def test_bad_options_fail_before_any_work(argv: list[str], message: str, tmp_path) -> None:
    required = [f"--transformDir={tmp_path}/t", f"--modelPath={tmp_path}/m"]
    with pytest.raises(OptionError, match=message):
        run([*argv, *required])
    assert not os.path.exists(tmp_path / "m")


def test_split_is_stable_and_60_20_20() -> None:
    splits = [split_of(f"cc-0-{i:09d}") for i in range(20_000)]
    assert splits == [split_of(f"cc-0-{i:09d}") for i in range(20_000)]
    shares = {name: splits.count(name) / len(splits) for name in ("train", "validation", "test")}
    assert shares == pytest.approx({"train": 0.6, "validation": 0.2, "test": 0.2}, abs=0.02)


def test_nullable_feature_is_nan_when_missing_in_serving(tmp_path) -> None:
    from pipelines.demo.synthetic_data import car_sensor_events

    rows = list(car_sensor_events(1_500, seed=3, cars=5, anomaly_rate=0.02))
    for row in rows[::40]:
        row["latitude"] = None
    features = ("speed_kmh", "engine_temp_c", "latitude")
    settings = TrainSettings(
        transform_dir=str(tmp_path / "transform"),
        model_path=str(tmp_path / "models"),
        label="is_anomaly",
        features=features,
        epochs=2,
    )
    result = train(rows, bundled_schema("car_sensor"), settings)
    assert any(r["latitude"] is None for r in result.test_rows)

    import tensorflow as tf

    signature = tf.saved_model.load(result.version_dir).signatures["serving_default"]
    inputs = {
        name: tf.constant(
            [np.nan if r[name] is None else r[name] for r in result.test_rows], tf.float32
        )
        for name in features
    }
    scores = signature(**inputs)["score"].numpy()
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, result.test_scores, rtol=0, atol=1e-5)
