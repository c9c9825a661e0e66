"""TensorFlow's CPU-only start-up notices are filtered; anything else on stderr still shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.common import quiet_tensorflow

REPO = Path(__file__).resolve().parents[3]


def test_filter_drops_known_notices_and_keeps_other_lines(capfd):
    with quiet_tensorflow.filtered_stderr():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see\n")
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"E0000 something.cc:1] a real problem\n")
    assert capfd.readouterr().err == "E0000 something.cc:1] a real problem\n"


def _import_tensorflow_stderr(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stderr


def test_pipelines_import_tensorflow_without_startup_noise():
    code = "import pipelines, tensorflow as tf; print(tf.constant(1.0).numpy())"
    stderr = _import_tensorflow_stderr(code)
    assert not [line for line in stderr.splitlines() if quiet_tensorflow.is_startup_noise(line)]
    # The same import without the hook shows the notices: the test would notice a TF upgrade
    # that changes their wording.
    loud = _import_tensorflow_stderr(code, KBML_TF_STARTUP_LOGS="1")
    assert [line for line in loud.splitlines() if quiet_tensorflow.is_startup_noise(line)]
