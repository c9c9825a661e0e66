"""preload_tensorflow: only where this process will load the embedded model."""

from __future__ import annotations

import os
import subprocess
import sys

from tiny_anomaly_model import write_model

from pipelines.common.model_source import preload_tensorflow

_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


def test_tensorflow_is_preloaded_only_for_an_embedded_model_on_an_in_process_runner() -> None:
    assert preload_tensorflow({"modelPath": None, "modelServerUrl": "http://x"}, None) is None
    assert preload_tensorflow({"modelPath": "/models"}, "DataflowRunner") is None
    assert preload_tensorflow({"modelPath": "/models"}, "FlinkRunner") is None
    thread = preload_tensorflow({"modelPath": "/models"}, "FnApiRunner")
    assert thread is not None and thread.daemon
    thread.join(120)
    assert not thread.is_alive() and "tensorflow" in sys.modules


_WITHOUT_KERAS = """
import sys
import numpy as np
from pipelines.common.model_source import preload_tensorflow
from transforms.inference import model_handler

preload_tensorflow({"modelPath": sys.argv[1]}, "FnApiRunner").join(120)
assert "tensorflow" in sys.modules and "keras" not in sys.modules, "Keras was imported"
model = model_handler.LoadedModel.load(sys.argv[2])
scores, _ = model.score_matrix(np.zeros((16, len(model.info.features)), np.float32))
assert scores.shape == (16,) and "keras" not in sys.modules
assert model_handler._imported_keras_savers()  # the load's fallback: Keras' savers, now
assert "keras.src.optimizers" in sys.modules and not model_handler._imported_keras_savers()
print("ok")
"""


def test_the_preload_leaves_keras_out_and_a_model_still_loads_and_scores(tmp_path) -> None:
    """TensorFlow's eager Keras import was ~0.7 s of its ~3 s import, before a first prediction."""
    version_dir = write_model(str(tmp_path), 1)
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_KERAS, str(tmp_path), version_dir],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
