"""A tiny real SavedModel in the trainer ↔ scorer contract's layout, for tests and benchmarks.

``score = mean(weight * (x - center)^2)`` over the features, ``is_anomaly = score > threshold``:
real TensorFlow (a ``tf.Module`` with a ``serving_default`` signature taking one float32 [batch]
tensor per raw feature), simple enough that tests can compute the expected score with numpy.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CREDITCARD_FEATURES", "creditcard_event", "write_model", "expected_score"]

CREDITCARD_FEATURES: tuple[str, ...] = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")


def write_model(
    root: str,
    version: int,
    *,
    weight: float = 1.0,
    center: float = 0.0,
    threshold: float = 1.0,
    features: Sequence[str] = CREDITCARD_FEATURES,
) -> str:
    """Export version ``version`` under ``root`` (model_info.json last); return its directory."""
    import tensorflow as tf

    names = tuple(features)

    class _Model(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = tf.Variable(np.full(len(names), weight, np.float32))
            self.center = tf.Variable(np.full(len(names), center, np.float32))
            self.threshold = tf.Variable(np.float32(threshold))

        @tf.function(
            input_signature=[{n: tf.TensorSpec([None], tf.float32, name=n) for n in names}]
        )
        def serve(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
            x = tf.stack([inputs[n] for n in names], axis=1)
            score = tf.reduce_mean(self.weight * tf.square(x - self.center), axis=1)
            return {"score": score, "is_anomaly": score > self.threshold}

    model = _Model()
    directory = os.path.join(root, str(version))
    tf.saved_model.save(model, directory, signatures={"serving_default": model.serve})
    info = {
        "version": version,
        "features": list(names),
        "threshold": threshold,
        "label": "Class",
        "id_field": "event_id",
        "metrics": {},
    }
    with open(os.path.join(directory, "model_info.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle)
    return directory


def expected_score(
    row: Mapping[str, float],
    *,
    weight: float = 1.0,
    center: float = 0.0,
    features: Sequence[str] = CREDITCARD_FEATURES,
) -> float:
    """The score :func:`write_model`'s model gives ``row``, computed with numpy in float32."""
    x = np.array([row[n] for n in features], np.float32)
    return float(np.mean(np.float32(weight) * np.square(x - np.float32(center))))


def creditcard_event(event_id: str, rng: np.random.Generator) -> bytes:
    """One JSON card event of the bundled ``creditcard`` schema, with random features."""
    values = rng.normal(0, 1, len(CREDITCARD_FEATURES))
    row = {name: float(v) for name, v in zip(CREDITCARD_FEATURES, values, strict=True)}
    card = f"card-{zlib.crc32(event_id.encode()) % 7}"
    return json.dumps({"event_id": event_id, "card_id": card, **row}).encode()
