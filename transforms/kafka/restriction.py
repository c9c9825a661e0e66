"""Restriction, tracker and backlog bookkeeping for reading one Kafka partition as an SDF.

A partition's work is an offset range ``[start, stop)``; ``stop`` is :data:`UNBOUNDED_OFFSET` when
the reader follows the log forever. The tracker only splits at checkpoints (``fraction == 0``):
one partition is read by one consumer in offset order, and a parallel split would reorder it.

The partition watch of an unbounded read (a :class:`PartitionWatch` element) has a
:class:`WatchRestriction` instead: the partitions known so far and those found after launch with
their next offsets. Its tracker takes the whole new state as a claim and only checkpoints.

Runners learn the backlog from the partition's end offset (the broker's high watermark): the
reader records it in :data:`BACKLOG` after every poll, ``restriction_size`` and the tracker's
``current_progress`` read it (Beam's Python Kafka IO reports no backlog, so Dataflow never
autoscales it). Sizes are estimated bytes: records left × the mean record size seen so far.

Usage::

    provider = KafkaRestrictionProvider()
    tracker = provider.create_tracker(PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 0))
"""

from __future__ import annotations

import dataclasses
import threading

from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Timestamp

from transforms.kafka.partition_plan import UNBOUNDED_OFFSET, PartitionPlan, PartitionWatch

__all__ = [
    "UNBOUNDED_OFFSET",
    "BACKLOG",
    "PartitionBacklog",
    "PartitionOffsetRange",
    "KafkaOffsetTracker",
    "WatchRestriction",
    "WatchTracker",
    "WatchedPartition",
    "KafkaRestrictionProvider",
]


