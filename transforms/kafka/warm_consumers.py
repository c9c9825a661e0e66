"""Partition consumers started when a read is planned, so their first fetch overlaps other work.

Why: the local runner reads a read's partitions one after another, and each partition's consumer
was created when its turn came: its first fetch was a wait. On the local broker (noida-db, which
answers a consumer's first fetch with the whole partition whatever ``fetch.max.bytes`` says) that
was 0.2-0.3 s per partition, ~0.7 s of a 200k-event re-score that takes ~2.9 s. Started by the
planner, which runs in the same process on those runners, every partition fetches while the
ones before it are read.

Only for bounded reads on one-process runners (``ReadFromKafka`` decides): elsewhere the
planner's process need not be the reader's, and a stream restarted with a backlog (after a broker
outage) would hold every partition's backlog at once: a soak's scorer kept ~140 MiB more after
such a restart. The reader takes a consumer planned for exactly its partition and start
offset; anything else (a restart, a split) builds a new consumer as before. Unclaimed consumers
are closed when the reading DoFn is torn down, and at most :data:`MAX_WARM` wait at a time.
Only partitions with at most :data:`MAX_WARM_RECORDS` records to read are started ahead: the
local broker sends a started consumer its whole partition, which then waits in memory, and for a
long partition the first fetch is a small part of its read anyway. Nor those with fewer than the
consumer's ``queued.min.messages``: a consumer whose queue holds less keeps fetching at the log
end, which the local broker answers at once (no long poll), so three such consumers burned ~0.5
CPU-seconds while a 1,000-event re-score loaded its model.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = [
    "MAX_WARM",
    "MAX_WARM_RECORDS",
    "QUEUED_MIN_MESSAGES",
    "WARM",
    "LateErrorCallback",
    "WarmConsumers",
]

#: Consumers started ahead at most (each holds its partition's prefetched records).
MAX_WARM = 8
#: Partitions with more records to read than this are not started ahead.
MAX_WARM_RECORDS = 100_000
#: librdkafka's default ``queued.min.messages``.
QUEUED_MIN_MESSAGES = 100_000


class LateErrorCallback:
    """A consumer's ``error_cb`` whose receiver is known only later: errors wait until then."""

    def __init__(self) -> None:
        self._receiver: Callable[[Any], None] | None = None
        self._waiting: list[Any] = []
        self._lock = threading.Lock()  # librdkafka's threads report; the reader attaches

    def __call__(self, error: Any) -> None:
        with self._lock:
            receiver = self._receiver
            if receiver is None:
                self._waiting.append(error)
        if receiver is not None:
            receiver(error)

    def attach(self, receiver: Callable[[Any], None]) -> None:
        """Send the errors so far, and every later one, to ``receiver``."""
        with self._lock:
            self._receiver = receiver
            waiting, self._waiting = self._waiting, []
        for error in waiting:
            receiver(error)


class WarmConsumers:
    """Process-wide: planned consumers by ``(read id, topic, partition, start offset)``."""

    def __init__(self, limit: int = MAX_WARM) -> None:
        self._limit = limit
        self._waiting: collections.OrderedDict[Hashable, tuple[Any, LateErrorCallback]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def put(self, key: Hashable, consumer: Any, errors: LateErrorCallback) -> None:
        """Keep ``consumer`` for the reader of ``key``; the oldest is closed beyond the limit."""
        with self._lock:
            replaced = self._waiting.pop(key, None)
            self._waiting[key] = (consumer, errors)
            evicted = [replaced] if replaced is not None else []
            while len(self._waiting) > self._limit:
                evicted.append(self._waiting.popitem(last=False)[1])
        for old, _ in evicted:
            old.close()

    def take(self, key: Hashable) -> tuple[Any, LateErrorCallback] | None:
        """The consumer planned for ``key`` and its error callback, once; None if there is none."""
        with self._lock:
            return self._waiting.pop(key, None)

    def close_all(self, read_id: str) -> None:
        """Close the consumers still waiting for the reads of ``read_id`` (key[0])."""
        with self._lock:
            keys = [key for key in self._waiting if key[0] == read_id]
            closing = [self._waiting.pop(key)[0] for key in keys]
        for consumer in closing:
            consumer.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)


#: The process's planned consumers.
WARM = WarmConsumers()
