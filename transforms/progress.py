"""Progress of this process's streams, readable while the pipeline runs: counters and offsets.

The Kafka reader records, once per polled batch, how many records it consumed and where it is in
each partition (next offset and end offset, so the lag); its commit finalizer records the
committed offsets. Sinks add what they wrote and dead letters. A watchdog
(:mod:`pipelines.common.watchdog`) reads :func:`snapshot` from another thread to log progress and
notice a stall.

Why not Beam metrics: the local runners only hand them out when the pipeline ends, and a stalled
pipeline never ends. This registry is per process: on Dataflow (or with the local runner's
``multi_processing`` mode) each worker process has its own, holding only what that process read
and wrote. So every counter added here is also a Beam counter (namespace
:data:`METRICS_NAMESPACE`, same name) and each partition's lag a Beam gauge (``lag.<topic>.<n>``):
the job-wide view on Dataflow. Locally, :mod:`pipelines.common.metrics_server` serves the
registry to Prometheus while the pipeline runs.

Cheap on the hot path: each call takes one lock, and callers call once per polled batch or
written list, never per record.

Usage::

    from transforms import progress

    progress.add(progress.WRITTEN, len(rows))
    progress.record_position("events", 0, next_offset=1000, end_offset=5000)
    progress.snapshot().total_lag  # 4000
"""

from __future__ import annotations

import dataclasses
import threading
import time
import types
from collections.abc import Callable, Mapping

from apache_beam.metrics import Metrics

__all__ = [
    "CONSUMED",
    "WRITTEN",
    "DEAD_LETTERS",
    "PREDICTIONS",
    "ALERTS",
    "METRICS_NAMESPACE",
    "PartitionProgress",
    "ProgressSnapshot",
    "ProgressRegistry",
    "REGISTRY",
    "add",
    "record_position",
    "record_commit",
    "snapshot",
    "reset",
]

#: Records the Kafka reader handed downstream.
CONSUMED = "consumed"
#: Records (or outputs) a sink wrote durably.
WRITTEN = "written"
#: Records routed to a dead-letter output.
DEAD_LETTERS = "dead_letters"
#: Events the model scored.
PREDICTIONS = "predictions"
#: Scored events flagged as anomalies (also counted in :data:`PREDICTIONS`).
ALERTS = "alerts"

#: Namespace of the Beam metrics that mirror the registry.
METRICS_NAMESPACE = "kafka_beam_ml.progress"


@dataclasses.dataclass(frozen=True)
class PartitionProgress:
    """Where this process is in one topic-partition.

    ``position`` is the next offset to read; ``end`` the offset the read can currently reach
    (the high watermark, or the stop of a bounded read; ``None`` while unknown); ``committed``
    the last offset this process committed for the consumer group (the next one to read after a
    restart). The ``*_at`` fields are times of the registry's clock (monotonic seconds) at which
    the value last changed; ``None`` when it was never set.
    """

    topic: str
    partition: int
    position: int | None
    end: int | None
    committed: int | None
    position_changed_at: float | None
    committed_changed_at: float | None

    @property
    def lag(self) -> int:
        """Records between the position and the end (0 when either is unknown)."""
        if self.position is None or self.end is None:
            return 0
        return max(0, self.end - self.position)

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclasses.dataclass(frozen=True)
class ProgressSnapshot:
    """Counters and partitions at ``taken_at`` (the registry's clock).

    ``last_progress_at`` is the latest time any counter grew, a position moved or a commit
    advanced (``None`` if nothing ever did). A growing end offset is not progress: it is the
    backlog arriving.
    """

    taken_at: float
    counters: Mapping[str, int]
    counters_changed_at: Mapping[str, float]
    partitions: tuple[PartitionProgress, ...]
    last_progress_at: float | None

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)


class _Partition:
    __slots__ = ("position", "end", "committed", "position_at", "committed_at")

    def __init__(self) -> None:
        self.position: int | None = None
        self.end: int | None = None
        self.committed: int | None = None
        self.position_at: float | None = None
        self.committed_at: float | None = None