class PartitionBacklog:
    """Per-process latest end offset and mean record size of each partition this worker reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._end: dict[tuple[str, int], int] = {}
        self._bytes: dict[tuple[str, int], float] = {}

    def record(self, topic: str, partition: int, end_offset: int, mean_bytes: float) -> None:
        with self._lock:
            self._end[(topic, partition)] = end_offset
            if mean_bytes > 0:
                self._bytes[(topic, partition)] = mean_bytes

    def end_offset(self, topic: str, partition: int) -> int | None:
        with self._lock:
            return self._end.get((topic, partition))

    def mean_bytes(self, topic: str, partition: int) -> float:
        """Mean record size seen so far; 1.0 before anything was read (size = record count)."""
        with self._lock:
            return self._bytes.get((topic, partition), 1.0)


BACKLOG = PartitionBacklog()


class PartitionOffsetRange(OffsetRange):
    """An ``OffsetRange`` that knows its partition, so progress can look up the end offset."""

    def __init__(self, start: int, stop: int, topic: str, partition: int) -> None:
        super().__init__(start, stop)
        self.topic = topic
        self.partition = partition

    def __eq__(self, other) -> bool:
        return isinstance(other, PartitionOffsetRange) and (
            self.start,
            self.stop,
            self.topic,
            self.partition,
        ) == (other.start, other.stop, other.topic, other.partition)

    def __hash__(self) -> int:
        return hash((self.start, self.stop, self.topic, self.partition))

    def __repr__(self) -> str:
        stop = "unbounded" if self.stop == UNBOUNDED_OFFSET else self.stop
        return f"PartitionOffsetRange({self.topic}[{self.partition}] {self.start}..{stop})"

    def split_at(self, split_pos: int) -> tuple[PartitionOffsetRange, PartitionOffsetRange]:
        return (
            PartitionOffsetRange(self.start, split_pos, self.topic, self.partition),
            PartitionOffsetRange(split_pos, self.stop, self.topic, self.partition),
        )

    @property
    def is_bounded(self) -> bool:
        return self.stop != UNBOUNDED_OFFSET

    def backlog(self, next_offset: int, end_offset: int | None) -> int:
        """Records from ``next_offset`` that can be read now (bounded ranges: all up to stop)."""
        if end_offset is None:
            end_offset = self.stop if self.is_bounded else next_offset
        return max(0, min(self.stop, end_offset) - next_offset)


class KafkaOffsetTracker(OffsetRestrictionTracker):
    """Claims offsets in order; splits only to checkpoint; reports backlog from end offsets.

    ``try_claim(offset)`` may skip positions: claiming the last offset of a polled batch claims
    the whole batch (the offsets in between are the batch's own records or gaps in the log).
    """

    def __init__(self, offset_range: PartitionOffsetRange, backlog: PartitionBacklog) -> None:
        super().__init__(offset_range)
        self._backlog = backlog

    def try_split(self, fraction_of_remainder: float):
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def current_progress(self) -> RestrictionProgress:
        rng: PartitionOffsetRange = self.current_restriction()
        next_offset = rng.start if self._current_position is None else self._current_position + 1
        end = self._backlog.end_offset(rng.topic, rng.partition)
        return RestrictionProgress(
            completed=float(next_offset - rng.start),
            remaining=float(rng.backlog(next_offset, end)),
        )

    def is_bounded(self) -> bool:
        return self.current_restriction().is_bounded


@dataclasses.dataclass(frozen=True)
class WatchRestriction:
    """A partition watch's state: every partition known, the plans of those found after launch
    (``start_offset`` = the next offset to read), when the partitions were last listed and when
    a listing was last tried (epoch seconds)."""

    known: frozenset[tuple[str, int]]
    plans: tuple[PartitionPlan, ...] = ()
    listed_at: float = 0.0
    checked_at: float = 0.0
    is_bounded = False

    def found(self, plans: list[PartitionPlan], now: float) -> WatchRestriction:
        """The state after a listing at ``now`` that found ``plans`` (new partitions)."""
        known = self.known | {(plan.topic, plan.partition) for plan in plans}
        return WatchRestriction(known, self.plans + tuple(plans), now, now)

    def advanced(self, index: int, next_offset: int) -> WatchRestriction:
        """The state after reading ``plans[index]`` up to ``next_offset``."""
        plans = list(self.plans)
        plans[index] = dataclasses.replace(plans[index], start_offset=next_offset)
        return dataclasses.replace(self, plans=tuple(plans))


class WatchTracker(RestrictionTracker):
    """Claims are whole new states; the only split is the checkpoint (``fraction == 0``), which
    leaves an empty primary and the current state as the residual. Never done by itself."""

    def __init__(self, restriction: WatchRestriction, backlog: PartitionBacklog) -> None:
        self._restriction = restriction
        self._backlog = backlog
        self._checkpointed = False

    def current_restriction(self) -> WatchRestriction:
        return self._restriction

    def try_claim(self, state: WatchRestriction) -> bool:
        if self._checkpointed:
            return False
        self._restriction = state
        return True

    def try_split(self, fraction_of_remainder: float):
        if fraction_of_remainder != 0 or self._checkpointed:
            return None
        self._checkpointed = True
        residual = self._restriction
        self._restriction = dataclasses.replace(residual, plans=())
        return self._restriction, residual

    def check_done(self) -> None:
        if not self._checkpointed:
            raise ValueError("a partition watch never ends by itself: it must checkpoint")

    def current_progress(self) -> RestrictionProgress:
        return RestrictionProgress(
            completed=0.0, remaining=_watch_backlog(self._restriction, self._backlog, False)
        )

    def is_bounded(self) -> bool:
        return False


def _watch_backlog(restriction: WatchRestriction, backlog: PartitionBacklog, in_bytes: bool):
    """Records (estimated bytes with ``in_bytes``) left in the partitions a watch reads."""
    total = 0.0
    for plan in restriction.plans:
        end = backlog.end_offset(plan.topic, plan.partition)
        records = max(0, (plan.end_offset_at_launch if end is None else end) - plan.start_offset)
        total += records * (backlog.mean_bytes(plan.topic, plan.partition) if in_bytes else 1)
    return total


class KafkaRestrictionProvider(RestrictionProvider):
    """Restrictions for partition plans (elements with topic, partition, start and stop offsets)
    and for the partition watch."""

    def __init__(self, backlog: PartitionBacklog | None = None) -> None:
        self._backlog = backlog

    @property
    def backlog(self) -> PartitionBacklog:
        # The module singleton is looked up lazily so a pickled provider uses the worker's own.
        return self._backlog or BACKLOG

    def initial_restriction(self, element) -> PartitionOffsetRange | WatchRestriction:
        if isinstance(element, PartitionWatch):
            return WatchRestriction(element.known, (), element.listed_at, element.listed_at)
        return PartitionOffsetRange(
            element.start_offset, element.stop_offset, element.topic, element.partition
        )

    def create_tracker(self, restriction):
        if isinstance(restriction, WatchRestriction):
            return WatchTracker(restriction, self.backlog)
        return KafkaOffsetTracker(restriction, self.backlog)

    def restriction_size(self, element, restriction) -> float:
        if isinstance(restriction, WatchRestriction):
            return _watch_backlog(restriction, self.backlog, True)
        end = self.backlog.end_offset(restriction.topic, restriction.partition)
        if end is None:
            end = element.end_offset_at_launch
        records = restriction.backlog(restriction.start, end)
        return records * self.backlog.mean_bytes(restriction.topic, restriction.partition)

    def truncate(self, element, restriction):
        """On drain an unbounded partition (or a watch) stops at once; a bounded one finishes
        its range."""
        return restriction if restriction.is_bounded else None


class WatchedPartition:
    """One partition of a watch, seen by ``_read`` as its own restriction tracker and watermark.

    A claim moves the partition's offset in the watch's state. A deferral or an idle watermark
    only mark this call's work on the partition as over: the watch checkpoints once, at the end,
    and sets its own watermark.
    """

    def __init__(self, tracker, index: int, plan: PartitionPlan) -> None:
        self._tracker = tracker
        self._index = index
        self._plan = plan
        self._next_offset = plan.start_offset
        self.refused = False
        self.caught_up = False

    def current_restriction(self) -> PartitionOffsetRange:
        plans = self._tracker.current_restriction().plans
        stop = plans[self._index].stop_offset if self._index < len(plans) else self._next_offset
        return PartitionOffsetRange(self._next_offset, stop, self._plan.topic, self._plan.partition)

    def try_claim(self, offset: int) -> bool:
        state = self._tracker.current_restriction()
        if self._index >= len(state.plans) or not self._tracker.try_claim(
            state.advanced(self._index, offset + 1)
        ):
            self.refused = True
            return False
        self._next_offset = offset + 1
        return True

    def defer_remainder(self, deferred_time=None) -> None:
        pass

    def current_watermark(self) -> None:
        return None

    def advance_to(self, timestamp: Timestamp) -> None:
        self.caught_up = True
