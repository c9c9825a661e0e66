"""SavedModelHandler and the model store on real tiny SavedModels: scores, bad rows, reload."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from transforms.inference.model_handler import (
    FeatureError,
    SavedModelHandler,
    Score,
    feature_matrix,
)
from transforms.inference.model_store import (
    ModelInfo,
    ModelStoreError,
    VersionPoller,
    latest_version,
    list_versions,
    read_model_info,
)


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _row(seed: int, scale: float = 1.0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    row: dict[str, object] = {
        name: float(v)
        for name, v in zip(CREDITCARD_FEATURES, rng.normal(0, scale, 30), strict=True)
    }
    row["event_id"] = f"e{seed}"
    return row


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("models"))
    write_model(root, 1, weight=1.0, threshold=1.5)
    return root


@pytest.fixture(scope="module")
def live_v1(model_root: str):
    return SavedModelHandler(model_root).load_model()


def test_scores_match_the_model_math_and_flags_come_from_the_model(live_v1) -> None:
    rows = [_row(i, scale=0.5 + i) for i in range(6)]
    results = list(SavedModelHandler("unused").run_inference(rows, live_v1))

    assert [r.example for r in results] == rows
    for row, result in zip(rows, results, strict=True):
        assert isinstance(result, PredictionResult)
        assert result.model_id == "1"
        score = result.inference
        assert isinstance(score, Score)
        assert score.score == pytest.approx(expected_score(row), rel=1e-6)
        assert score.is_anomaly is (score.score > 1.5)
        assert (score.threshold, score.model_version) == (1.5, 1)
    assert {r.inference.is_anomaly for r in results} == {True, False}


def test_threshold_option_overrides_the_model(live_v1) -> None:
    rows = [_row(i, scale=1.0) for i in range(20)]
    results = list(SavedModelHandler("unused", threshold=0.9).run_inference(rows, live_v1))

    for row, result in zip(rows, results, strict=True):
        assert result.inference.threshold == 0.9
        assert result.inference.is_anomaly is (expected_score(row) > 0.9)


def test_bad_rows_get_a_feature_error_and_the_rest_are_scored(live_v1) -> None:
    good = [_row(1), _row(2)]
    missing = {k: v for k, v in _row(3).items() if k != "V7"}
    not_number = {**_row(4), "Amount": "lots"}
    null = {**_row(5), "Time": None}
    batch = [good[0], missing, not_number, good[1], null]

    results = list(SavedModelHandler("unused").run_inference(batch, live_v1))

    assert [r.example for r in results] == batch
    for index in (1, 2, 4):
        assert isinstance(results[index].inference, FeatureError)
    assert "V7" in str(results[1].inference)
    assert "lots" in str(results[2].inference)
    assert "score nan" in str(results[4].inference)  # null → NaN, which this model cannot score
    for index, row in ((0, good[0]), (3, good[1])):
        assert results[index].inference.score == pytest.approx(expected_score(row), rel=1e-6)


def test_feature_matrix_converts_like_numpy_and_refuses_what_is_not_a_number() -> None:
    rows = [{"a": 1, "b": 2.5, "c": "x"}, {"a": None, "b": True, "c": "y"}, {"a": "1.5", "b": 0}]
    matrix = feature_matrix(rows, ["a", "b"])
    assert matrix.dtype == np.float32 and matrix.shape == (3, 2)
    np.testing.assert_array_equal(matrix, np.array([[1, 2.5], [np.nan, 1], [1.5, 0]], np.float32))
    np.testing.assert_array_equal(feature_matrix(rows, ["b"]), [[2.5], [1], [0]])
    assert feature_matrix([], ["a", "b"]).shape == (0, 2)
    with pytest.raises(KeyError):
        feature_matrix([{"a": 1}], ["a", "b"])
    for bad in ("x", [1, 2], {"k": 1}):
        with pytest.raises((TypeError, ValueError)):
            feature_matrix([{"a": 1, "b": bad}], ["a", "b"])


def test_run_inference_keyed_in_a_pipeline(model_root: str) -> None:
    rows = [_row(i, scale=0.3 * i) for i in range(10)]
    expected = [
        (f"key{i}", round(expected_score(row), 4), expected_score(row) > 1.5, "1")
        for i, row in enumerate(rows)
    ]

    with TestPipeline() as p:
        out = (
            p
            | beam.Create([(f"key{i}", row) for i, row in enumerate(rows)])
            | RunInference(
                SavedModelHandler(model_root, min_batch_size=2, max_batch_size=4).keyed()
            )
            | beam.MapTuple(
                lambda key, r: (
                    key,
                    round(r.inference.score, 4),
                    r.inference.is_anomaly,
                    r.model_id,
                )
            )
        )
        assert_that(out, equal_to(expected))


def test_hot_reload_switches_version_after_the_poll_interval(tmp_path) -> None:
    root = str(tmp_path)
    write_model(root, 1, weight=1.0)
    clock = FakeClock()
    handler = SavedModelHandler(root, poll_seconds=10, clock=clock)
    live = handler.load_model()
    row = _row(7)

    assert next(iter(handler.run_inference([row], live))).model_id == "1"
    write_model(root, 2, weight=3.0)
    clock.now += 5
    assert next(iter(handler.run_inference([row], live))).model_id == "1"
    clock.now += 6
    result = next(iter(handler.run_inference([row], live)))

    assert result.model_id == "2"
    assert result.inference.score == pytest.approx(expected_score(row, weight=3.0), rel=1e-6)


def test_a_broken_new_version_is_skipped_and_the_old_one_kept(tmp_path) -> None:
    root = str(tmp_path)
    write_model(root, 1)
    clock = FakeClock()
    handler = SavedModelHandler(root, poll_seconds=1, clock=clock)
    live = handler.load_model()
    broken = tmp_path / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    (broken / "model_info.json").write_text(
        json.dumps({"version": 2, "features": ["V1"], "threshold": 1.0})
    )
    clock.now += 2
    assert next(iter(handler.run_inference([_row(1)], live))).model_id == "1"

    write_model(root, 3, weight=2.0)  # the next good export is picked up
    clock.now += 2
    assert next(iter(handler.run_inference([_row(1)], live))).model_id == "3"


def test_a_version_directory_pins_the_model(tmp_path) -> None:
    root = str(tmp_path)
    pinned = write_model(root, 1)
    write_model(root, 2, weight=2.0)

    live = SavedModelHandler(pinned).load_model()
    assert live.current().version == 1

    handler = SavedModelHandler(root)
    handler.update_model_path(pinned)
    assert handler.load_model().current().version == 1
    handler.update_model_path(os.path.join(root, "2", "model_info.json"))  # WatchFilePattern
    assert handler.load_model().current().version == 2
    assert SavedModelHandler(root).load_model().current().version == 2


def test_model_store_lists_complete_integer_versions_only(tmp_path) -> None:
    root = str(tmp_path)
    write_model(root, 3)
    write_model(root, 10)
    (tmp_path / "11").mkdir()  # export in progress: no model_info.json yet
    (tmp_path / "11" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "tmp-export").mkdir()
    (tmp_path / "tmp-export" / "model_info.json").write_text("{}")

    assert [v.version for v in list_versions(root)] == [3, 10]
    assert latest_version(root).path == os.path.join(root, "10")
    info = read_model_info(os.path.join(root, "10"))
    assert info == ModelInfo(10, CREDITCARD_FEATURES, 1.0, "Class", "event_id", {})


def test_model_store_errors_are_clear(tmp_path) -> None:
    with pytest.raises(ModelStoreError, match="no complete model version"):
        latest_version(str(tmp_path))
    with pytest.raises(ModelStoreError, match="threshold"):
        ModelInfo.from_dict({"version": 1, "features": ["a"]})
    with pytest.raises(ValueError, match="poll_seconds"):
        SavedModelHandler(str(tmp_path), poll_seconds=0)


def test_version_poller_is_rate_limited(tmp_path) -> None:
    root = str(tmp_path)
    write_model(root, 1, features=("a",))
    clock = FakeClock()
    poller = VersionPoller(root, 30, clock=clock)

    assert poller.newer_than(0) is None  # first poll not due yet
    clock.now += 30
    assert poller.newer_than(0).version == 1
    assert poller.newer_than(0) is None  # polled just now
    clock.now += 30
    assert poller.newer_than(1) is None


def test_batches_are_padded_to_a_few_shapes_and_keep_their_rows() -> None:
    """TensorFlow keeps native state per batch shape: a stream's 1..1,024-row batches are
    padded to powers of two (at least 16 rows), so a live scorer's memory stays flat."""
    from transforms.inference.model_handler import padded_rows

    for rows, target in ((0, 16), (1, 16), (16, 16), (17, 32), (1000, 1024), (1024, 1024),
                         (4096, 4096)):  # fmt: skip
        matrix = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + 1
        padded = padded_rows(matrix)
        assert padded.shape == (target, 3) and padded.dtype == np.float32
        np.testing.assert_array_equal(padded[:rows], matrix)
        assert not padded[rows:].any()
    assert {padded_rows(np.ones((n, 2), np.float32)).shape[0] for n in range(1, 1025)} == {
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
    }
