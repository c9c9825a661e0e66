"""The commits a process made, kept to check that a restarted broker still holds what they passed.

A broker that persists by snapshot (the local noida-db), or a cluster after an unclean leader
election, can come back with the group's committed offsets but without the last records below
them. New records then take the lost offsets, below the committed one, where a read restarted from
the group's offsets never looks: a fresh-clone CI run lost 35 of 15,149 events this way. A real
cluster's consumers catch part of this with leader epochs (KIP-320); a snapshot restored on one
node keeps its epoch, so the reader checks the records themselves.

Each successful commit remembers the last record read below it: its offset, timestamp and a
digest of key and value (:class:`CommitPoint`), and when it was made. When a read restarts from
the group's offsets in a process that committed before (the local supervisor restarts a failed
run in this process; Dataflow and Flink retry bundles on the same worker),
:meth:`CommitTrail.verified_start` looks those records up again. A lost suffix is the only
damage considered: every remembered record below the loss still matches and none at or above it,
so a binary search finds the last commit whose records the log still holds, and the read starts
there. Duplicates, never gaps.

The outputs are another matter: the same snapshot can lose predictions of inputs it kept, and
keep a committed offset past them (seen in a CI run: the broker held the inputs 1026..1028 and
the group's offset 1044, not their predictions). The reader cannot look outputs up, so after a
broker outage (:meth:`CommitTrail.outage`) the restarted read also goes back to the last commit
made ``replay_s`` before the outage was noticed: whatever was written since may be gone.

The trail is bounded: the newest ``recent`` points are all kept, older ones are thinned out with
their age, ``per_level`` points per doubling of the number of commits made since, so it reaches
back over the process's whole life in a few hundred points, and a restart re-reads at most
~1/``per_level`` of what was committed since the loss more than it must. (Thinning the older
points by halves, as it once did, kept only ~4x ``recent`` commits: at 20 commits a second, a
broker that lost a minute made the read start over from the process's first offset.)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["TRAIL", "CommitPoint", "CommitTrail", "RecordLookup", "fingerprint"]

_LOGGER = logging.getLogger(__name__)

#: ``(bootstrap servers, group, topic, partition)``
TrailKey = tuple[str, str, str, int]

#: ``record offset -> (timestamp ms, digest)``; ``None`` when the log has no record there;
#: ``GONE`` when retention removed it (older than any loss, so it counts as held).
RecordLookup = Callable[[int], "tuple[int, int] | None | str"]
GONE = "gone"


def fingerprint(message) -> tuple[int, int, int]:
    """``(offset, timestamp ms, digest)`` of a confluent-kafka message (hashes are per process,
    and so is the trail)."""
    return message.offset(), message.timestamp()[1], hash((message.key(), message.value()))


@dataclasses.dataclass(frozen=True)
class CommitPoint:
    """A committed offset, the last record read below it and when (epoch seconds) it was made."""

    committed: int
    record_offset: int
    timestamp_ms: int
    digest: int
    at: float
    serial: int  # the how-manieth commit of its partition: which points thinning keeps

    def held_by(self, lookup: RecordLookup) -> bool:
        found = lookup(self.record_offset)
        return found == GONE or found == (self.timestamp_ms, self.digest)


class CommitTrail:
    """Per partition and group: where this process started reading, and its commit points."""

    def __init__(self, recent: int = 256, per_level: int = 32) -> None:
        self._recent = recent
        self._per_level = per_level
        self._serials: dict[TrailKey, int] = {}
        self._thin_at: dict[TrailKey, int] = {}  # thin again past this many points
        self._points: dict[TrailKey, list[CommitPoint]] = {}
        self._origins: dict[TrailKey, int] = {}
        self._outages: dict[TrailKey, float] = {}  # outages not yet acted on, per partition
        self._lock = threading.Lock()  # finalizers and planning may run on different threads

    def started(self, key: TrailKey, offset: int) -> None:
        """The first read of ``key`` in this process starts at ``offset`` (later ones are not
        origins: they restart from the group's offsets)."""
        with self._lock:
            self._origins.setdefault(key, offset)

    def committed(
        self,
        key: TrailKey,
        committed: int,
        record: tuple[int, int, int],
        at: float | None = None,
    ) -> None:
        """``committed`` was committed, past ``record`` (a :func:`fingerprint`), ``at`` now."""
        with self._lock:
            serial = self._serials[key] = self._serials.get(key, 0) + 1
            point = CommitPoint(committed, *record, time.time() if at is None else at, serial)
            points = self._points.setdefault(key, [])
            while points and points[-1].committed >= committed:
                points.pop()  # after a rewind, the points past it describe records now re-read
            points.append(point)
            if len(points) > self._thin_at.get(key, 2 * self._recent):
                points[:] = self._thinned(points[: -self._recent]) + points[-self._recent :]
                self._thin_at[key] = len(points) + self._recent

    def _thinned(self, old: list[CommitPoint]) -> list[CommitPoint]:
        """The oldest point, and those whose serial is a multiple of 2**k when k doublings of
        ``per_level`` commits were made since: as a point ages, its level only rises, so a
        point dropped once would be dropped again (the kept points do not drift)."""
        newest = old[-1].serial
        kept = [old[0]]
        for point in old[1:]:
            level = ((newest - point.serial) // self._per_level).bit_length()
            if point.serial % (1 << level) == 0:
                kept.append(point)
        return kept

    def rewound(self, key: TrailKey, committed: int) -> None:
        """The group's offset was moved back to ``committed``: points past it no longer hold."""
        with self._lock:
            points = self._points.get(key, [])
            while points and points[-1].committed > committed:
                points.pop()

    def outage(self, servers: str, group: str, began_at: float) -> None:
        """The brokers at ``servers`` were unreachable from ``began_at`` (epoch seconds): the next
        restart of each of ``group``'s partitions goes back before it (``replay_s``)."""
        with self._lock:
            for key in self._points:
                if key[:2] == (servers, group):
                    self._outages[key] = min(began_at, self._outages.get(key, began_at))

    def knows(self, key: TrailKey) -> bool:
        with self._lock:
            return bool(self._points.get(key))

    def verified_start(
        self, key: TrailKey, committed: int, lookup: RecordLookup, replay_s: float = 0.0
    ) -> int:
        """Where a read restarted from ``committed`` must start so that nothing is skipped.

        ``committed`` itself, unless the log lost records this process had committed past:
        then the last commit whose records the log still holds (or the origin, when it holds
        none of them). Lookups are a binary search over the points: a few per partition. After
        an outage, also no later than the last commit made ``replay_s`` before it (once).
        """
        with self._lock:
            points = list(self._points.get(key, ()))
            origin = self._origins.get(key)
            outage_at = self._outages.pop(key, None)
        if not points:
            return committed
        start = self._held_start(key, committed, points, origin, lookup)
        if outage_at is None or replay_s <= 0:
            return start
        before = [point.committed for point in points if point.at <= outage_at - replay_s]
        replay_from = before[-1] if before else origin
        if replay_from is None or replay_from >= start:
            return start
        _LOGGER.warning(
            "Kafka %s[%d]: after a broker outage, reading again from offset %d (%s %g s before "
            "the outage was noticed): a restarted broker may have lost outputs it had "
            "acknowledged while keeping the group's offset %d",
            key[2],
            key[3],
            replay_from,
            "the last commit made" if before else "where this process started, less than",
            replay_s,
            committed,
        )
        return replay_from

    @staticmethod
    def _held_start(key, committed, points, origin, lookup: RecordLookup) -> int:
        """``committed``, or lower where the log lost records this process had committed past."""
        low, high = 0, len(points)  # the first point whose record the log no longer holds
        while low < high:
            middle = (low + high) // 2
            if points[middle].held_by(lookup):
                low = middle + 1
            else:
                high = middle
        if low == len(points):
            return committed  # every record this process committed past is still there
        held_below = points[low - 1].committed if low else origin
        if held_below is None or committed <= held_below:
            return committed
        topic, partition = key[2], key[3]
        lost = points[low]
        _LOGGER.warning(
            "Kafka %s[%d]: the broker no longer holds record %d (read before the commit of "
            "offset %d): it lost acknowledged records below the group's offset %d (an unclean "
            "restart). Reading again from offset %d, %s",
            topic,
            partition,
            lost.record_offset,
            lost.committed,
            committed,
            held_below,
            "the last commit whose records it still holds"
            if low
            else "where this process started (none of its commits' records is held)",
        )
        return held_below

    def clear(self) -> None:
        with self._lock:
            self._points.clear()
            self._origins.clear()
            self._outages.clear()
            self._serials.clear()
            self._thin_at.clear()


#: The process's trail: the reader records into it and checks against it when it plans.
TRAIL = CommitTrail()
