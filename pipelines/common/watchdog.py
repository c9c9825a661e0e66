"""Stall watchdog: a progress line every few seconds, and a non-zero exit when a stream is stuck.

A daemon thread reads the process's progress registry (:mod:`transforms.progress`, fed by the
Kafka reader and the sinks). Every ``progress_seconds`` it logs one INFO line on the
``kafka_beam_ml.progress`` logger: counters, total lag, and per partition its next offset, end
offset, lag and last committed offset. When there is backlog (total lag > 0) and nothing moved
(no record consumed, written or dead-lettered, no position or commit change) for
``stall_timeout_seconds``, it logs an ERROR naming the lagging partitions, their positions and
how long nothing moved, and calls ``on_stall``. By default that exits the process with
:data:`EXIT_STALLED` so a supervisor (systemd, Kubernetes, a shell loop) restarts the pipeline,
which resumes from its committed offsets (at-least-once).

Why a hard exit (``os._exit``): the main thread is blocked inside the runner (often in the very
step that hangs), so neither an exception nor ``sys.exit`` from this thread would reach it, and
the runner's non-daemon threads would keep the process alive. Logging handlers are flushed and
every thread's stack is dumped to stderr first: the dump shows where the pipeline is stuck.

The registry is per process: this watches pipelines whose workers run in this process (the local
FnApiRunner/DirectRunner in their default in-memory mode). Where the workers run elsewhere
(Dataflow, ``multi_processing``) this process reads nothing, so the lag stays 0 and it never
fires; those runners' own monitoring applies.

Usage (in a pipeline's ``run()``)::

    values = validate(opts, OPTIONS)
    with watchdog_from_options(values) or contextlib.nullcontext():
        with beam.Pipeline(options=opts) as p:
            build_pipeline(p, opts)
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pipelines.common.options import OptionError
from transforms import progress
from transforms.progress import PartitionProgress, ProgressRegistry, ProgressSnapshot

__all__ = ["EXIT_STALLED", "Watchdog", "exit_stalled", "watchdog_from_options"]

_LOGGER = logging.getLogger(__name__)
#: Progress lines and stall reports; filter or route this logger to keep them apart.
PROGRESS_LOGGER = logging.getLogger("kafka_beam_ml.progress")

#: Exit status of a pipeline stopped by the watchdog (1 and 2 are Python's errors and usage).
EXIT_STALLED = 3

#: Counters always shown, in this order; others follow by name.
_STANDARD_COUNTERS = (progress.CONSUMED, progress.WRITTEN, progress.DEAD_LETTERS)
#: Partitions listed in one line at most (the most lagging first); the rest are counted.
_MAX_LISTED = 20


def exit_stalled(snapshot: ProgressSnapshot) -> NoReturn:
    """Default ``on_stall``: flush the logs, dump each thread's stack, exit with EXIT_STALLED."""
    del snapshot  # already logged
    PROGRESS_LOGGER.error(
        "Exiting with status %d so that a supervisor restarts the pipeline (it resumes from its "
        "committed offsets); the threads' stacks follow on stderr.",
        EXIT_STALLED,
    )
    # A broken handler or a stderr without a file descriptor must not keep the process alive.
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):  # placeholders have none
            with contextlib.suppress(Exception):
                handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(EXIT_STALLED)


def _partition_text(p: PartitionProgress) -> str:
    position = "?" if p.position is None else p.position
    end = "?" if p.end is None else p.end
    committed = "none" if p.committed is None else p.committed
    return f"{p.name} next={position} end={end} lag={p.lag} committed={committed}"


def _partitions_text(partitions: list[PartitionProgress]) -> str:
    if not partitions:
        return "none yet"
    ordered = sorted(partitions, key=lambda p: -p.lag)  # stable: by name within equal lag
    shown = "; ".join(_partition_text(p) for p in ordered[:_MAX_LISTED])
    if len(ordered) > _MAX_LISTED:
        shown += f"; … {len(ordered) - _MAX_LISTED} more"
    return shown


