"""A fast RunInference model handler for the project's versioned anomaly SavedModels.

Beam's stock ``TFModelHandlerNumpy`` converts and slices the output tensor row by row (4–5k rows/s
on a tiny autoencoder, see docs/local_stack.md#beam-and-tensorflow). :class:`SavedModelHandler`
works on whole batches instead: one float32 ``[batch, features]`` matrix, one call of the
``serving_default`` signature (through a concrete function that slices the per-feature inputs in
the graph), one ``.numpy()`` per output. :meth:`SavedModelHandler.verdicts` returns the batch's
results column-wise (:class:`Verdicts`, what :class:`~transforms.inference.scoring.ScoreEvents`
uses); ``run_inference`` wraps them in cheap per-row :class:`PredictionResult` objects for plain
``RunInference`` users.

It also hot-reloads: given a model *root* (``modelPath``) and ``poll_seconds``, it checks between
batches (at most once per interval) for a newer complete version directory and swaps to it without
stopping the pipeline; a new version that fails to load is logged and the current one kept. This
works on every runner, unlike a ``WatchFilePattern`` side input (see
:mod:`transforms.inference.model_store`).
``update_model_path`` is honoured too, so the side-input route stays available where it works.

Usage::

    handler = SavedModelHandler("/models/fraud", poll_seconds=30).keyed()
    scored = pairs | RunInference(handler)   # (KafkaRecord, row) -> (KafkaRecord, PredictionResult)
    # PredictionResult.inference is a Score, or a FeatureError for a row the model cannot read.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import math
import operator
import posixpath
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from transforms.decoding.columnar import StructRows
from transforms.inference.model_store import (
    MODEL_INFO_FILE,
    SAVED_MODEL_FILE,
    ModelInfo,
    ModelStoreError,
    ModelVersion,
    VersionPoller,
    latest_version,
    read_model_info,
    version_of,
)

__all__ = [
    "KERAS_SAVER_MODULES",
    "SavedModelHandler",
    "LiveModel",
    "LoadedModel",
    "Score",
    "Verdicts",
    "VerdictHandler",
    "FeatureError",
    "feature_matrix",
    "prediction_results",
    "row_problem",
]

_LOGGER = logging.getLogger(__name__)

_SIGNATURE = "serving_default"
_SCORE = "score"
_IS_ANOMALY = "is_anomaly"

Row = Mapping[str, Any]


class Score(NamedTuple):
    """The model's verdict on one row (``PredictionResult.inference``)."""

    score: float
    is_anomaly: bool
    threshold: float
    model_version: int


_NO_SCORE = Score(float("nan"), False, float("nan"), -1)  # a row in Verdicts.errors


class Verdicts(NamedTuple):
    """The model's verdicts on a batch of rows, column-wise: entry ``i`` is about row ``i``.

    Rows in ``errors`` were not scored (their other entries are placeholders). Column-wise
    because building a :class:`Score` per row cost more than the model call per row.
    """

    scores: list[float]
    is_anomaly: list[bool]
    thresholds: list[float]
    model_versions: list[int]
    errors: dict[int, Exception]

    @classmethod
    def from_scores(cls, inferences: Sequence[Any]) -> Verdicts:
        """From per-row :class:`Score` objects; anything else marks that row as an error."""
        scores, flags, thresholds, versions = [], [], [], []
        errors: dict[int, Exception] = {}
        for index, verdict in enumerate(inferences):
            if not isinstance(verdict, Score):
                errors[index] = (
                    verdict if isinstance(verdict, Exception) else TypeError(repr(verdict))
                )
                verdict = _NO_SCORE
            scores.append(verdict.score)
            flags.append(verdict.is_anomaly)
            thresholds.append(verdict.threshold)
            versions.append(verdict.model_version)
        return cls(scores, flags, thresholds, versions, errors)


