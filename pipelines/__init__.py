"""Runnable pipelines composed from :mod:`transforms` (``python -m pipelines.<name>``).

Importing the package quiets TensorFlow's CPU-only start-up notices before any pipeline imports
TensorFlow (see :mod:`pipelines.common.quiet_tensorflow`).
"""

from pipelines.common import quiet_tensorflow

quiet_tensorflow.install()
