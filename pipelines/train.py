"""Train the anomaly autoencoder and export a versioned, raw-feature SavedModel.

``python -m pipelines.train`` reads raw rows from exported TFRecords (``--trainingData``), a
BigQuery table (``--bigqueryTable``) or a Kafka topic (``--bootstrapServers --inputTopic``, bounded
by the end offsets at launch), then:

1. splits them deterministically by a hash of the id field: 60 % train, 20 % validation,
   20 % test (the same row always lands in the same split, whatever the input order);
2. loads the tf.Transform artifact from ``--transformDir``, or analyzes the training split and
   writes it there;
3. trains the autoencoder on the *normal* training rows (label 0) with early stopping on the
   normal validation rows;
4. picks the threshold on the labelled validation split (max F1, or the most recall at
   ``--targetPrecision``) and reports precision, recall and PR-AUC on the test split;
5. exports ``modelPath/<next version>/``: the SavedModel (raw features in, transform embedded),
   ``metrics.json``, ``pr_curve.png``, ``score_histogram.png``, TensorBoard ``logs/`` and, last,
   ``model_info.json`` (its presence marks the version complete for the scorer).

Training is deterministic for a seed, across processes: Keras seeding, TensorFlow op
determinism and tf.Transform analyzers over fixed batches (see ``AnalyzeAndWriteTransform``).

Usage::

    python -m pipelines.train --trainingData 'gs://b/export/data/part-*' \\
        --transformDir gs://b/transform --modelPath gs://b/models/fraud
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import quiet_tensorflow
from pipelines.common.options import Option, OptionError, options_class, validate
from pipelines.common.row_source import ROW_SOURCE, TABLE_SPEC_REGEX, RowSource
from pipelines.training import evaluation
from pipelines.training.artifacts import download_tree, is_local, upload_tree
from transforms.decoding.schema import NUMERIC_TYPES, RowSchema
from transforms.inference.model_store import MODEL_INFO_FILE
from transforms.sinks.gcp_endpoints import GcpEndpoints

__all__ = [
    "OPTIONS",
    "TrainOptions",
    "TrainSettings",
    "TrainResult",
    "build_pipeline",
    "load_rows",
    "next_version",
    "split_of",
    "train",
    "run",
]

_LOGGER = logging.getLogger(__name__)

_SPLITS = ("train", "validation", "test")

OPTIONS: tuple[Option, ...] = (
    Option(
        "trainingData",
        "Training TFRecords",
        "Glob of the exported tf.Example TFRecord shards, local or gs:// (their schema.json is "
        "read from the same directory unless --schemaPath is given).",
        example="gs://my-bucket/export/data/part-*",
        param_type="GCS_READ_FILE",
    ),
    Option(
        "bigqueryTable",
        "Training table",
        "BigQuery table with the exported rows, project:dataset.table.",
        regexes=(TABLE_SPEC_REGEX,),
        example="my-project:fraud.transactions",
        param_type="BIGQUERY_TABLE",
    ),
    # Training straight from Kafka: the export pipelines' source options, checked strictly only
    # when --bootstrapServers is given.
    *(dataclasses.replace(option, required=False) for option in ROW_SOURCE),
    Option(
        "stagingDir",
        "Kafka staging directory",
        "Where rows read from Kafka are staged as TFRecords, with their dead letters as JSON "
        "lines (local or gs://). Default: a temporary directory removed after reading.",
        example="gs://my-bucket/train-staging",
        param_type="GCS_WRITE_FOLDER",
    ),
    Option(
        "transformDir",
        "tf.Transform directory",
        "Where the tf.Transform artifact lives; analyzed on the training split and written "
        "there when it holds no transform_fn yet.",
        required=True,
        example="gs://my-bucket/transform",
        param_type="GCS_WRITE_FOLDER",
    ),
    Option(
        "modelPath",
        "Model root",
        "Versioned model root; the model is exported to <modelPath>/<next integer version>/.",
        required=True,
        example="gs://my-bucket/models/fraud",
        param_type="GCS_WRITE_FOLDER",
    ),
    Option("label", "Label field", "0/1 label field (1 = anomaly).", default="Class",
           example="is_anomaly"),
    Option("idField", "Id field", "Unique row id; drives the deterministic split.",
           default="event_id", example="event_id"),
    Option(
        "features",
        "Model features",
        "Comma-separated raw feature names in model order. Default: every REQUIRED numeric "
        "field except the label and *_id fields, in schema order.",
        regexes=(r"[A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)*",),
        example="Time,V1,V2,Amount",
    ),
    Option("epochs", "Epochs", "Maximum training epochs.", type=int, default=40,
           regexes=(r"[1-9][0-9]{0,4}",), example="40"),
    Option("batchSize", "Batch size", "Training batch size.", type=int, default=256,
           regexes=(r"[1-9][0-9]{0,5}",), example="256"),
    Option("learningRate", "Learning rate", "Adam learning rate.", type=float, default=0.01,
           regexes=(r"[0-9]*\.?[0-9]+([eE]-?[0-9]+)?",), example="0.01"),
    Option("patience", "Early-stopping patience", "Epochs without validation improvement "
           "before stopping (best weights are restored).", type=int, default=5,
           regexes=(r"[1-9][0-9]{0,3}",), example="5"),
    Option("seed", "Seed", "Seeds Keras, NumPy and Python; same seed + data = same model.",
           type=int, default=0, regexes=(r"[0-9]{1,9}",), example="42"),
    Option(
        "targetPrecision",
        "Target precision",
        "Pick the threshold giving the most recall at this validation precision (0-1) "
        "instead of the maximum-F1 threshold.",
        type=float,
        regexes=(r"0?\.[0-9]+|1(\.0+)?",),
        example="0.9",
    ),
)  # fmt: skip

TrainOptions = options_class("TrainOptions", OPTIONS)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What :func:`train` needs besides the rows (the CLI builds it from the options)."""

    transform_dir: str
    model_path: str
    label: str | None = "Class"
    id_field: str | None = "event_id"
    features: tuple[str, ...] | None = None
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 0.01
    patience: int = 5
    seed: int = 0
    target_precision: float | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The exported version and the trainer's own batch evaluation of the test split."""

    version: int
    version_dir: str
    threshold: float
    features: tuple[str, ...]
    metrics: dict[str, Any]
    test_rows: list[dict[str, Any]] = dataclasses.field(repr=False)
    test_scores: np.ndarray = dataclasses.field(repr=False)


