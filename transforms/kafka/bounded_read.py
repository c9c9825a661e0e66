"""Bounded Kafka reads as work units of a plain DoFn, so every runner can spread a backlog.

The splittable reader (:mod:`transforms.kafka.reader`) reads each partition as one restriction
that is never split in parallel, and some runners do not run splittable DoFns at all (Beam's
DaskRunner fails while translating one). A bounded read instead:

1. plans its offset ranges **at launch**, in the process that builds the pipeline
   (:func:`~transforms.kafka.partition_plan.plan_partitions`: the same start, stop,
   ``max_records`` and stop-time rules as the streaming reader);
2. cuts each partition's range into :class:`WorkUnit` s of at most ``max_unit_records`` offsets
   (:func:`split_plans`); records not yet written at launch (``max_records`` or stop offsets past
   the log end, or a stop time no record has reached) form one last, open unit per partition;
3. creates the units, reshuffles them, and reads each with a plain DoFn (the streaming reader's
   polling, cutting and truncation checks, in a loop instead of checkpoints), so one partition's
   backlog is read by as many workers as it has units;
4. commits, at least once, never past a record whose output is not durable. Kafka keeps one
   offset per partition, meaning "everything below was consumed", and units finish out of order
   on many workers, so:

   * when a unit's bundle is finalized (the runner holds its output durably), the unit's end is
     committed **if the group's committed offset is exactly the unit's start**: everything
     before it was already committed, by this run or an earlier one. So a partition's offset
     advances unit by unit while they finish in order;
   * a unit that finishes before an earlier one commits nothing then. Each finished unit also
     emits a marker; a ``GroupByKey`` per partition collects them once every unit's output has
     been handed to the runner, and the offset is set to the end of the **contiguous run of
     finished units from the planned start** (in a batch job: the whole planned range, or the
     job failed).

   So after a failure "committed" is the end of the last unit that finished with all units
   before it; a re-run re-reads from there, including units that had finished out of order.

Records, their order within a unit, event times and ``.batched()`` batches are those of the
splittable reader; only the split of a partition over workers differs.

Usage (``ReadFromKafka`` does this for every bounded read)::

    units = split_plans(plans, max_unit_records=100_000)
    batches = p | ReadWorkUnits(reader_settings, units, commit_offsets=True, **read_options)

(imported by ``ReadFromKafka`` when it expands, as it subclasses the reader's DoFn.)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.utils.timestamp import Duration
from confluent_kafka import KafkaException, TopicPartition

from transforms import progress
from transforms.batch import Batch
from transforms.kafka.partition_plan import UNBOUNDED_OFFSET, PartitionPlan
from transforms.kafka.reader import _ReadPartitionsFn

__all__ = ["WorkUnit", "split_plans", "committable_offset", "describe_units", "ReadWorkUnits"]

_LOGGER = logging.getLogger(__name__)

_DONE_TAG = "done_units"


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """One bounded piece of a partition's planned range: ``plan`` says what to read.

    ``range_start`` is where the partition's whole planned range starts (the commit prefix
    starts there); ``index`` and ``count`` place the unit among its partition's units.
    """

    plan: PartitionPlan
    range_start: int
    index: int
    count: int


def split_plans(plans: Iterable[PartitionPlan], max_unit_records: int) -> list[WorkUnit]:
    """Cut every plan into units of at most ``max_unit_records`` offsets (see module docstring).

    The offsets present at launch are cut into equal units; what lies past the log end at launch
    (records to wait for, or a pending stop time) is one last unit. Empty plans give no unit.
    """
    if max_unit_records < 1:
        raise ValueError(f"max_unit_records must be >= 1, got {max_unit_records}")
    units = []
    for plan in plans:
        present_end = max(plan.start_offset, min(plan.stop_offset, plan.end_offset_at_launch))
        present = present_end - plan.start_offset
        pieces = -(-present // max_unit_records)
        bounds = [plan.start_offset + present * i // max(pieces, 1) for i in range(pieces + 1)]
        ranges = [(bounds[i], bounds[i + 1]) for i in range(pieces)]
        tail = plan.stop_offset > present_end or plan.stop_timestamp_ms is not None
        if tail:
            ranges.append((present_end, plan.stop_offset))
        for index, (start, stop) in enumerate(ranges):
            last = tail and index == len(ranges) - 1
            unit_plan = dataclasses.replace(
                plan,
                start_offset=start,
                stop_offset=stop,
                stop_timestamp_ms=plan.stop_timestamp_ms if last else None,
            )
            units.append(WorkUnit(unit_plan, plan.start_offset, index, len(ranges)))
    return units


def committable_offset(range_start: int, done: Iterable[tuple[int, int]]) -> int:
    """End of the contiguous run of finished ``(start, reached)`` units from ``range_start``."""
    position = range_start
    for start, reached in sorted(done):
        if start > position:
            break  # an unfinished unit before this one: nothing past it may be committed
        position = max(position, reached)
    return position


class _UnitTracker:
    """The restriction-tracker calls the shared read loop makes, for a plain DoFn.

    Claims move ``next_offset``; claiming the stop marks the unit done; a deferral (waiting for
    records not written yet) is remembered so the caller sleeps and reads on from there.
    """

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.next_offset = start
        self.done = False
        self.deferred_s: float | None = None

    def current_restriction(self) -> OffsetRange:
        return OffsetRange(self.start, self.stop)

    def try_claim(self, offset: int) -> bool:
        if offset >= self.stop:
            self.done = True
            return False
        self.next_offset = offset + 1
        return True

    def defer_remainder(self, delay: Duration | None = None) -> None:
        self.start = self.next_offset
        self.deferred_s = 0.0 if delay is None else delay.micros / 1e6

    def reached(self) -> int:
        """Offset below which everything of the unit was read (its stop, when it had one)."""
        return self.stop if self.stop != UNBOUNDED_OFFSET else self.next_offset


class _NoWatermark:
    """A plain DoFn has no watermark estimator: its output carries the record times only."""

    @staticmethod
    def current_watermark() -> None:
        return None

    @staticmethod
    def advance_to(_timestamp) -> None:
        return None


def _committed_offset(client, topic: str, partition: int, reader) -> int | None:
    """The group's committed offset (negative: none), or None when the broker did not answer."""
    try:
        (committed,) = client.committed(
            [TopicPartition(topic, partition)], timeout=reader.timeout_s
        )
    except KafkaException as err:
        _LOGGER.warning("Committed-offset lookup of %s[%d] failed: %s", topic, partition, err)
        return None
    return committed.offset


