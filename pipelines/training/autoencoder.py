"""The dense autoencoder and the servable anomaly model built around it.

:func:`build_autoencoder` is the classic Keras credit-card fraud demo's network
(n → 14 tanh → 7 relu → 7 tanh → n), except that the output layer is linear: the inputs are
z-scores, half of them negative, which the demo's ReLU output cannot reconstruct.

:class:`AnomalyModel` is what gets exported: raw features → the tf.Transform layer (the same
``transform_fn`` the training data went through) → autoencoder → per-row mean squared
reconstruction error (``score``) and ``is_anomaly = score > threshold``. Its ``serving_default``
signature takes one float32 ``[batch]`` tensor per raw feature (the trainer ↔ scorer contract).

Usage::

    model = AnomalyModel(tft.TFTransformOutput(transform_dir), autoencoder, features, schema, t)
    model.save("/tmp/staging/model")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from transforms.decoding.schema import RowSchema

__all__ = ["build_autoencoder", "reconstruction_error", "AnomalyModel", "SIGNATURE"]

_LOGGER = logging.getLogger(__name__)

SIGNATURE = "serving_default"


def build_autoencoder(n_features: int, *, learning_rate: float = 1e-2) -> keras.Model:
    """n → 14 → 7 → 7 → n, compiled with Adam and MSE (seed Keras before calling)."""
    inputs = keras.Input(shape=(n_features,), name="features")
    x = keras.layers.Dense(
        14,
        activation="tanh",
        activity_regularizer=keras.regularizers.l1(1e-5),
        name="encoder_1",
    )(inputs)
    x = keras.layers.Dense(7, activation="relu", name="encoder_2")(x)
    x = keras.layers.Dense(7, activation="tanh", name="decoder_1")(x)
    outputs = keras.layers.Dense(n_features, name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def reconstruction_error(autoencoder: keras.Model, x: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error: the trainer's batch evaluation (float32)."""
    x = np.asarray(x, np.float32)
    reconstructed = np.asarray(autoencoder.predict(x, batch_size=8192, verbose=0), np.float32)
    return np.mean(np.square(x - reconstructed), axis=1)


class AnomalyModel(tf.Module):
    """Raw features → tf.Transform layer → autoencoder → ``score`` and ``is_anomaly``."""

    def __init__(
        self,
        transform_output: tft.TFTransformOutput,
        autoencoder: keras.Model,
        features: Sequence[str],
        schema: RowSchema,
        threshold: float,
    ) -> None:
        super().__init__(name="anomaly_model")
        self.features = tuple(features)
        raw_spec = transform_output.raw_feature_spec()
        missing = [name for name in self.features if name not in raw_spec]
        if missing:
            raise ValueError(f"features not in the transform's raw inputs: {missing}")
        self._raw_dtypes = {name: raw_spec[name].dtype for name in self.features}
        self._nullable = frozenset(n for n in self.features if not schema.field(n).required)
        self.transform_layer = transform_output.transform_features_layer()
        self.autoencoder = autoencoder
        self.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False)
        spec = {name: tf.TensorSpec([None], tf.float32, name=name) for name in self.features}
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _raw_inputs(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, Any]:
        """Contract tensors → what the transform expects (NaN marks a missing NULLABLE value)."""
        raw = {}
        for name in self.features:
            value = tf.reshape(tf.convert_to_tensor(inputs[name], tf.float32), [-1])
            if name in self._nullable:
                present = tf.where(tf.math.is_finite(value))
                raw[name] = tf.SparseTensor(
                    tf.concat([present, tf.zeros_like(present)], axis=1),
                    tf.cast(tf.gather_nd(value, present), self._raw_dtypes[name]),
                    tf.stack([tf.shape(value, out_type=tf.int64)[0], tf.constant(1, tf.int64)]),
                )
            else:
                raw[name] = tf.cast(value, self._raw_dtypes[name])
        return raw

    def transform(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Raw feature tensors → the ``[batch, n_features]`` float32 autoencoder input."""
        transformed = self.transform_layer(self._raw_inputs(inputs))
        return tf.stack([tf.cast(transformed[name], tf.float32) for name in self.features], axis=1)

    def _serve(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        x = self.transform(inputs)
        reconstructed = self.autoencoder(x, training=False)
        score = tf.reduce_mean(tf.square(x - reconstructed), axis=1)
        return {"score": score, "is_anomaly": score > self.threshold}

    def save(self, directory: str) -> None:
        """Write a SavedModel (local path) whose ``serving_default`` is :meth:`serve`."""
        tf.saved_model.save(self, directory, signatures={SIGNATURE: self.serve})
        _LOGGER.info("Saved model with features %s to %s", self.features, directory)
