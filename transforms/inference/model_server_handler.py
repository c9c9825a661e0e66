"""A RunInference model handler that scores batches on a model server over HTTP.

Built on Beam's ``RemoteModelHandler`` (retries with exponential backoff, client-side
throttling) and speaking two REST protocols:

- ``v2``: the Open Inference Protocol (KServe, MLServer, Triton): ``POST
  /v2/models/<name>[/versions/<v>]/infer``, one FP32 ``[batch]`` tensor per feature;
- ``v1-row`` / ``v1-columnar``: TensorFlow Serving's predict API, ``POST
  /v1/models/<name>[/versions/<v>]:predict`` with ``instances`` (one object per row) or
  ``inputs`` (one list per feature).

The model is the project's anomaly model served as such (``serving/anomaly_model_server.py``
in the local stack): inputs are the raw features by name, outputs ``score`` and optionally
``is_anomaly``, ``threshold`` and ``model_version``. Features come from the server's model
metadata unless given.

Failure handling, per batch of rows (a RunInference batch is split into requests of at most
``max_batch_size`` rows, at most ``max_in_flight`` of them in flight per worker process):

- a row with a missing or non-numeric feature is not sent (a :class:`FeatureError`, as embedded);
- HTTP 400 for a request: the server rejected some row; the request is bisected until each
  rejected row is alone, and that row gets a :class:`RejectedByServer` with the server's reason
  (the scorer dead-letters it), the others are scored;
- no answer, a timeout, HTTP 429 or 5xx: :class:`ModelServerUnavailable`, which Beam retries
  (``num_retries`` times, 5 s doubling, fuzzed); when they are spent the bundle fails with that
  message, and so does the pipeline;
- anything else (404 unknown model, an answer without a score): :class:`ModelServerError`, not
  retried.

Usage::

    endpoint = ModelServerEndpoint("http://127.0.0.1:8085", "anomaly", protocol="v2")
    handler = ModelServerHandler(endpoint, max_in_flight=4)
    scored = pairs | ScoreEvents(handler)            # column-wise, like SavedModelHandler
    results = rows | RunInference(handler)           # row -> PredictionResult(row, Score)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import urllib3
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RemoteModelHandler

from transforms.inference.model_handler import (
    FeatureError,
    Row,
    Verdicts,
    feature_matrix,
    prediction_results,
    row_problem,
)

__all__ = [
    "PROTOCOLS",
    "ModelServerClient",
    "ModelServerEndpoint",
    "ModelServerError",
    "ModelServerHandler",
    "ModelServerUnavailable",
    "RejectedByServer",
]

PROTOCOLS = ("v2", "v1-row", "v1-columnar")

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_UNKNOWN_VERSION = -1


class ModelServerUnavailable(RuntimeError):
    """The server did not answer, timed out or answered 429/5xx; RunInference retries it."""


class ModelServerError(RuntimeError):
    """An answer no retry fixes (unknown model, a malformed answer, no threshold known)."""


class RejectedByServer(FeatureError):
    """The server refused this row (HTTP 400 when it was sent alone); the reason is the server's."""


@dataclasses.dataclass(frozen=True)
class ModelServerEndpoint:
    """Where the model is served and how to talk to it (picklable; the client is built from it)."""

    url: str
    model_name: str
    model_version: str | None = None
    protocol: str = "v2"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"model server URL must start with http:// or https://: {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    def _model_path(self) -> str:
        version = f"/versions/{self.model_version}" if self.model_version else ""
        return f"{self.url.rstrip('/')}/{self.protocol[:2]}/models/{self.model_name}{version}"

    @property
    def predict_url(self) -> str:
        path = self._model_path()
        return f"{path}/infer" if self.protocol == "v2" else f"{path}:predict"

    def metadata_urls(self) -> tuple[str, ...]:
        """Where the model's inputs are listed: OIP metadata, or TF Serving's ``/metadata``
        (then OIP's on the same server: KServe answers v1 predict but not v1 metadata)."""
        v2 = dataclasses.replace(self, protocol="v2")._model_path()
        return (v2,) if self.protocol == "v2" else (f"{self._model_path()}/metadata", v2)