class _ReadUnitsFn(_ReadPartitionsFn):
    """The unit reader: the splittable reader's DoFn with a plain ``process``.

    A subclass, so both share one read loop; its ``process`` has no restriction parameter, which
    makes it an ordinary DoFn to Beam.
    """

    def __init__(self, reader, *, commit_units: bool, **read_options) -> None:
        super().__init__(reader, commit_offsets=False, **read_options)
        self._commit_units = commit_units

    def _commit_in_order(self, unit: WorkUnit, end: int) -> None:
        """Finalizer: commit ``end`` when the group's offset is where this unit starts (or the
        group has none and the unit starts the planned range)."""
        plan = unit.plan
        if self._committer is None:
            self._committer = self._reader.new_consumer()
        committed = _committed_offset(self._committer, plan.topic, plan.partition, self._reader)
        first = committed is not None and committed < 0 and plan.start_offset == unit.range_start
        if end > plan.start_offset and (committed == plan.start_offset or first):
            self._commit(plan.topic, plan.partition, end)

    def process(
        self,
        unit: WorkUnit,
        window=beam.DoFn.WindowParam,
        finalizer=beam.DoFn.BundleFinalizerParam,
    ) -> Iterator:
        plan = unit.plan
        tracker = _UnitTracker(plan.start_offset, plan.stop_offset)
        watermark = _NoWatermark()
        progress.record_position(
            plan.topic,
            plan.partition,
            plan.start_offset,
            min(plan.end_offset_at_launch, plan.stop_offset),
        )
        while True:
            yield from self._read(plan, (window,), tracker, watermark, None, float("inf"))
            if tracker.done:
                break
            time.sleep(tracker.deferred_s or 0.0)  # records to come, or a stop time
        if self._commit_units:
            finalizer.register(functools.partial(self._commit_in_order, unit, tracker.reached()))
        key = f"{plan.topic}\x00{plan.partition}"
        yield beam.pvalue.TaggedOutput(
            _DONE_TAG, (key, (unit.range_start, plan.start_offset, tracker.reached()))
        )


