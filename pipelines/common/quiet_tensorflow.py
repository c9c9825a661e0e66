"""TensorFlow without its start-up noise: a machine with no GPU is not an error.

Importing TensorFlow on a CPU-only machine prints about nine lines to stderr from C++ before any
logging is configured — the oneDNN notice, "Could not find cuda drivers", CPU instruction notes,
and at the first device probe an ``E`` line "failed call to cuInit". ``TF_CPP_MIN_LOG_LEVEL``
does not reach most of them, and a newcomer reads them as a broken install. tf.Transform adds
"upgrade to the TFXIO format" advice on every analysis, which is about its internals, not ours.

:func:`install` (called by ``pipelines/__init__.py``, so every ``python -m pipelines.<name>``
has it) adds an import hook: TensorFlow's first import and its device probe run with stderr
captured, then every line that is not one of those known notices is written back, so a real
error still reaches the operator. Set ``KBML_TF_STARTUP_LOGS=1`` to see everything.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

__all__ = ["install", "is_startup_noise", "filtered_stderr"]

_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|cpu_feature_guard\.cc"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|failed call to cuInit"
    # TF 2.21's Python sets an attribute its own C++ MapDataset op does not know yet (Keras
    # fit's input pipeline); TensorFlow ignores it, but logs it as an E line on every fit.
    r"|NodeDef mentions attribute use_unbounded_threadpool"
)
_TFT_ADVICE = (
    "You are passing instance dicts and DatasetMetadata to TFT",
    "You are outputting instance dicts from `TransformDataset`",
)


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's CPU-only start-up notices."""
    return _NOISE.search(line) is not None


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there too) and write back all but the noise.

    What the block writes to stderr appears when it ends: wrap short TensorFlow calls only.
    ``KBML_TF_STARTUP_LOGS=1`` passes everything through at once.
    """
    if os.environ.get("KBML_TF_STARTUP_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not is_startup_noise(line)))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader, then TensorFlow's device probe, with stderr filtered."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices("GPU")  # the CUDA probe happens here, quietly

    def __getattr__(self, name: str) -> Any:  # resource readers etc. of the real loader
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first ``import tensorflow``, then steps aside."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _DropTftAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TFT_ADVICE)


def install() -> None:
    """Quiet TensorFlow's start-up from now on in this process (idempotent; before its import)."""
    if os.environ.get("KBML_TF_STARTUP_LOGS") == "1":
        return
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropTftAdvice) for f in absl_logger.filters):
        absl_logger.addFilter(_DropTftAdvice())
    if "tensorflow" in sys.modules or any(
        isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path
    ):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())