class Watchdog:
    """Logs progress every ``progress_seconds`` and calls ``on_stall`` when a backlog stops moving.

    Args:
        progress_seconds: interval of the progress line; 0 disables it.
        stall_timeout_seconds: how long nothing may move while there is lag; 0 disables the
            stall check.
        registry: the progress registry to watch (default: the process's).
        clock: monotonic seconds; default the registry's clock (they must agree, as the
            snapshot's change times come from the registry).
        on_stall: called with the snapshot once a stall is logged; default
            :func:`exit_stalled`. If it returns, it is called again only after the next
            progress and a new stall.
        check_seconds: how often the thread looks (the stall is noticed within this much).

    Returns:
        The watchdog, not started: ``start()``/``stop()`` or use it as a context manager.
        Tests call :meth:`tick` with a fake clock instead.
    """

    def __init__(
        self,
        *,
        progress_seconds: float = 60,
        stall_timeout_seconds: float = 300,
        registry: ProgressRegistry | None = None,
        clock: Callable[[], float] | None = None,
        on_stall: Callable[[ProgressSnapshot], Any] | None = None,
        check_seconds: float = 1.0,
    ) -> None:
        if progress_seconds < 0 or stall_timeout_seconds < 0 or check_seconds <= 0:
            raise ValueError(
                f"progress_seconds={progress_seconds} and stall_timeout_seconds="
                f"{stall_timeout_seconds} must be >= 0, check_seconds={check_seconds} > 0"
            )
        self.progress_seconds = progress_seconds
        self.stall_timeout_seconds = stall_timeout_seconds
        self._registry = registry if registry is not None else progress.REGISTRY
        self._clock = clock if clock is not None else self._registry.clock
        self._on_stall = on_stall if on_stall is not None else exit_stalled
        self._check_seconds = check_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        self._next_line_at: float | None = None
        self._last_counters: Mapping[str, int] = {}
        self._stalled_since: float | None = None  # the progress time a stall was reported for

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Watchdog:
        """Start the daemon thread (idempotent); returns ``self``."""
        if self._thread is not None:
            return self
        self._stopping.clear()
        self._begin()
        self._thread = threading.Thread(
            target=self._run, name="kafka-beam-ml-watchdog", daemon=True
        )
        self._thread.start()
        _LOGGER.info(
            "Watchdog: progress every %ss, stall timeout %ss (0 = off)",
            self.progress_seconds,
            self.stall_timeout_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it (a pipeline that ended is not a stall)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _begin(self) -> None:
        now = self._clock()
        self._started_at = now
        self._next_line_at = now + self.progress_seconds
        self._last_counters = dict(self._registry.snapshot().counters)

    def _run(self) -> None:
        while not self._stopping.wait(self._check_seconds):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the watchdog must outlive a bad log handler
                _LOGGER.exception("Watchdog check failed; it keeps watching")

    # ------------------------------------------------------------------ checks

    def tick(self) -> None:
        """One look: the progress line when due, then the stall check."""
        if self._started_at is None:
            self._begin()
        snapshot = self._registry.snapshot()
        now = self._clock()
        if self.progress_seconds and now >= self._next_line_at:
            self._log_progress(snapshot, now)
            self._next_line_at = now + self.progress_seconds
        if self.stall_timeout_seconds:
            self._check_stall(snapshot, now)

    def _idle_since(self, snapshot: ProgressSnapshot) -> float:
        """When something last moved; the watchdog's start if nothing did since."""
        last = snapshot.last_progress_at
        return self._started_at if last is None else max(last, self._started_at)

    def _log_progress(self, snapshot: ProgressSnapshot, now: float) -> None:
        previous, self._last_counters = self._last_counters, dict(snapshot.counters)
        if not PROGRESS_LOGGER.isEnabledFor(logging.INFO):
            return
        names = [*_STANDARD_COUNTERS, *sorted(set(snapshot.counters) - set(_STANDARD_COUNTERS))]
        counts = [(name, snapshot.counter(name)) for name in names]
        counters = " ".join(f"{n}={c}(+{c - previous.get(n, 0)})" for n, c in counts)
        PROGRESS_LOGGER.info(
            "progress: %s lag=%d no_progress_for=%.0fs partitions: %s",
            counters,
            snapshot.total_lag,
            now - self._idle_since(snapshot),
            _partitions_text(list(snapshot.partitions)),
        )

    def _check_stall(self, snapshot: ProgressSnapshot, now: float) -> None:
        lag = snapshot.total_lag
        since = self._idle_since(snapshot)
        if lag <= 0 or now - since < self.stall_timeout_seconds or self._stalled_since == since:
            return
        self._stalled_since = since
        lagging = [p for p in snapshot.partitions if p.lag > 0]
        unmoved = "; ".join(
            f"{_partition_text(p)} (position unchanged for "
            f"{now - max(p.position_changed_at or since, self._started_at):.0f}s)"
            for p in sorted(lagging, key=lambda p: -p.lag)[:_MAX_LISTED]
        )
        PROGRESS_LOGGER.error(
            "stalled: nothing moved for %.0fs (--stallTimeoutSeconds=%s) with a backlog of %d "
            "records in %d partition(s): %s. Totals: %s.",
            now - since,
            _seconds_text(self.stall_timeout_seconds),
            lag,
            len(lagging),
            unmoved,
            ", ".join(f"{name}={snapshot.counter(name)}" for name in _STANDARD_COUNTERS),
        )
        self._on_stall(snapshot)


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _non_negative(values: Mapping[str, Any], name: str, default: int) -> int:
    value = values.get(name)
    if value is None:
        return default
    if value < 0:
        raise OptionError(f"--{name} must be >= 0 (0 turns it off), got {value}")
    return value


def watchdog_from_options(
    values: Mapping[str, Any],
    *,
    registry: ProgressRegistry | None = None,
    on_stall: Callable[[ProgressSnapshot], Any] | None = None,
) -> Watchdog | None:
    """The watchdog ``--progressSeconds`` and ``--stallTimeoutSeconds`` ask for (not started).

    Args:
        values: validated option values (``validate(opts, OPTIONS)``); missing ones take the
            defaults 60 and 300.
        registry: see :class:`Watchdog` (tests).
        on_stall: see :class:`Watchdog` (tests).

    Returns:
        A :class:`Watchdog` to use as a context manager around the pipeline's run, or ``None``
        when both are 0. Raises :class:`OptionError` for a negative value.
    """
    progress_seconds = _non_negative(values, "progressSeconds", 60)
    stall_timeout = _non_negative(values, "stallTimeoutSeconds", 300)
    if not progress_seconds and not stall_timeout:
        return None
    return Watchdog(
        progress_seconds=progress_seconds,
        stall_timeout_seconds=stall_timeout,
        registry=registry,
        on_stall=on_stall,
    )
