"""Which model scores rows: the embedded SavedModel under ``--modelPath`` or a model server.

The scorer (``score_events``) and ``ANOMALY()`` in the export pipelines' expressions take the
same options and get the same RunInference handler from :func:`model_from_options`: a
:class:`~transforms.inference.model_handler.SavedModelHandler` for ``--modelPath``, a
:class:`~transforms.inference.model_server_handler.ModelServerHandler` for ``--modelServerUrl``.
Both answer column-wise (``verdicts``), so the scoring code is the same for both. Before any
work starts the model is checked against the row schema: every feature it needs must be a
schema field (read from ``model_info.json``, or from the server's model metadata — a server that
does not answer at launch is a clear error).

Usage::

    OPTIONS = (*ROW_SOURCE, *MODEL_SOURCE, ...)
    model = model_from_options(values, schema)
    scored = pairs | ScoreEvents(model.handler, id_field=model.id_field)
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

from apache_beam.ml.inference.base import ModelHandler

from pipelines.common.options import Option, OptionError
from transforms.inference.model_handler import KERAS_SAVER_MODULES, SavedModelHandler
from transforms.inference.model_server_handler import (
    PROTOCOLS,
    ModelServerEndpoint,
    ModelServerError,
    ModelServerHandler,
    ModelServerUnavailable,
    fetch_features,
)
from transforms.inference.model_store import ModelStoreError, latest_version, read_model_info

__all__ = [
    "MODEL_SOURCE",
    "SCORE_COLUMN",
    "ModelChoice",
    "model_from_options",
    "preload_tensorflow",
]

#: Runners that run the pipeline in the launching process.
_IN_PROCESS_RUNNERS = frozenset({None, "DirectRunner", "FnApiRunner", "SwitchingDirectRunner"})

_LOGGER = logging.getLogger(__name__)

#: Field copied into each prediction when the model names no id field.
DEFAULT_ID_FIELD = "event_id"

_NUMBER = r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?"

#: The model options: an embedded SavedModel root, or a model server (one of the two).
MODEL_SOURCE: tuple[Option, ...] = (
    Option(
        "modelPath",
        "Model directory",
        "Directory (local or gs://) holding versioned SavedModels <version>/ with "
        "model_info.json; the newest complete version is used, newer ones are picked up live. "
        "The model of the scorer and of ANOMALY()/IS_ANOMALY() in --filter; or modelServerUrl.",
        regexes=(r"\S+",),
        example="gs://my-bucket/models/fraud",
        param_type="GCS_READ_FOLDER",
    ),
    Option(
        "threshold",
        "Anomaly threshold",
        "Overrides the model's threshold: an event is an anomaly when its score is above it.",
        type=float,
        regexes=(_NUMBER,),
        example="0.85",
    ),
    Option(
        "modelPollSeconds",
        "Model poll interval",
        "Seconds between checks of modelPath for a new model version (> 0).",
        type=float,
        default=30.0,
        regexes=(_NUMBER,),
        example="30",
    ),
    Option(
        "modelServerUrl",
        "Model server URL",
        "Score on a model server instead of an embedded modelPath: base URL of a server "
        "speaking modelServerProtocol (KServe, MLServer, Triton, TensorFlow Serving REST).",
        regexes=(r"https?://[A-Za-z0-9_.\-\[\]:]+(:[0-9]{1,5})?(/\S*)?",),
        example="http://model-server:8080",
    ),
    Option(
        "modelName",
        "Served model name",
        "Name of the model on modelServerUrl.",
        default="anomaly",
        regexes=(r"[A-Za-z0-9_.\-]{1,200}",),
        example="fraud",
    ),
    Option(
        "modelVersion",
        "Served model version",
        "Version of the model on modelServerUrl (unset: the server's default/newest).",
        regexes=(r"[A-Za-z0-9_.\-]{1,64}",),
        example="3",
    ),
    Option(
        "modelServerProtocol",
        "Model server protocol",
        "v2: Open Inference Protocol (/v2/models/<name>/infer); v1-row / v1-columnar: "
        "TensorFlow Serving REST predict (/v1/models/<name>:predict, instances or inputs).",
        default="v2",
        choices=PROTOCOLS,
        example="v1-row",
    ),
    Option(
        "modelServerTimeoutSeconds",
        "Model server timeout",
        "Connect/read timeout of one request to the model server, seconds (> 0).",
        type=float,
        default=10.0,
        regexes=(_NUMBER,),
        example="10",
    ),
    Option(
        "modelServerMaxInFlight",
        "Model server requests in flight",
        "Most requests to the model server in flight per worker process (>= 1).",
        type=int,
        default=4,
        regexes=(r"[1-9][0-9]{0,3}",),
        example="4",
    ),
    Option(
        "modelServerBatchSize",
        "Model server batch size",
        "Most rows per request to the model server (>= 1).",
        type=int,
        default=512,
        regexes=(r"[1-9][0-9]{0,5}",),
        example="512",
    ),
    Option(
        "modelServerRetries",
        "Model server retries",
        "Retries of a batch the model server failed (5xx, 429, timeout, no connection; 5 s, "
        "doubling) before the pipeline fails (>= 0).",
        type=int,
        default=5,
        regexes=(r"[0-9]{1,2}",),
        example="5",
    ),
)


#: Export pipelines: the model's score as a column of the exported rows.
SCORE_COLUMN: tuple[Option, ...] = (
    Option(
        "anomalyScoreColumn",
        "Anomaly score column",
        "Add the model's score of each row (ANOMALY()) as this FLOAT column to the exported rows "
        "and the output schema; needs modelPath or modelServerUrl.",
        regexes=(r"[A-Za-z_][A-Za-z0-9_]{0,299}",),
        example="anomaly_score",
    ),
)


class ModelChoice(NamedTuple):
    """The handler to score with, the model's features and the row field naming an event."""

    handler: ModelHandler
    features: tuple[str, ...]
    id_field: str


