"""Stopping a pipeline a test started in its own process group (``start_new_session=True``)."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["stop_process_group"]


def stop_process_group(process: subprocess.Popen, *, grace_s: float = 20.0) -> None:
    """SIGTERM the process's group, SIGKILL it if still running after ``grace_s``; reap it."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
