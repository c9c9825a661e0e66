"""preload_tensorflow: only where this process will load the embedded model."""

from __future__ import annotations

import sys

from pipelines.common.model_source import preload_tensorflow


def test_tensorflow_is_preloaded_only_for_an_embedded_model_on_an_in_process_runner() -> None:
    assert preload_tensorflow({"modelPath": None, "modelServerUrl": "http://x"}, None) is None
    assert preload_tensorflow({"modelPath": "/models"}, "DataflowRunner") is None
    assert preload_tensorflow({"modelPath": "/models"}, "FlinkRunner") is None
    thread = preload_tensorflow({"modelPath": "/models"}, "FnApiRunner")
    assert thread is not None and thread.daemon
    thread.join(120)
    assert not thread.is_alive() and "tensorflow" in sys.modules
