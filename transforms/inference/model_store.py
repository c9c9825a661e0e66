"""The versioned model directory the trainer writes and the scorer reads.

Layout (TF-Serving style, the trainer ↔ scorer contract)::

    modelPath/
      1/  saved_model.pb  variables/  model_info.json
      2/  ...

A version is an integer directory name. It counts as *complete* once both ``saved_model.pb`` and
``model_info.json`` exist, so a scorer polling the directory never picks up a half-written export
(the trainer writes ``model_info.json`` last). Paths may be local or ``gs://`` — listing goes
through Beam's ``FileSystems``.

Beam's ``WatchFilePattern`` side input is the stock way to hot-reload a model, but on the local
FnApiRunner in streaming mode side inputs are computed before the main input is processed, so the
pipeline fails or never sees a new file. :class:`VersionPoller` is the runner-independent
alternative: the model handler asks it, between batches, whether a newer version exists.

Usage::

    info = read_model_info(latest_version_dir("/models/fraud"))
    poller = VersionPoller("/models/fraud", poll_seconds=10)
    newer = poller.newer_than(current_version)   # None or a ModelVersion
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import time
from collections.abc import Callable
from typing import Any

from apache_beam.io.filesystems import FileSystems

__all__ = [
    "ModelInfo",
    "ModelVersion",
    "ModelStoreError",
    "VersionPoller",
    "list_versions",
    "latest_version",
    "read_model_info",
    "version_of",
    "MODEL_INFO_FILE",
    "SAVED_MODEL_FILE",
]

_LOGGER = logging.getLogger(__name__)

MODEL_INFO_FILE = "model_info.json"
SAVED_MODEL_FILE = "saved_model.pb"


class ModelStoreError(RuntimeError):
    """No usable model under the configured path, or a malformed ``model_info.json``."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """``model_info.json``: what the serving signature expects and how to read its output."""

    version: int
    features: tuple[str, ...]
    threshold: float
    label: str | None = None
    id_field: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Validate and convert the parsed JSON; raises :class:`ModelStoreError` naming the key."""
        try:
            features = tuple(str(name) for name in data["features"])
            info = cls(
                version=int(data["version"]),
                features=features,
                threshold=float(data["threshold"]),
                label=data.get("label"),
                id_field=data.get("id_field"),
                metrics=dict(data.get("metrics") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelStoreError(f"malformed {MODEL_INFO_FILE}: {err!r}") from err
        if not info.features:
            raise ModelStoreError(f"{MODEL_INFO_FILE} lists no features")
        return info


@dataclasses.dataclass(frozen=True, order=True)
class ModelVersion:
    """One complete version directory; orders by version number."""

    version: int
    path: str


def version_of(path: str) -> int | None:
    """The version number of a version directory path, or None if its name is not an integer."""
    name = posixpath.basename(path.rstrip("/"))
    return int(name) if name.isdigit() else None


def _versions_with(root: str, file_name: str) -> dict[int, str]:
    pattern = posixpath.join(root.rstrip("/"), "*", file_name)
    found: dict[int, str] = {}
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            directory = posixpath.dirname(metadata.path)
            version = version_of(directory)
            if version is not None:
                found[version] = directory
    return found


def list_versions(root: str) -> list[ModelVersion]:
    """Complete versions under ``root``, oldest first (empty when there are none)."""
    with_info = _versions_with(root, MODEL_INFO_FILE)
    with_graph = _versions_with(root, SAVED_MODEL_FILE)
    return sorted(ModelVersion(v, with_info[v]) for v in with_info.keys() & with_graph.keys())


def latest_version(root: str) -> ModelVersion:
    """The newest complete version under ``root``; raises :class:`ModelStoreError` if none."""
    versions = list_versions(root)
    if not versions:
        raise ModelStoreError(
            f"no complete model version under {root!r}: expected <int>/{SAVED_MODEL_FILE} "
            f"and <int>/{MODEL_INFO_FILE}"
        )
    return versions[-1]


def read_model_info(version_dir: str) -> ModelInfo:
    """Parse ``version_dir/model_info.json``; the directory name wins over a stale version key."""
    path = posixpath.join(version_dir.rstrip("/"), MODEL_INFO_FILE)
    try:
        with FileSystems.open(path) as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError) as err:
        raise ModelStoreError(f"cannot read {path}: {err}") from err
    info = ModelInfo.from_dict(data)
    directory_version = version_of(version_dir)
    if directory_version is not None and directory_version != info.version:
        _LOGGER.warning(
            "%s says version %d but lives in directory %d; using the directory name",
            path,
            info.version,
            directory_version,
        )
        info = dataclasses.replace(info, version=directory_version)
    return info


class VersionPoller:
    """Rate-limited check for a newer complete version under a model root.

    ``newer_than`` lists the directory at most once per ``poll_seconds`` (listing ``gs://`` is a
    network call; the scorer asks before every batch). Listing errors are logged and retried at the
    next poll: a flaky bucket must not stop scoring with the model already loaded.
    """

    def __init__(
        self, root: str, poll_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self._root = root
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._next_poll = clock() + poll_seconds

    def newer_than(self, version: int) -> ModelVersion | None:
        """The newest complete version above ``version`` if a poll is due and finds one."""
        now = self._clock()
        if now < self._next_poll:
            return None
        self._next_poll = now + self._poll_seconds
        try:
            versions = list_versions(self._root)
        except OSError as err:
            _LOGGER.warning("listing model versions under %s failed: %s", self._root, err)
            return None
        if versions and versions[-1].version > version:
            return versions[-1]
        return None