class ProgressRegistry:
    """Thread-safe counters and per-partition offsets; one lock acquisition per call.

    Args:
        clock: monotonic seconds for the change times (tests pass a fake clock).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self._counters_at: dict[str, float] = {}
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._last_progress_at: float | None = None

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (e.g. :data:`WRITTEN`); ``n <= 0`` changes nothing."""
        if n <= 0:
            return
        now = self.clock()
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n
            self._counters_at[name] = now
            self._last_progress_at = now

    def record_position(
        self, topic: str, partition: int, next_offset: int, end_offset: int | None
    ) -> None:
        """The reader's next offset in a partition and the end it can reach (lag = end − next).

        A negative or ``None`` ``end_offset`` means "unknown now" and keeps the last known one.
        """
        now = self.clock()
        with self._lock:
            state = self._partitions.get((topic, partition))
            if state is None:
                state = self._partitions[(topic, partition)] = _Partition()
            if state.position != next_offset:
                state.position = next_offset
                state.position_at = now
                self._last_progress_at = now
            if end_offset is not None and end_offset >= 0:
                state.end = end_offset

    def record_commit(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` (the next to read) was committed for the partition's consumer group."""
        now = self.clock()
        with self._lock:
            state = self._partitions.get((topic, partition))
            if state is None:
                state = self._partitions[(topic, partition)] = _Partition()
            if state.committed != offset:
                state.committed = offset
                state.committed_at = now
                self._last_progress_at = now

    def snapshot(self) -> ProgressSnapshot:
        """A consistent copy of everything recorded so far."""
        with self._lock:
            partitions = tuple(
                PartitionProgress(
                    topic,
                    partition,
                    s.position,
                    s.end,
                    s.committed,
                    s.position_at,
                    s.committed_at,
                )
                for (topic, partition), s in sorted(self._partitions.items())
            )
            counters = dict(self._counters)
            counters_at = dict(self._counters_at)
            last = self._last_progress_at
        return ProgressSnapshot(
            taken_at=self.clock(),
            counters=types.MappingProxyType(counters),
            counters_changed_at=types.MappingProxyType(counters_at),
            partitions=partitions,
            last_progress_at=last,
        )

    def reset(self) -> None:
        """Forget everything (tests; a process that runs a second pipeline)."""
        with self._lock:
            self._counters.clear()
            self._counters_at.clear()
            self._partitions.clear()
            self._last_progress_at = None


#: The process's registry, fed by the reader and the sinks.
REGISTRY = ProgressRegistry()

# Beam metric handles by name; they resolve the running step's container when used (no-ops
# outside a step), so one handle serves every step and thread.
_BEAM_COUNTERS: dict[str, object] = {}
_BEAM_LAG_GAUGES: dict[tuple[str, int], list] = {}  # [gauge, monotonic time of its last set]
_LAG_GAUGE_INTERVAL_S = 1.0


def add(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name`` of the process's registry (:meth:`ProgressRegistry.add`)
    and to the Beam counter of the same name."""
    REGISTRY.add(name, n)
    if n > 0:
        counter = _BEAM_COUNTERS.get(name)
        if counter is None:
            counter = _BEAM_COUNTERS[name] = Metrics.counter(METRICS_NAMESPACE, name)
        counter.inc(n)


def record_position(topic: str, partition: int, next_offset: int, end_offset: int | None) -> None:
    """See :meth:`ProgressRegistry.record_position`; a known lag also sets the Beam gauge
    ``lag.<topic>.<partition>``, at most every :data:`_LAG_GAUGE_INTERVAL_S` unless it is 0
    (setting a Beam gauge costs ~11 µs, three times the registry's own bookkeeping)."""
    REGISTRY.record_position(topic, partition, next_offset, end_offset)
    if end_offset is None or end_offset < 0:
        return
    lag = max(0, end_offset - next_offset)
    now = time.monotonic()
    entry = _BEAM_LAG_GAUGES.get((topic, partition))
    if entry is None:
        gauge = Metrics.gauge(METRICS_NAMESPACE, f"lag.{topic}.{partition}")
        entry = _BEAM_LAG_GAUGES[(topic, partition)] = [gauge, now]
    elif lag and now - entry[1] < _LAG_GAUGE_INTERVAL_S:
        return
    entry[0].set(lag)
    entry[1] = now


def record_commit(topic: str, partition: int, offset: int) -> None:
    """See :meth:`ProgressRegistry.record_commit`."""
    REGISTRY.record_commit(topic, partition, offset)


def snapshot() -> ProgressSnapshot:
    """The process's registry, now."""
    return REGISTRY.snapshot()


def reset() -> None:
    """Empty the process's registry."""
    REGISTRY.reset()