def split_of(row_id: Any) -> str:
    """``train`` / ``validation`` / ``test`` from a stable hash of the row id (60/20/20)."""
    bucket = zlib.crc32(str(row_id).encode("utf-8")) % 10
    return _SPLITS[0] if bucket < 6 else _SPLITS[1] if bucket < 8 else _SPLITS[2]


def _default_features(schema: RowSchema, label: str | None) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in schema
        if f.type in NUMERIC_TYPES and f.required and f.name != label and not f.name.endswith("_id")
    )


def _check_features(schema: RowSchema, features: Sequence[str]) -> None:
    problems = [n for n in features if n not in schema or schema.field(n).type not in NUMERIC_TYPES]
    if problems or not features:
        raise ValueError(f"features must be numeric fields of the schema; bad: {problems}")


def _model_features(schema: RowSchema, settings: TrainSettings) -> tuple[str, ...]:
    """The model's features; raises if they, the label or the id field do not fit the schema."""
    features = settings.features or _default_features(schema, settings.label)
    _check_features(schema, features)
    if settings.label is not None and settings.label not in schema:
        raise ValueError(f"label {settings.label!r} is not a field of the schema")
    if settings.id_field is not None and settings.id_field not in schema:
        raise ValueError(f"id field {settings.id_field!r} is not a field of the schema")
    return features


def _columns(rows: Sequence[Mapping[str, Any]], features: Sequence[str]) -> dict[str, np.ndarray]:
    """Feature columns as float32; a missing (NULLABLE) value is NaN, as the model expects."""
    return {
        name: np.array([np.nan if r.get(name) is None else r[name] for r in rows], np.float32)
        for name in features
    }