def model_from_options(values: Mapping[str, Any], schema: Collection[str]) -> ModelChoice:
    """The handler for ``--modelPath`` or ``--modelServerUrl``, checked against the schema.

    Raises :class:`OptionError` naming the flag: neither or both set, an unreadable model, a
    server that does not answer, features the schema lacks.
    """
    path, url = values.get("modelPath"), values.get("modelServerUrl")
    if bool(path) == bool(url):
        raise OptionError("set exactly one of --modelPath (embedded model) and --modelServerUrl")
    if path:
        poll = values["modelPollSeconds"]
        if poll <= 0:
            raise OptionError(f"--modelPollSeconds must be > 0, got {poll}")
        try:
            info = read_model_info(latest_version(path).path)
        except (ModelStoreError, OSError) as err:
            raise OptionError(f"--modelPath={path!r}: {err}") from err
        handler: ModelHandler = SavedModelHandler(
            path, threshold=values.get("threshold"), poll_seconds=poll
        )
        choice = ModelChoice(handler, tuple(info.features), info.id_field or DEFAULT_ID_FIELD)
        where = f"--modelPath={path!r}: model version {info.version}"
    else:
        choice, where = _server_model(values, url)
    missing = [name for name in choice.features if name not in schema]
    if missing:
        raise OptionError(f"{where} needs features {missing} that --schemaPath does not declare")
    return choice


def _server_model(values: Mapping[str, Any], url: str) -> tuple[ModelChoice, str]:
    """The server's handler, with the features its metadata lists (read once, here)."""
    for name, low in (
        ("modelServerMaxInFlight", 1),
        ("modelServerBatchSize", 1),
        ("modelServerRetries", 0),
    ):
        if values[name] < low:
            raise OptionError(f"--{name} must be >= {low}, got {values[name]}")
    try:
        endpoint = ModelServerEndpoint(
            url,
            values["modelName"],
            values.get("modelVersion"),
            values["modelServerProtocol"],
            values["modelServerTimeoutSeconds"],
        )
        features = fetch_features(endpoint)
    except (ValueError, ModelServerError, ModelServerUnavailable) as err:
        raise OptionError(f"--modelServerUrl={url!r}: {err}") from err
    handler = ModelServerHandler(
        endpoint,
        features=features,
        threshold=values.get("threshold"),
        max_batch_size=values["modelServerBatchSize"],
        max_in_flight=values["modelServerMaxInFlight"],
        num_retries=values["modelServerRetries"],
    )
    where = f"--modelServerUrl={url!r}: model {endpoint.model_name!r}"
    return ModelChoice(handler, features, DEFAULT_ID_FIELD), where


def preload_tensorflow(values: Mapping[str, Any], runner: str | None) -> threading.Thread | None:
    """Start importing TensorFlow in a background thread when the embedded model will be
    loaded in this process (``--modelPath`` on an in-process runner); None otherwise.

    Why: the import takes ~2.7 s here and used to start only when the pipeline loaded the
    model, after the consumer-group lease (which sleeps 0.5 s) and the pipeline's
    construction; begun at launch it overlaps them, and the load then finds it done (or
    waits for it, on the import lock). A launcher of a remote job never pays for it.
    The import leaves out Keras (:func:`_keras_deferred`), which a scorer does not use.
    """
    if not values.get("modelPath") or runner not in _IN_PROCESS_RUNNERS:
        return None

    def load() -> None:
        try:
            with _keras_deferred():
                import tensorflow  # noqa: F401, PLC0415 - the point of the thread
        except Exception:  # noqa: BLE001 - the model load imports it again and reports it
            _LOGGER.debug("background import of TensorFlow failed", exc_info=True)

    thread = threading.Thread(target=load, name="preload-tensorflow", daemon=True)
    thread.start()
    return thread


#: What TensorFlow's import loads of Keras: 0.7 of its ~3 s here, the rest of Keras with them.
_KERAS_EAGER_IMPORTS = frozenset(KERAS_SAVER_MODULES)


@contextmanager
def _keras_deferred() -> Iterator[None]:
    """TensorFlow imported without Keras: its eager Keras import fails (it catches that).

    A scorer's SavedModel signature needs no Keras; a model that does (one saved with a Keras
    optimizer) loads after Keras is imported: ``LoadedModel.load`` does that and retries.
    ``importlib.import_module`` is what TensorFlow calls, and only those names are refused.
    """
    original = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name in _KERAS_EAGER_IMPORTS:
            raise ImportError(f"{name}: deferred while TensorFlow is preloaded for scoring")
        return original(name, package)

    importlib.import_module = import_module
    try:
        yield
    finally:
        importlib.import_module = original