class _CommitUnitsFn(beam.DoFn):
    """Commits, per partition, the end of the contiguous finished units (module docstring)."""

    def __init__(self, reader) -> None:
        self._reader = reader

    def setup(self) -> None:
        self._committer = None

    def teardown(self) -> None:
        if self._committer is not None:
            self._committer.close()
            self._committer = None

    def process(self, element) -> Iterator[tuple[str, int, int]]:
        key, done = element
        topic, partition = key.rsplit("\x00", 1)
        done = list(done)
        range_start = done[0][0]
        offset = committable_offset(range_start, [(start, end) for _, start, end in done])
        if offset > range_start and self._commit(topic, int(partition), offset):
            yield topic, int(partition), offset

    def _commit(self, topic: str, partition: int, offset: int) -> bool:
        """Commit unless the units' own finalizers got there (in order); True when committed."""
        if self._committer is None:
            self._committer = self._reader.new_consumer()
        if _committed_offset(self._committer, topic, partition, self._reader) == offset:
            return False
        try:
            self._committer.commit(
                offsets=[TopicPartition(topic, partition, offset)], asynchronous=False
            )
        except KafkaException as err:
            _LOGGER.warning(
                "Commit of %s[%d]@%d failed (records will be re-read by the next run): %s",
                topic,
                partition,
                offset,
                err,
            )
            return False
        progress.record_commit(topic, partition, offset)
        return True


class ReadWorkUnits(beam.PTransform):
    """Read planned :class:`WorkUnit` s with a plain DoFn after a reshuffle; emits ``Batch`` es.

    Args:
        reader: the reader's worker settings (``transforms.kafka.reader._ReaderSettings``).
        units: from :func:`split_plans`, planned at launch.
        commit_offsets: commit the contiguous finished units to the reader's group.
        read_options: the reader DoFn's keyword arguments (batch size, poll timeout, ...).

    Returns:
        PCollection[Batch]; the commits (topic, partition, offset) are in ``self.commits``
        after expansion (for tests).
    """

    def __init__(
        self,
        reader,
        units: Sequence[WorkUnit],
        *,
        commit_offsets: bool,
        **read_options,
    ) -> None:
        super().__init__()
        self._reader = reader
        self._units = list(units)
        self._commit = commit_offsets and reader.group_id is not None
        self._read_options = read_options
        self.commits: beam.PCollection | None = None

    def expand(self, pbegin):
        fn = _ReadUnitsFn(self._reader, commit_units=self._commit, **self._read_options)
        read = (
            pbegin
            | "WorkUnits" >> beam.Create(self._units, reshuffle=False)
            | "Distribute" >> beam.Reshuffle()
            | "ReadUnits"
            >> beam.ParDo(fn).with_output_types(Batch).with_outputs(_DONE_TAG, main="batches")
        )
        if self._commit:
            self.commits = (
                read[_DONE_TAG]
                | "UnitsPerPartition" >> beam.GroupByKey()
                | "CommitOffsets" >> beam.ParDo(_CommitUnitsFn(self._reader))
            )
        return read.batches


def describe_units(units: Sequence[WorkUnit]) -> str:
    """One line for the launch log: units per partition."""
    counts = {(unit.plan.topic, unit.plan.partition): unit.count for unit in units}
    return ", ".join(f"{t}[{p}]: {n}" for (t, p), n in sorted(counts.items())) or "nothing"