class ModelServerClient:
    """One worker process's connection pool and request threads for one model server.

    Scores a batch column-wise (:meth:`verdicts`), in requests of at most ``max_batch_size`` rows
    with at most ``max_in_flight`` requests in flight for the whole process (RunInference shares
    the client between the process's threads).
    """

    def __init__(
        self,
        endpoint: ModelServerEndpoint,
        *,
        features: Sequence[str] | None = None,
        threshold: float | None = None,
        max_batch_size: int = 512,
        max_in_flight: int = 4,
    ) -> None:
        self.endpoint = endpoint
        self._features = tuple(features) if features else None
        self._threshold = threshold
        self._max_batch_size = max_batch_size
        self._http = urllib3.PoolManager(
            maxsize=max_in_flight,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=min(endpoint.timeout_s, 5.0), read=endpoint.timeout_s),
        )
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="model-server")

    def features(self) -> tuple[str, ...]:
        """The model's inputs: as given, else read once from the server's model metadata."""
        if self._features is None:
            self._features = fetch_features(self.endpoint, self._http)
        return self._features

    def verdicts(self, rows: Sequence[Row]) -> Verdicts:
        """The server's verdicts on ``rows``; unscorable or rejected rows in ``errors``."""
        features = self.features()
        size = len(rows)
        merged = Verdicts(
            [math.nan] * size, [False] * size, [math.nan] * size, [_UNKNOWN_VERSION] * size, {}
        )
        try:
            good = list(range(size))
            matrix = feature_matrix(rows, features)
        except (KeyError, TypeError, ValueError):
            good = []
            for index, row in enumerate(rows):
                problem = row_problem(row, features)
                if problem is None:
                    good.append(index)
                else:
                    merged.errors[index] = problem
            matrix = feature_matrix([rows[i] for i in good], features) if good else None
        if matrix is None:
            return merged
        starts = range(0, len(good), self._max_batch_size)
        chunks = [matrix[start : start + self._max_batch_size] for start in starts]
        for start, scored in zip(starts, self._executor.map(self._score, chunks), strict=True):
            for offset in range(len(scored.scores)):
                index = good[start + offset]
                for merged_column, scored_column in zip(merged[:4], scored[:4], strict=True):
                    merged_column[index] = scored_column[offset]
                if offset in scored.errors:
                    merged.errors[index] = scored.errors[offset]
        return merged

    def _score(self, matrix: np.ndarray) -> Verdicts:
        """One request; on HTTP 400 the halves are retried until the rejected rows are alone."""
        status, body = self._post(self._payload(matrix))
        if status == 400:
            reason = _error_text(body)
            if len(matrix) == 1:
                return Verdicts(
                    [math.nan],
                    [False],
                    [math.nan],
                    [_UNKNOWN_VERSION],
                    {0: RejectedByServer(f"model server rejected the row: {reason}")},
                )
            half = len(matrix) // 2
            first, second = self._score(matrix[:half]), self._score(matrix[half:])
            errors = {**first.errors, **{half + i: e for i, e in second.errors.items()}}
            return Verdicts(*(a + b for a, b in zip(first[:4], second[:4], strict=True)), errors)
        if status != 200:
            raise ModelServerError(
                f"model server {self.endpoint.predict_url} answered HTTP {status}: "
                f"{_error_text(body)}"
            )
        return self._parse(_json_body(body, self.endpoint.predict_url), len(matrix))

    def _payload(self, matrix: np.ndarray) -> dict[str, Any]:
        features = self.features()
        columns = matrix.T.tolist()
        if np.isnan(matrix).any():  # NaN is not JSON: a null feature travels as null
            columns = [[None if v != v else v for v in column] for column in columns]
        protocol = self.endpoint.protocol
        if protocol == "v2":
            return {
                "inputs": [
                    {"name": name, "datatype": "FP32", "shape": [len(matrix)], "data": column}
                    for name, column in zip(features, columns, strict=True)
                ]
            }
        if protocol == "v1-columnar":
            return {"inputs": dict(zip(features, columns, strict=True))}
        return {
            "instances": [
                dict(zip(features, row, strict=True)) for row in zip(*columns, strict=True)
            ]
        }

    def _post(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        url = self.endpoint.predict_url
        try:
            response = self._http.request(
                "POST",
                url,
                body=json.dumps(payload, allow_nan=False).encode(),
                headers={"Content-Type": "application/json"},
            )
        except urllib3.exceptions.HTTPError as err:
            raise ModelServerUnavailable(f"model server {url} did not answer: {err}") from err
        if response.status in _RETRYABLE_STATUS:
            raise ModelServerUnavailable(
                f"model server {url} answered HTTP {response.status}: {_error_text(response.data)}"
            )
        return response.status, response.data

    def _parse(self, body: Any, size: int) -> Verdicts:
        outputs = _outputs_by_name(body, self.endpoint.protocol)
        url = self.endpoint.predict_url
        scores = outputs.get("score")
        if scores is None or len(scores) != size:
            raise ModelServerError(
                f"model server {url} answered without {size} 'score' values: {str(body)[:300]}"
            )
        if self._threshold is not None:
            thresholds = [self._threshold] * size
            flags = [s is not None and s > self._threshold for s in scores]
        elif "threshold" in outputs:
            thresholds = [float(t) for t in outputs["threshold"]]
            flags = outputs.get("is_anomaly") or [
                s is not None and s > t for s, t in zip(scores, thresholds, strict=True)
            ]
        else:
            raise ModelServerError(
                f"model server {url} gives no 'threshold' output; set the threshold "
                "(--threshold) to score with this model"
            )
        versions = [int(v) for v in outputs.get("model_version", ())] or [
            _version_number(body.get("model_version") if isinstance(body, dict) else None)
            or _version_number(self.endpoint.model_version)
            or _UNKNOWN_VERSION
        ] * size
        errors: dict[int, Exception] = {}
        clean = []
        for index, score in enumerate(scores):
            if score is None or not math.isfinite(score):
                errors[index] = FeatureError(
                    f"model version {versions[index]} gave score {score} (a null or NaN "
                    f"feature the model cannot handle?)"
                )
                score = math.nan
            clean.append(float(score))
        return Verdicts(clean, [bool(f) for f in flags], thresholds, versions, errors)


def fetch_features(
    endpoint: ModelServerEndpoint, http: urllib3.PoolManager | None = None
) -> tuple[str, ...]:
    """The model's input names from the server's metadata (OIP, or TF Serving's signature).

    Raises :class:`ModelServerUnavailable` if the server does not answer,
    :class:`ModelServerError` if it does not know the model or lists no inputs.
    """
    http = http or urllib3.PoolManager(retries=False, timeout=endpoint.timeout_s)
    answers = []
    for url in endpoint.metadata_urls():
        try:
            response = http.request("GET", url)
        except urllib3.exceptions.HTTPError as err:
            raise ModelServerUnavailable(f"model server {url} did not answer: {err}") from err
        if response.status in _RETRYABLE_STATUS:
            raise ModelServerUnavailable(
                f"model server {url} answered HTTP {response.status}: {_error_text(response.data)}"
            )
        if response.status == 200:
            body = _json_body(response.data, url)
            features = _input_names(body)
            if features:
                return features
            answers.append(f"{url}: no inputs listed")
        else:
            answers.append(f"{url}: HTTP {response.status} {_error_text(response.data)}")
    raise ModelServerError(
        f"cannot read the inputs of model {endpoint.model_name!r} ({'; '.join(answers)}); "
        "is a model version served yet?"
    )


def _input_names(body: Any) -> tuple[str, ...]:
    if not isinstance(body, dict):
        return ()
    if "inputs" in body:  # OIP model metadata
        return tuple(str(tensor["name"]) for tensor in body["inputs"] or ())
    try:  # TF Serving GetModelMetadata
        signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    except (KeyError, TypeError):
        return ()
    return tuple(signature["inputs"])


def _outputs_by_name(body: Any, protocol: str) -> dict[str, list]:
    """Each output's per-row values from a v2, v1 row or v1 columnar answer."""
    if not isinstance(body, dict):
        return {}
    if protocol == "v2":
        return {str(t.get("name")): list(t.get("data") or ()) for t in body.get("outputs") or ()}
    if protocol == "v1-columnar":
        outputs = body.get("outputs")
        return dict(outputs) if isinstance(outputs, dict) else {"score": outputs}
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return {}
    if predictions and not isinstance(predictions[0], dict):
        return {"score": predictions}  # a single-output model answers bare values
    names = predictions[0].keys() if predictions else ()
    return {name: [row.get(name) for row in predictions] for name in names}


def _version_number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _json_body(data: bytes, url: str) -> Any:
    """The parsed JSON answer, or :class:`ModelServerError` naming the URL."""
    try:
        return json.loads(data)
    except ValueError as err:
        raise ModelServerError(f"model server {url} answered non-JSON: {data[:200]!r}") from err


def _error_text(data: bytes) -> str:
    """The server's reason: ``{"error": ...}`` (KServe, TF Serving, Triton) or the raw text."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:500].decode("utf-8", "replace")
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:500]
    return str(body)[:500]


class ModelServerHandler(RemoteModelHandler[Row, PredictionResult, ModelServerClient]):
    """RunInference handler scoring rows of raw features on a model server.

    Args:
      endpoint: the server's base URL, the served model's name and version (no version: the
        server's default), the protocol (``"v2"``: Open Inference Protocol; ``"v1-row"`` or
        ``"v1-columnar"``: TF Serving REST predict) and the timeout per request.
      features: the model's inputs; None reads them from the server's model metadata.
      threshold: overrides the server's threshold (``is_anomaly = score > threshold``); needed
        when the server returns no ``threshold`` output (a plain TF Serving of the SavedModel).
      max_batch_size: most rows per request (RunInference batches are split).
      max_in_flight: most requests in flight per worker process.
      num_retries: retries of a batch the server failed (5xx, 429, timeout, no connection)
        before the bundle, and the pipeline, fail.
    """

    def __init__(
        self,
        endpoint: ModelServerEndpoint,
        *,
        features: Sequence[str] | None = None,
        threshold: float | None = None,
        max_batch_size: int = 512,
        max_in_flight: int = 4,
        num_retries: int = 5,
    ) -> None:
        if max_batch_size < 1 or max_in_flight < 1 or num_retries < 0:
            raise ValueError("max_batch_size and max_in_flight must be >= 1, num_retries >= 0")
        super().__init__(
            namespace="ModelServerHandler",
            num_retries=num_retries,
            retry_filter=lambda err: isinstance(err, ModelServerUnavailable),
        )
        self._endpoint = endpoint
        self._features = tuple(features) if features else None
        self._threshold = threshold
        self._max_batch_size = max_batch_size
        self._max_in_flight = max_in_flight

    @property
    def endpoint(self) -> ModelServerEndpoint:
        return self._endpoint

    def create_client(self) -> ModelServerClient:
        return ModelServerClient(
            self._endpoint,
            features=self._features,
            threshold=self._threshold,
            max_batch_size=self._max_batch_size,
            max_in_flight=self._max_in_flight,
        )

    def request(
        self,
        batch: Sequence[Row],
        model: ModelServerClient,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Score the batch; retried by ``RemoteModelHandler.run_inference`` when unavailable."""
        return prediction_results(batch, model.verdicts(batch))

    def verdicts(self, batch: Sequence[Row], model: ModelServerClient) -> Verdicts:
        """The batch's verdicts column-wise, through RunInference's retries and throttling."""
        return Verdicts.from_scores(
            [result.inference for result in self.run_inference(batch, model)]
        )

    def get_num_bytes(self, batch: Sequence[Row]) -> int:
        """Approximate payload size for metrics (the default pickles the whole batch)."""
        return 8 * sum(len(row) for row in batch)

    def get_metrics_namespace(self) -> str:
        return "ModelServerHandler"

    def keyed(self) -> KeyedModelHandler:
        """This handler for ``(key, row)`` pairs, e.g. ``(KafkaRecord, row)`` from the decoder."""
        return KeyedModelHandler(self)
