"""Copy artifact directory trees between local disk and any Beam filesystem (``gs://`` …).

TensorFlow reads and writes SavedModels and tf.Transform artifacts through its own filesystem
layer, whose GCS client ignores ``STORAGE_EMULATOR_HOST``; Beam's ``FileSystems`` honours it. The
trainer therefore works on local copies and moves whole trees with Beam, so the same command runs
against Cloud Storage and the local emulator.

Usage::

    download_tree("gs://bucket/transform", "/tmp/work/transform")
    upload_tree("/tmp/work/export", "gs://bucket/models/3", last="model_info.json")
"""

from __future__ import annotations

import logging
import os

from apache_beam.io.filesystems import CompressionTypes, FileSystems

__all__ = ["is_local", "download_tree", "upload_tree"]

_LOGGER = logging.getLogger(__name__)


def is_local(path: str) -> bool:
    """True for plain paths and ``file://``; False for ``gs://`` and other remote schemes."""
    return FileSystems.get_scheme(path) in (None, "file")


def download_tree(remote: str, local: str) -> int:
    """Copy every file under ``remote`` into ``local`` (created); returns the number of files."""
    prefix = remote.rstrip("/") + "/"
    copied = 0
    for result in FileSystems.match([prefix + "**"]):  # "**" crosses "/"
        for metadata in result.metadata_list:
            relative = metadata.path[len(prefix) :]
            target = os.path.join(local, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with (
                FileSystems.open(
                    metadata.path, compression_type=CompressionTypes.UNCOMPRESSED
                ) as source,
                open(target, "wb") as sink,
            ):
                sink.write(source.read())
            copied += 1
    _LOGGER.info("Copied %d files from %s to %s", copied, remote, local)
    return copied


def upload_tree(
    local: str, destination: str, *, last: str | None = None, skip: tuple[str, ...] = ()
) -> int:
    """Copy the files under ``local`` to ``destination``; the file named ``last`` goes last.

    Writing a completion marker last lets readers that wait for it never see a partial tree.
    Top-level entries named in ``skip`` are left out. Returns the number of files.
    """
    files = []
    for root, _, names in os.walk(local):
        relative_root = os.path.relpath(root, local)
        if relative_root.split(os.sep)[0] in skip:
            continue
        files.extend(os.path.join(root, name) for name in names if name not in skip)
    files.sort(key=lambda path: os.path.basename(path) == last)
    for path in files:
        relative = os.path.relpath(path, local).split(os.sep)
        target = FileSystems.join(destination.rstrip("/"), *relative)
        with (
            open(path, "rb") as source,
            FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as sink,
        ):
            sink.write(source.read())
    _LOGGER.info("Copied %d files from %s to %s", len(files), local, destination)
    return len(files)