def _labels(rows: Sequence[Mapping[str, Any]], label: str | None) -> np.ndarray:
    """0/1 labels; -1 where the row has none (such rows train as normal, are not evaluated)."""
    if label is None:
        return np.full(len(rows), -1, np.int64)
    return np.array([-1 if r.get(label) is None else int(r[label]) for r in rows], np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class _Splits:
    """The rows (in id order when there is an id field), each one's split name and label."""

    rows: Sequence[Mapping[str, Any]]
    names: np.ndarray
    labels: np.ndarray

    def mask(self, name: str) -> np.ndarray:
        """Which rows are in split ``name``."""
        return self.names == name

    def normal_in(self, name: str) -> np.ndarray:
        """Which rows are in split ``name`` and normal (label 0 or none)."""
        return self.mask(name) & (self.labels <= 0)

    def rows_in(self, name: str) -> list[Mapping[str, Any]]:
        """The rows of split ``name``, in order."""
        return [r for r, s in zip(self.rows, self.names, strict=True) if s == name]


def _split_rows(rows: Sequence[Mapping[str, Any]], settings: TrainSettings) -> _Splits:
    """Split the rows by id hash (or seeded shuffle) and check both fitting splits have normals."""
    rows = sorted(rows, key=lambda r: str(r[settings.id_field])) if settings.id_field else rows
    if settings.id_field:
        names = np.array([split_of(r[settings.id_field]) for r in rows])
    else:
        order = np.random.default_rng(settings.seed).permutation(len(rows))
        names = np.array(_SPLITS)[np.digitize(order / max(len(rows), 1), [0.6, 0.8])]
    splits = _Splits(rows, names, _labels(rows, settings.label))
    if not splits.normal_in("train").any() or not splits.normal_in("validation").any():
        raise ValueError(f"too few rows to train: {len(rows)} (need normal train and val rows)")
    return splits


def next_version(model_path: str) -> int:
    """One more than the highest integer directory under ``model_path`` (complete or not)."""
    versions = [0]
    for result in FileSystems.match([posixpath.join(model_path.rstrip("/"), "*", "*")]):
        for metadata in result.metadata_list:
            name = posixpath.basename(posixpath.dirname(metadata.path))
            if name.isdigit():
                versions.append(int(name))
    return max(versions) + 1


def _has_transform(transform_dir: str) -> bool:
    return FileSystems.exists(posixpath.join(transform_dir, "transform_fn", "saved_model.pb"))


def _analyze(
    rows: Sequence[Mapping[str, Any]], schema: RowSchema, label: str | None, transform_dir: str
) -> None:
    from transforms.preprocessing.tft import AnalyzeAndWriteTransform

    _LOGGER.info("Analyzing tf.Transform on %d training rows", len(rows))
    # In-memory rows: the local FnApiRunner (the default DirectRunner first tries to fetch Prism).
    with beam.Pipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | "TrainingRows" >> beam.Create(list(rows), reshuffle=False)
            | "AnalyzeAndWrite" >> AnalyzeAndWriteTransform(schema, transform_dir, label=label)
        )


def _local_transform(
    train_rows: Sequence[Mapping[str, Any]], schema: RowSchema, settings: TrainSettings, work: str
) -> str:
    """A local directory holding the transform: loaded from, or analyzed and saved to, the
    configured one (remote paths go through Beam's filesystems; see ``artifact_files``)."""
    wanted = settings.transform_dir
    if is_local(wanted):
        if not _has_transform(wanted):
            _analyze(train_rows, schema, settings.label, wanted)
        return wanted
    local = os.path.join(work, "transform")
    if _has_transform(wanted):
        download_tree(wanted, local)
    else:
        _analyze(train_rows, schema, settings.label, local)
        upload_tree(local, wanted, skip=("tmp",))
    return local


def _seeded_autoencoder(n_features: int, settings: TrainSettings) -> Any:
    """A fresh network after seeding everything, so a seed always gives the same model."""
    import keras
    import tensorflow as tf

    from pipelines.training.autoencoder import build_autoencoder

    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    return build_autoencoder(n_features, learning_rate=settings.learning_rate)


def _build_model(
    splits: _Splits,
    schema: RowSchema,
    features: tuple[str, ...],
    settings: TrainSettings,
    work: str,
) -> Any:
    """The untrained AnomalyModel: the (loaded or freshly analyzed) transform + a seeded network."""
    import tensorflow_transform as tft

    from pipelines.training.autoencoder import AnomalyModel

    transform_dir = _local_transform(splits.rows_in("train"), schema, settings, work)
    transform_output = tft.TFTransformOutput(transform_dir)
    autoencoder = _seeded_autoencoder(len(features), settings)
    return AnomalyModel(transform_output, autoencoder, features, schema, 0.0)


def _model_inputs(model: Any, splits: _Splits, features: tuple[str, ...]) -> np.ndarray:
    """Every row through the serving path's own transform, so training sees what serving will."""
    x = model.transform(_columns(splits.rows, features)).numpy()
    if not np.isfinite(x).all():
        raise ValueError("transformed features contain NaN/inf; check the input rows")
    return x


