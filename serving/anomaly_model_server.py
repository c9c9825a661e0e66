"""A KServe model server for the project's versioned anomaly SavedModels (``<root>/<version>/``).

KServe's Python ``ModelServer`` (kserve 0.21) answers both REST protocols the remote scorer speaks
(:mod:`transforms.inference.model_server_handler`):

- v1, TensorFlow Serving's predict API: ``POST /v1/models/<name>:predict`` with ``{"instances":
  [{feature: value, ...}, ...]}`` (row format; answer ``{"predictions": [{output: value}, ...]}``)
  or ``{"inputs": {feature: [values]}}`` (columnar; answer ``{"outputs": {output: [values]}}``);
- v2, the Open Inference Protocol: ``POST /v2/models/<name>/infer`` with one FP32 ``[batch]``
  tensor per feature; ``GET /v2/models/<name>`` lists the features as the model's inputs.

Outputs are the SavedModel's ``score`` and ``is_anomaly`` plus ``threshold`` and
``model_version`` (from ``model_info.json``) so a prediction says which model judged it. A null
feature is NaN (the contract's missing NULLABLE feature). A row with a missing or non-numeric
feature is rejected with HTTP 400 and the reason; until a complete version exists every
request gets 503. The newest complete version is loaded at start and a newer one is picked up
every ``--poll_seconds`` (as the embedded scorer does).

It runs in its own venv (kserve + tensorflow; ``scripts/local_stack.py`` installs it) and so
imports nothing from this project. Every socket binds ``--host`` (127.0.0.1 by default: KServe
itself binds 0.0.0.0). Run::

    python serving/anomaly_model_server.py --model_root /models/fraud --model_name anomaly \\
        --http_port 8085 [--poll_seconds 2] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from typing import Any

import kserve
import numpy as np
import tensorflow as tf
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.rest import server as rest_server

_LOGGER = logging.getLogger("anomaly_model_server")
_MODEL_INFO = "model_info.json"
_SAVED_MODEL = "saved_model.pb"
_OUTPUTS = {"score": "FP32", "is_anomaly": "BOOL", "threshold": "FP32", "model_version": "INT64"}


class _Version:
    """One loaded version: a function of a float32 [batch, features] matrix, and its info."""

    def __init__(self, directory: str) -> None:
        with open(os.path.join(directory, _MODEL_INFO)) as handle:
            info = json.load(handle)
        self.version = int(info.get("version", os.path.basename(directory)))
        self.features: list[str] = list(info["features"])
        self.threshold = float(info["threshold"])
        self._holder = tf.saved_model.load(directory)  # the signature lives as long as this
        signature = self._holder.signatures["serving_default"]
        names = tuple(self.features)

        @tf.function(input_signature=[tf.TensorSpec([None, len(names)], tf.float32)])
        def score(matrix: Any) -> Any:
            out = signature(**{name: matrix[:, i] for i, name in enumerate(names)})
            return out["score"], out["is_anomaly"]

        self._score = score.get_concrete_function()

    def score(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, flags = self._score(tf.constant(matrix, tf.float32))
        return scores.numpy().reshape(-1), flags.numpy().reshape(-1)


def _newest_complete(root: str) -> str | None:
    """The highest ``<root>/<int>/`` holding both model_info.json and saved_model.pb."""
    try:
        names = [n for n in os.listdir(root) if n.isdigit()]
    except OSError:
        return None
    for name in sorted(names, key=int, reverse=True):
        directory = os.path.join(root, name)
        if all(os.path.isfile(os.path.join(directory, f)) for f in (_MODEL_INFO, _SAVED_MODEL)):
            return directory
    return None


def _column(values: Any, feature: str) -> np.ndarray:
    """Values of one feature as float32, None as NaN; InvalidInput (HTTP 400) if not numbers."""
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"feature {feature!r} is not a number: {err}") from err


class AnomalyModel(kserve.Model):
    """The newest complete version under ``root``, swapped for a newer one by a poll thread."""

    def __init__(self, name: str, root: str, poll_seconds: float) -> None:
        super().__init__(name)
        self._root = root
        self._poll_seconds = poll_seconds
        self._current: _Version | None = None
        self._rejected: str | None = None

    def load(self) -> bool:
        """Ready without a version too (requests get 503 until one appears): the server starts."""
        self._refresh()
        threading.Thread(target=self._poll, name="model-poll", daemon=True).start()
        self.ready = True
        return True

    def _poll(self) -> None:
        while True:
            time.sleep(self._poll_seconds)
            self._refresh()

    def _refresh(self) -> None:
        newest = _newest_complete(self._root)
        current = self._current
        if newest is None or newest == self._rejected:
            return
        if current is not None and int(os.path.basename(newest)) <= current.version:
            return
        try:
            self._current = _Version(newest)
        except Exception:  # noqa: BLE001 - a bad export must not stop serving the current one
            _LOGGER.exception("keeping the current model: loading %s failed", newest)
            self._rejected = newest
            return
        _LOGGER.info("serving model version %d from %s", self._current.version, newest)

    def _loaded(self) -> _Version:
        current = self._current
        if current is None:
            raise ModelNotReady(self.name, f"no complete model version under {self._root} yet")
        return current

    def get_input_types(self) -> list[dict]:
        current = self._current
        features = current.features if current is not None else []
        return [{"name": f, "datatype": "FP32", "shape": [-1]} for f in features]

    def get_output_types(self) -> list[dict]:
        return [{"name": n, "datatype": t, "shape": [-1]} for n, t in _OUTPUTS.items()]

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        current = self._loaded()
        if isinstance(payload, kserve.InferRequest):
            columns = {tensor.name: tensor.data for tensor in payload.inputs}
            outputs = self._outputs(current, self._matrix(current, columns))
            return kserve.InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                model_version=str(current.version),
                infer_outputs=[
                    kserve.InferOutput(name, [len(values)], _OUTPUTS[name], values)
                    for name, values in outputs.items()
                ],
            )
        if not isinstance(payload, dict):
            raise InvalidInput("expected a JSON object with 'instances' or 'inputs'")
        if "instances" in payload:
            rows = payload["instances"]
            if not all(isinstance(row, dict) for row in rows):
                raise InvalidInput("'instances' must be objects of named features (row format)")
            columns = {f: [row.get(f, _MISSING) for row in rows] for f in current.features}
            outputs = self._outputs(current, self._matrix(current, columns))
            return {
                "predictions": [
                    dict(zip(outputs, values, strict=True))
                    for values in zip(*outputs.values(), strict=True)
                ]
            }
        if isinstance(payload.get("inputs"), dict):
            outputs = self._outputs(current, self._matrix(current, payload["inputs"]))
            return {"outputs": outputs}
        raise InvalidInput("expected 'instances' (row format) or 'inputs' (columnar format)")

    @staticmethod
    def _matrix(current: _Version, columns: dict[str, Any]) -> np.ndarray:
        missing = [f for f in current.features if f not in columns]
        if missing:
            raise InvalidInput(f"missing features {missing}")
        for feature in current.features:
            if any(v is _MISSING for v in columns[feature]):
                raise InvalidInput(f"missing feature {feature!r}")
        lengths = {len(columns[f]) for f in current.features}
        if len(lengths) != 1:
            raise InvalidInput(f"features have different lengths {sorted(lengths)}")
        return np.stack([_column(columns[f], f) for f in current.features], axis=1)

    @staticmethod
    def _outputs(current: _Version, matrix: np.ndarray) -> dict[str, list]:
        scores, flags = current.score(matrix)
        size = len(scores)
        # NaN is not JSON: a non-finite score travels as null (the client dead-letters it).
        return {
            "score": [float(s) if np.isfinite(s) else None for s in scores.tolist()],
            "is_anomaly": [bool(f) for f in flags.tolist()],
            "threshold": [current.threshold] * size,
            "model_version": [current.version] * size,
        }


_MISSING = object()


def _bind_rest_to(host: str) -> None:
    """KServe's REST server hard-codes host 0.0.0.0; bind it to ``host`` instead."""
    original = rest_server.RESTServer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.config.host = host

    rest_server.RESTServer.__init__ = init


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_root", required=True, help="directory of <version>/ SavedModels")
    parser.add_argument("--poll_seconds", type=float, default=2.0, help="new-version check period")
    parser.add_argument("--host", default="127.0.0.1", help="address the REST server binds")
    args, _ = parser.parse_known_args()
    _bind_rest_to(args.host)
    model = AnomalyModel(args.model_name, args.model_root, args.poll_seconds)
    model.load()
    kserve.ModelServer(enable_grpc=False).start([model])


if __name__ == "__main__":
    main()