class FeatureError(ValueError):
    """A row the model cannot score (missing or non-numeric feature, non-finite score).

    It is the row's ``PredictionResult.inference``; the scorer dead-letters it.
    """


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One loaded version: its scoring function and the ``model_info.json`` describing it.

    ``score_matrix`` maps a float32 ``[batch, len(info.features)]`` matrix to the
    ``(score, is_anomaly)`` tensors of the ``serving_default`` signature.
    """

    version: int
    path: str
    info: ModelInfo
    score_matrix: Callable[[Any], tuple[Any, Any]]
    # The signature only lives as long as the object tf.saved_model.load returned.
    holder: Any = dataclasses.field(repr=False, compare=False)

    @classmethod
    def load(cls, version_dir: str) -> LoadedModel:
        """Load and smoke-test a version directory; raises :class:`ModelStoreError` if unusable."""
        import tensorflow as tf  # noqa: PLC0415 - keep TF out of pipeline construction

        info = read_model_info(version_dir)
        version = version_of(version_dir)
        try:
            holder = tf.saved_model.load(version_dir)
        except Exception:
            if not _imported_keras_savers():
                raise
            holder = tf.saved_model.load(version_dir)  # it needed what Keras registers
        signature = holder.signatures.get(_SIGNATURE)
        if signature is None:
            raise ModelStoreError(f"{version_dir} has no {_SIGNATURE!r} signature")
        inputs = set(signature.structured_input_signature[1])
        missing = [name for name in info.features if name not in inputs]
        if missing:
            raise ModelStoreError(f"{version_dir}: signature lacks inputs for features {missing}")
        for name in (_SCORE, _IS_ANOMALY):
            if name not in signature.structured_outputs:
                raise ModelStoreError(f"{version_dir}: signature output lacks {name!r}")
        score_matrix = _matrix_function(signature, info.features)
        # The smoke test. The first call also pays a one-time set-up (~70 ms here): here, not
        # in the first batch.
        score_matrix(tf.zeros([1, len(info.features)], tf.float32))
        model = cls(
            version if version is not None else info.version,
            version_dir,
            info,
            score_matrix,
            holder,
        )
        _LOGGER.info("loaded model version %d from %s", model.version, version_dir)
        return model


#: Keras' optimizers (Keras 3, legacy tf_keras), which TensorFlow's own import loads eagerly so
#: that they register their SavedModel savers (b/196254385); a scorer's preload defers them.
KERAS_SAVER_MODULES = ("keras.src.optimizers", "tf_keras.src.optimizers")


def _imported_keras_savers() -> bool:
    """Import Keras' optimizers, which register SavedModel savers, if TensorFlow was imported
    without them (a scorer's preload defers Keras); True if any was imported now."""
    imported = False
    for name in KERAS_SAVER_MODULES:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        imported = True
    return imported


def _matrix_function(signature: Any, features: Sequence[str]) -> Callable[[Any], Any]:
    """The signature as one concrete function of a ``[batch, features]`` float32 matrix.

    Why: the signature takes one tensor per feature; converting 30 arrays and checking 30
    structured inputs on every call cost more than the model itself (2.5 against 1.1 ms for a
    1024-row batch of the 30-feature autoencoder here). The columns are sliced in the graph.
    """
    import tensorflow as tf  # noqa: PLC0415

    names = tuple(features)

    @tf.function(input_signature=[tf.TensorSpec([None, len(names)], tf.float32)], autograph=False)
    def score_matrix(matrix: Any) -> tuple[Any, Any]:
        outputs = signature(**{name: matrix[:, i] for i, name in enumerate(names)})
        return outputs[_SCORE], outputs[_IS_ANOMALY]

    return score_matrix.get_concrete_function()


class LiveModel:
    """The model RunInference holds: the current :class:`LoadedModel`, swapped on a new version.

    Shared by every thread of a worker process (Beam's ``Shared``), hence the lock: one thread
    polls and loads while the others keep scoring with the current version.
    """

    def __init__(self, loaded: LoadedModel, poller: VersionPoller | None = None) -> None:
        self._loaded = loaded
        self._poller = poller
        self._lock = threading.Lock()
        self._rejected: int | None = None  # a version that failed to load: not retried

    def current(self) -> LoadedModel:
        """The version for the next batch, after a rate-limited check for a newer one."""
        if self._poller is not None and self._lock.acquire(blocking=False):
            try:
                newer = self._poller.newer_than(self._loaded.version)
                if newer is not None and newer.version != self._rejected:
                    self._swap(newer)
            finally:
                self._lock.release()
        return self._loaded

    def _swap(self, newer: ModelVersion) -> None:
        try:
            loaded = LoadedModel.load(newer.path)
        except Exception:  # noqa: BLE001 - a bad export must not stop scoring with the old one
            _LOGGER.exception(
                "keeping model version %d: loading %s failed", self._loaded.version, newer.path
            )
            self._rejected = newer.version
            return
        _LOGGER.info("switched model version %d -> %d", self._loaded.version, loaded.version)
        self._loaded = loaded


class SavedModelHandler(ModelHandler[Row, PredictionResult, LiveModel]):
    """RunInference handler for ``modelPath/<version>/`` SavedModels taking raw feature columns.

    Args:
      model_path: a model root (the newest complete version is loaded) or one version directory
        (pinned; no polling).
      threshold: overrides the model's threshold: ``is_anomaly = score > threshold``. None uses
        the model's own ``is_anomaly`` output and ``model_info.json`` threshold.
      poll_seconds: how often to look for a newer version under a model root; None disables it.
      min_batch_size, max_batch_size: BatchElements bounds. Batches never wait across bundles
        (no ``max_batch_duration_secs``: that stateful path stalls the local streaming runner),
        so a batch adds no latency beyond its bundle's.
      clock: monotonic clock for the poll interval (tests inject a fake).
    """

    def __init__(
        self,
        model_path: str,
        *,
        threshold: float | None = None,
        poll_seconds: float | None = None,
        min_batch_size: int = 16,
        max_batch_size: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_seconds is not None and poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._model_path = model_path
        self._threshold = threshold
        self._poll_seconds = poll_seconds
        self._clock = clock

    def load_model(self) -> LiveModel:
        """Load the pinned version, or the newest one under the root (polling if enabled)."""
        if version_of(self._model_path) is not None:
            return LiveModel(LoadedModel.load(self._model_path))
        loaded = LoadedModel.load(latest_version(self._model_path).path)
        poller = None
        if self._poll_seconds is not None:
            poller = VersionPoller(self._model_path, self._poll_seconds, clock=self._clock)
        return LiveModel(loaded, poller)

    def update_model_path(self, model_path: str | None = None) -> None:
        """Side-input model refresh (``RunInference(model_metadata_pcoll=...)``).

        Takes a version directory, or a file in one (``WatchFilePattern`` reports files, e.g.
        ``modelPath/*/model_info.json``).
        """
        if not model_path:
            return
        if posixpath.basename(model_path) in (MODEL_INFO_FILE, SAVED_MODEL_FILE):
            model_path = posixpath.dirname(model_path)
        self._model_path = model_path

    def run_inference(
        self,
        batch: Sequence[Row],
        model: LiveModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Score the batch with one signature call; unscorable rows get a :class:`FeatureError`."""
        return prediction_results(batch, self.verdicts(batch, model))

    def verdicts(self, batch: Sequence[Row], model: LiveModel) -> Verdicts:
        """The batch's verdicts column-wise (one signature call; bad rows in ``errors``)."""
        loaded = model.current()
        features = loaded.info.features
        try:
            matrix = feature_matrix(batch, features)
        except (KeyError, TypeError, ValueError):
            return self._verdicts_mixed(batch, loaded)
        return self._predict(matrix, loaded)

    def _verdicts_mixed(self, batch: Sequence[Row], loaded: LoadedModel) -> Verdicts:
        """Slow path for a batch with bad rows: score the good ones, explain the bad ones."""
        features = loaded.info.features
        size = len(batch)
        merged = Verdicts(
            [math.nan] * size, [False] * size, [math.nan] * size, [loaded.version] * size, {}
        )
        good: list[int] = []
        for index, row in enumerate(batch):
            problem = row_problem(row, features)
            if problem is None:
                good.append(index)
            else:
                merged.errors[index] = problem
        if good:
            scored = self._predict(feature_matrix([batch[i] for i in good], features), loaded)
            for source, index in enumerate(good):
                for merged_column, scored_column in zip(merged[:4], scored[:4], strict=True):
                    merged_column[index] = scored_column[source]
                if source in scored.errors:
                    merged.errors[index] = scored.errors[source]
        return merged

    def _predict(self, matrix: np.ndarray, loaded: LoadedModel) -> Verdicts:
        size = len(matrix)
        score_tensor, flag_tensor = loaded.score_matrix(padded_rows(matrix))
        scores = score_tensor.numpy().reshape(-1)[:size]
        if self._threshold is None:
            threshold = loaded.info.threshold
            flags = flag_tensor.numpy().reshape(-1)[:size]
        else:
            threshold = self._threshold
            flags = scores > threshold
        version = loaded.version
        errors: dict[int, Exception] = {}
        if not np.isfinite(scores).all():
            for index in np.flatnonzero(~np.isfinite(scores)).tolist():
                errors[index] = FeatureError(
                    f"model version {version} gave score {scores[index]} (a null or NaN "
                    f"feature the model cannot handle?)"
                )
        return Verdicts(
            scores.tolist(), flags.tolist(), [threshold] * size, [version] * size, errors
        )

    def get_num_bytes(self, batch: Sequence[Row]) -> int:
        """Approximate payload size for metrics (the default pickles the whole batch)."""
        return 8 * sum(len(row) for row in batch)

    def get_metrics_namespace(self) -> str:
        return "SavedModelHandler"

    def keyed(self) -> KeyedModelHandler:
        """This handler for ``(key, row)`` pairs, e.g. ``(KafkaRecord, row)`` from the decoder."""
        return _CheapKeyedModelHandler(self)


@runtime_checkable
class VerdictHandler(Protocol):
    """A handler that also answers column-wise: what :class:`~transforms.inference.scoring.
    ScoreEvents` (and ``ANOMALY()``) call, whether the model is embedded or on a server."""

    def verdicts(self, batch: Sequence[Row], model: Any) -> Verdicts: ...


def prediction_results(batch: Sequence[Row], verdicts: Verdicts) -> list[PredictionResult]:
    """Per-row ``PredictionResult`` (a :class:`Score` or the row's error) for RunInference."""
    scores, flags, thresholds, versions, errors = verdicts
    model_ids = {version: str(version) for version in set(versions)}
    results = [
        PredictionResult(row, Score(score, flag, threshold, version), model_ids[version])
        for row, score, flag, threshold, version in zip(
            batch, scores, flags, thresholds, versions, strict=True
        )
    ]
    for index, error in errors.items():
        results[index] = PredictionResult(batch[index], error, model_ids[versions[index]])
    return results


class _CheapKeyedModelHandler(KeyedModelHandler):
    """Beam's KeyedModelHandler without pickling every batch's keys just to count bytes."""

    def get_num_bytes(self, batch: Sequence[tuple[Any, Row]]) -> int:
        return self._unkeyed.get_num_bytes([row for _, row in batch])


def feature_matrix(batch: Sequence[Row], features: Sequence[str]) -> np.ndarray:
    """float32 array of shape [batch, features], filled from one flat iterator (~0.75 µs a
    30-feature row; a list of row tuples through ``np.array`` cost ~1.3 µs).

    A null value becomes NaN, the contract's marker of a missing NULLABLE feature. Raises
    KeyError for a missing feature, TypeError/ValueError for a non-numeric one. Rows held
    column-wise (:class:`~transforms.decoding.columnar.StructRows`) build it from their columns.
    """
    if type(batch) is StructRows:
        return batch.matrix(features)
    getter = operator.itemgetter(*features)
    values = map(getter, batch)
    if len(features) > 1:
        values = itertools.chain.from_iterable(values)
    return np.fromiter(values, np.float32, len(batch) * len(features)).reshape(
        len(batch), len(features)
    )


def padded_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with zero rows appended up to the next power of two (at least 16 rows).

    Why: TensorFlow keeps native state for every batch shape a function has run with, never
    given back: 3,000 calls of random sizes from 1 to 1,024 rows grew a process by 147 MiB here
    (flat with a fixed size). A stream's batches have any size in that range; with powers of two
    there are at most a dozen shapes. The padded rows cost ~0.3 µs each; their outputs are
    dropped.
    """
    rows = len(matrix)
    target = max(_MIN_PADDED_ROWS, 1 << max(rows - 1, 0).bit_length())
    if target == rows:
        return matrix
    return np.concatenate([matrix, np.zeros((target - rows, matrix.shape[1]), matrix.dtype)])


_MIN_PADDED_ROWS = 16


def row_problem(row: Row, features: Sequence[str]) -> FeatureError | None:
    """Why ``row`` cannot be scored (same conversion as the fast path), or None if it can."""
    missing = [name for name in features if name not in row]
    if missing:
        return FeatureError(f"missing features {missing}")
    try:
        feature_matrix([row], features)
    except (TypeError, ValueError) as err:
        return FeatureError(f"a feature is not a number: {err}")
    return None