def _fit(
    autoencoder: Any, x_train: np.ndarray, x_val: np.ndarray, settings: TrainSettings, log_dir: str
) -> dict[str, list[float]]:
    """Fit the autoencoder to reconstruct ``x_train``, stopping early on ``x_val``; its history."""
    import keras

    with quiet_tensorflow.filtered_stderr():  # an E-level version-skew notice on every fit
        history = autoencoder.fit(
            x_train,
            x_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            validation_data=(x_val, x_val),
            shuffle=True,
            verbose=0,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=settings.patience, restore_best_weights=True
                ),
                keras.callbacks.TensorBoard(log_dir=log_dir),
            ],
        )
    return history.history


def _split_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    known = labels >= 0
    if not known.any():
        return {"rows": int(labels.size), "labelled": 0}
    return evaluation.classification_metrics(labels[known], scores[known], threshold)


def _threshold(labels: np.ndarray, scores: np.ndarray, settings: TrainSettings) -> float:
    """The best threshold on the labelled rows, or the 99.9th score percentile without anomalies."""
    known = labels >= 0
    if labels[known].any():
        return evaluation.pick_threshold(
            labels[known], scores[known], target_precision=settings.target_precision
        )
    fallback = float(np.quantile(scores, 0.999))
    _LOGGER.warning(
        "no anomalies labelled in the validation split; threshold = 99.9th percentile %.6g",
        fallback,
    )
    return fallback


@dataclasses.dataclass(frozen=True, eq=False)
class _Evaluation:
    """The picked threshold, the metrics (``metrics.json`` less the history) and the test split."""

    threshold: float
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    test_labels: np.ndarray
    test_scores: np.ndarray


def _evaluate(
    splits: _Splits, scores: np.ndarray, history: dict[str, list[float]], settings: TrainSettings
) -> _Evaluation:
    """Pick the threshold on the validation split and measure it on both held-out splits."""
    val, test = splits.mask("validation"), splits.mask("test")
    threshold = _threshold(splits.labels[val], scores[val], settings)
    metrics = {
        "test": _split_metrics(splits.labels[test], scores[test], threshold),
        "validation": _split_metrics(splits.labels[val], scores[val], threshold),
        "rows": {name: int(splits.mask(name).sum()) for name in _SPLITS},
        "trained_on_normal_rows": int(splits.normal_in("train").sum()),
        "epochs_run": len(history["loss"]),
        "best_val_loss": float(min(history["val_loss"])),
        "threshold_strategy": (
            f"target_precision={settings.target_precision}"
            if settings.target_precision is not None
            else "max_f1"
        ),
        "seed": settings.seed,
    }
    _LOGGER.info("Test metrics: %s", metrics["test"])
    return _Evaluation(threshold, metrics, history, splits.labels[test], scores[test])


def _plot_test_split(directory: str, evaluated: _Evaluation) -> None:
    """Write the test split's PR curve and score histogram, when it has any anomaly."""
    labels = evaluated.test_labels
    if not (labels == 1).any():
        return
    known = labels >= 0
    for name, plot in (
        ("pr_curve.png", evaluation.plot_pr_curve),
        ("score_histogram.png", evaluation.plot_score_histogram),
    ):
        plot(
            os.path.join(directory, name),
            labels[known], evaluated.test_scores[known], evaluated.threshold,
        )  # fmt: skip


def _write_json(path: str, value: Any, **kwargs: Any) -> None:
    """``value`` as indented JSON at the local ``path``."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, **kwargs)


def _write_artifacts(model: Any, staging: str, evaluated: _Evaluation) -> None:
    """Save the model with its threshold, the plots and ``metrics.json`` to ``staging``."""
    model.threshold.assign(evaluated.threshold)
    model.save(staging)
    _plot_test_split(staging, evaluated)
    metrics = {**evaluated.metrics, "history": evaluated.history}
    _write_json(os.path.join(staging, "metrics.json"), metrics, default=float)


def _publish(
    staging: str, features: tuple[str, ...], evaluated: _Evaluation, settings: TrainSettings
) -> tuple[int, str]:
    """Add ``model_info.json`` and upload ``staging`` as the next version (that file last)."""
    version = next_version(settings.model_path)
    info = {
        "version": version,
        "features": list(features),
        "threshold": evaluated.threshold,
        "label": settings.label,
        "id_field": settings.id_field,
        "metrics": evaluated.metrics["test"],
        "transform_dir": settings.transform_dir,
    }
    _write_json(os.path.join(staging, MODEL_INFO_FILE), info)
    version_dir = FileSystems.join(settings.model_path, str(version))
    upload_tree(staging, version_dir, last=MODEL_INFO_FILE)
    return version, version_dir


def train(
    rows: Sequence[Mapping[str, Any]], schema: RowSchema, settings: TrainSettings
) -> TrainResult:
    """Split, transform, train, evaluate and export; see the module doc for the steps."""
    from pipelines.training.autoencoder import reconstruction_error

    features = _model_features(schema, settings)
    splits = _split_rows(rows, settings)
    with tempfile.TemporaryDirectory(prefix="train-") as work:
        staging = os.path.join(work, "export")
        model = _build_model(splits, schema, features, settings, work)
        x = _model_inputs(model, splits, features)
        history = _fit(
            model.autoencoder,
            x[splits.normal_in("train")],
            x[splits.normal_in("validation")],
            settings,
            os.path.join(staging, "logs"),
        )
        scores = reconstruction_error(model.autoencoder, x)
        evaluated = _evaluate(splits, scores, history, settings)
        _write_artifacts(model, staging, evaluated)
        version, version_dir = _publish(staging, features, evaluated, settings)
    _LOGGER.info("Exported model version %d to %s", version, version_dir)
    return TrainResult(
        version=version,
        version_dir=version_dir,
        threshold=evaluated.threshold,
        features=tuple(features),
        metrics=evaluated.metrics,
        test_rows=splits.rows_in("test"),
        test_scores=evaluated.test_scores,
    )


def _settings(values: Mapping[str, Any]) -> TrainSettings:
    features = values.get("features")
    return TrainSettings(
        transform_dir=values["transformDir"],
        model_path=values["modelPath"],
        label=values.get("label") or None,
        id_field=values.get("idField") or None,
        features=tuple(features.split(",")) if features else None,
        epochs=values["epochs"],
        batch_size=values["batchSize"],
        learning_rate=values["learningRate"],
        patience=values["patience"],
        seed=values["seed"],
        target_precision=values.get("targetPrecision"),
    )


def _source_kind(values: Mapping[str, Any]) -> str:
    chosen = [
        name for name in ("trainingData", "bigqueryTable", "bootstrapServers") if values.get(name)
    ]
    if len(chosen) != 1:
        raise OptionError(
            "give exactly one training source: --trainingData, --bigqueryTable or "
            f"--bootstrapServers with --inputTopic (got {chosen or 'none'})"
        )
    return chosen[0]


def build_pipeline(p: beam.Pipeline, opts: PipelineOptions) -> Any:
    """The trainer's Beam part: bounded Kafka → decode → TFRecords + dead letters in
    ``--stagingDir`` (``run`` reads them back and trains)."""
    from pipelines.training.data import build_staging_pipeline

    values = validate(opts, OPTIONS)
    if not values.get("stagingDir"):
        raise OptionError("--stagingDir is required to build the Kafka staging pipeline")
    source = RowSource.from_options(opts, ROW_SOURCE)
    return build_staging_pipeline(p, source, values["stagingDir"])


def load_rows(
    opts: PipelineOptions, values: Mapping[str, Any], staging_dir: str
) -> tuple[RowSchema, list[dict[str, Any]]]:
    """Read the raw rows from the one source the options name."""
    from pipelines.training import data as training_data

    kind = _source_kind(values)
    endpoints = GcpEndpoints.from_options(opts)
    endpoints.configure_process()
    if kind == "trainingData":
        schema = RowSchema.load(values["schemaPath"]) if values.get("schemaPath") else None
        return training_data.rows_from_tfrecords(values["trainingData"], schema)
    if kind == "bigqueryTable":
        return training_data.rows_from_bigquery(values["bigqueryTable"], endpoints)
    source = RowSource.from_options(opts, ROW_SOURCE)
    return training_data.rows_from_kafka(source, staging_dir, opts)


def run(argv: Sequence[str] | None = None) -> TrainResult:
    """Parse and validate the options, read the rows, train and export."""
    opts = TrainOptions(list(argv) if argv is not None else None)
    values = validate(opts, OPTIONS)
    _source_kind(values)
    settings = _settings(values)
    if values.get("stagingDir"):
        schema, rows = load_rows(opts, values, values["stagingDir"])
    else:
        with tempfile.TemporaryDirectory(prefix="train-rows-") as staging_dir:
            schema, rows = load_rows(opts, values, staging_dir)
    result = train(rows, schema, settings)
    test = result.metrics["test"]
    _LOGGER.info(
        "Model %d at %s: threshold %.6g, test PR-AUC %s, precision %s, recall %s",
        result.version,
        result.version_dir,
        result.threshold,
        test.get("pr_auc"),
        test.get("precision"),
        test.get("recall"),
    )
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
