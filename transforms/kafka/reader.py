"""ReadFromKafka: a pure-Python Kafka source (splittable DoFn on confluent-kafka, no JVM).

Beam's own Python ``ReadFromKafka`` is a Java cross-language transform that needs a JVM and a
Maven jar. This one reads each topic-partition as one restriction of a splittable DoFn:

* positions are resolved when the pipeline runs (``Impulse`` → plan partitions), from the group's
  committed offsets, the log start/end, a timestamp, explicit stop offsets or ``max_records``;
* records are emitted as :class:`KafkaRecord` with event time = the Kafka timestamp, in offset
  order within a partition (the tracker never splits a partition in parallel);
* unbounded reads poll what is available, then checkpoint with ``defer_remainder`` (a stateless
  chain after the reader sees records live, also on the local FnApiRunner with ``--streaming``);
* partitions added while an unbounded read runs are read too: the plan step also emits one
  :class:`PartitionWatch` element to the same splittable DoFn. Every ``partition_discovery_s``
  it lists the topics' partitions and reads the new ones itself, from the group's committed
  offset or else the earliest one (a partition created after launch holds only newer records);
  its restriction (partitions known, next offset of each new one) is carried by checkpoints.
  It is an element of the reader, not a step before it: the local FnApiRunner hands a stage's
  output downstream only once the stage is done, so an unbounded discovery step (Java's KafkaIO
  has one) would never deliver there. A restarted read plans every partition at launch;
* a bounded read (a stop, ``max_records`` or a stop time) on a distributed runner does not use
  the splittable DoFn: it plans at launch and reads work units of at most ``max_unit_records``
  offsets with a plain DoFn after a reshuffle (:mod:`transforms.kafka.bounded_read`), so every
  runner (Dask too) can spread one partition's backlog over many workers; its commits are
  described there. The local one-process runners keep the splittable DoFn for bounded reads
  too: there units would gain nothing, and its checkpoints commit as the read goes;
* the watermark follows record timestamps and advances on idle partitions;
* backlog (end offset − position) is reported through ``restriction_size`` and progress;
* each polled batch and each commit is recorded in :mod:`transforms.progress` (records consumed,
  position and end offset per partition, committed offsets) for the stall watchdog;
* offsets are committed to the consumer group in a bundle finalizer, i.e. only after the runner
  has durably processed the bundle's output: **at-least-once**. A crash re-reads from the last
  commit; nothing is lost, some records may be delivered again;
* after a broker outage commits wait and the read fails once the broker is back, to restart from
  the group's offsets (:mod:`transforms.kafka.broker_outage`: a restarted broker may have lost
  acknowledged outputs);
* a read restarted from the group's offsets in a process that committed before checks that the
  broker still holds the records its commits passed, and starts lower where it does not
  (:mod:`transforms.kafka.commit_trail`: a restarted broker may also have lost inputs below the
  committed offsets, whose offsets new records then take).

Usage::

    records = p | "ReadEvents" >> ReadFromKafka(
        config, "transactions", group_id="scorer", start="committed")
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from transforms import progress
from transforms.batch import Batch
from transforms.kafka.broker_outage import KafkaBrokerOutageError, OutageWatch
from transforms.kafka.commit_trail import GONE, TRAIL, fingerprint
from transforms.kafka.config import KafkaConfig
from transforms.kafka.heap import settle_heap
from transforms.kafka.partition_plan import (
    KafkaTopicNotFoundError,
    KafkaUnavailableError,
    PartitionPlan,
    PartitionWatch,
    normalize_start,
    normalize_stop,
    plan_partitions,
)
from transforms.kafka.record import KafkaRecord
from transforms.kafka.restriction import (
    BACKLOG,
    UNBOUNDED_OFFSET,
    KafkaRestrictionProvider,
    WatchedPartition,
)
from transforms.kafka.warm_consumers import (
    MAX_WARM,
    MAX_WARM_RECORDS,
    QUEUED_MIN_MESSAGES,
    WARM,
    LateErrorCallback,
)
from transforms.kafka.watermark import ReaderWatermarkProvider

__all__ = ["ReadFromKafka", "KafkaBrokerOutageError", "KafkaLogTruncatedError"]

_LOGGER = logging.getLogger(__name__)

ConsumerFactory = Callable[[dict[str, str]], Any]

# librdkafka requires a group.id even for assign-only consumers; without a user group nothing
# is ever committed under this one.
_NO_GROUP = "kafka-beam-ml-reader-uncommitted"
_READER_SETTINGS = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "enable.partition.eof": "false",
    # A start offset removed by retention restarts at the log start instead of skipping to the end.
    "auto.offset.reset": "earliest",
}
_MAX_CACHED_CONSUMERS = 64
# Runners that run a pipeline in this one process: a bounded read keeps the splittable DoFn there.
_ONE_PROCESS_RUNNERS = frozenset(
    {"DirectRunner", "SwitchingDirectRunner", "FnApiRunner", "TestDirectRunner"}
)


_RESTRICTION = beam.DoFn.RestrictionParam(KafkaRestrictionProvider())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ReaderWatermarkProvider())


class _PartitionConsumer:
    """A consumer assigned to one partition, remembering the next offset it will return."""

    def __init__(self, consumer, topic: str, partition: int) -> None:
        self.consumer = consumer
        self.tp = TopicPartition(topic, partition)
        self.next_offset: int | None = None
        self.mean_bytes = 0.0  # value size in the last batch, for the backlog estimate

    def position_at(self, offset: int) -> None:
        """Continue where the last poll ended when possible; otherwise (re)assign at ``offset``."""
        if self.next_offset != offset:
            self.consumer.assign([TopicPartition(self.tp.topic, self.tp.partition, offset)])
            self.next_offset = offset

    def poll(self, max_messages: int, timeout: float, *, drain: bool = False) -> list:
        """Next batch of messages; raises on non-retriable errors, logs retriable ones.

        librdkafka's batch consume returns only once ``max_messages`` arrived or ``timeout``
        passed: a trickling stream always waited the whole timeout (100 ms a poll, most of the
        live scorer's latency). With ``drain`` the messages already fetched are taken at once,
        and the timeout is spent only waiting for the first one when there are none.
        """
        consume = self.consumer.consume
        if not drain:
            messages = consume(num_messages=max_messages, timeout=timeout)
        else:
            messages = consume(num_messages=max_messages, timeout=0)
            if not messages and timeout > 0:
                messages = consume(num_messages=1, timeout=timeout)
                if messages and max_messages > 1:
                    messages += consume(num_messages=max_messages - 1, timeout=0)
        if messages:
            # The queue moved on: until the caller confirms what it emitted (an error or an
            # abandoned bundle may come first), the next use must re-assign, or records are lost.
            self.next_offset = None
        good = [message for message in messages if message.error() is None]
        if len(good) < len(messages):
            for error in (m.error() for m in messages if m.error() is not None):
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if not error.retriable() or error.fatal():
                    raise KafkaException(error)
                _LOGGER.warning("Kafka %s[%d]: retrying after %s", *self._where(), error)
        return good

    def end_offset(self) -> int:
        """The partition's high watermark as of the last fetch (no broker round trip)."""
        return self.consumer.get_watermark_offsets(self.tp, cached=True)[1]

    def broker_answers(self) -> bool:
        """Whether the partition's leader answers a request now (one round trip, 1 s at most)."""
        try:
            self.consumer.get_watermark_offsets(self.tp, timeout=1.0, cached=False)
        except KafkaException:
            return False
        return True

    def app_position(self) -> int:
        """Offset after the last message handed out (skips transaction markers, unlike offsets)."""
        return self.consumer.position([self.tp])[0].offset

    def _where(self) -> tuple[str, int]:
        return self.tp.topic, self.tp.partition

    def close(self) -> None:
        self.consumer.close()


def _records(topic: str, partition: int, messages: list) -> tuple[Batch, int]:
    """The batch's records and their earliest timestamp (ms), in one pass over the messages.

    A :class:`Batch` so Beam's size sampling pickles one record per batch, not each of them.
    """
    new = tuple.__new__  # KafkaRecord(...) without the keyword-argument handling
    records = Batch()
    append = records.append
    earliest = None
    for message in messages:
        timestamp_ms = message.timestamp()[1]
        if earliest is None or timestamp_ms < earliest:
            earliest = timestamp_ms
        headers = message.headers()
        append(
            new(
                KafkaRecord,
                (
                    topic,
                    partition,
                    message.offset(),
                    message.key(),
                    message.value(),
                    timestamp_ms,
                    tuple(headers) if headers else (),
                ),
            )
        )
    return records, earliest


def _known_to_exist(plan: PartitionPlan, reader: _PartitionConsumer, offset: int) -> bool:
    """Whether records at ``offset`` are known to exist, so an empty poll means "not fetched yet".

    Deferring then would only hand the thread to another partition for a poll timeout and cost
    the runner a bundle per partition (~0.2 s of a 1M-record bounded read's ~0.7 s overhead).
    """
    if plan.stop_offset != UNBOUNDED_OFFSET or offset < plan.end_offset_at_launch:
        return True
    return reader.end_offset() > offset


class _EmitRecordsFn(beam.DoFn):
    """Unpacks the reader's batches into records, each at its own Kafka time.

    The SDF emits one element per polled batch (stamped with the batch's earliest time, so the
    watermark stays below every record in it); this fused step emits the records. That skips
    Beam's per-output work inside a splittable DoFn (a locked watermark observation and a
    ``Timestamp`` conversion per element): about a fifth less CPU per record
    (bench/bench_read_from_kafka.py). Records with the same millisecond share one ``Timestamp``.
    """

    def process(self, batch: list[KafkaRecord], window=beam.DoFn.WindowParam):
        windows = (window,)
        last_ms = None
        stamped = None
        for record in batch:
            if record.timestamp_ms != last_ms:
                last_ms = record.timestamp_ms
                stamped = WindowedValue(None, Timestamp(micros=last_ms * 1000), windows)
            yield stamped.with_value(record)


class _PlanPartitionsFn(beam.DoFn):
    """Lists partitions and resolves their offsets when the pipeline runs, not when it is built.

    With ``watch_start`` it also emits a :class:`PartitionWatch` for the partitions added later.
    """

    def __init__(
        self,
        reader: _ReaderSettings,
        topics: tuple[str, ...],
        plan_kwargs: dict,
        *,
        watch_start: str | None = None,
        topics_option: str | None = None,
        warm: bool = False,
    ):
        self._reader = reader
        self._topics = topics
        self._plan_kwargs = plan_kwargs
        self._watch_start = watch_start
        self._topics_option = topics_option
        self._warm = warm  # start the partitions' consumers now (the reader runs in this process)

    def process(self, _impulse) -> Iterator[PartitionPlan | PartitionWatch]:
        client = self._reader.new_consumer()
        try:
            listed_at = time.time()
            plans = plan_partitions(
                client, self._topics, timeout=self._reader.timeout_s, **self._plan_kwargs
            )
        except KafkaTopicNotFoundError as err:
            if self._topics_option is None:
                raise
            raise KafkaTopicNotFoundError.of(err.topic, err.code, self._topics_option) from err
        else:
            if self._plan_kwargs.get("start", "committed") == "committed":
                plans = [self._verified(client, plan) for plan in plans]
        finally:
            client.close()
        for plan in plans:  # every partition shows its backlog before its first poll
            TRAIL.started(self._reader.trail_key(plan.topic, plan.partition), plan.start_offset)
            progress.record_position(
                plan.topic,
                plan.partition,
                plan.start_offset,
                min(plan.end_offset_at_launch, plan.stop_offset),
            )
        if self._warm:
            self._warm_up(plans)
        yield from plans
        if self._watch_start is not None:
            known = frozenset((plan.topic, plan.partition) for plan in plans)
            yield PartitionWatch(self._topics, known, self._watch_start, listed_at)

    def _warm_up(self, plans: Sequence[PartitionPlan]) -> None:
        """Start the first :data:`MAX_WARM` partitions' consumers at their start offsets, those
        whose backlog fills a consumer's queue without being long (see
        :mod:`transforms.kafka.warm_consumers`)."""
        fills = int(self._reader.config.extra.get("queued.min.messages", QUEUED_MIN_MESSAGES))
        short = [
            plan
            for plan in plans
            if fills
            <= min(plan.end_offset_at_launch, plan.stop_offset) - plan.start_offset
            <= MAX_WARM_RECORDS
        ]
        for plan in short[:MAX_WARM]:
            errors = LateErrorCallback()
            reader = _PartitionConsumer(
                self._reader.new_consumer(error_cb=errors), plan.topic, plan.partition
            )
            reader.position_at(plan.start_offset)
            key = (self._reader.read_id, plan.topic, plan.partition, plan.start_offset)
            WARM.put(key, reader, errors)

    def _verified(self, client, plan: PartitionPlan) -> PartitionPlan:
        """``plan``, starting lower when the broker lost records this process had committed
        past (see :mod:`transforms.kafka.commit_trail`); the group's offset is rewound too."""
        key = self._reader.trail_key(plan.topic, plan.partition)
        if not TRAIL.knows(key):
            return plan  # the first read of this partition in this process
        tp = TopicPartition(plan.topic, plan.partition)
        timeout = self._reader.timeout_s
        (committed,) = client.committed([tp], timeout=timeout)
        if committed.offset < 0:
            return plan
        probe = self._reader.new_consumer()
        try:
            start = TRAIL.verified_start(
                key,
                committed.offset,
                functools.partial(_record_at, probe, tp, timeout),
                self._reader.outage_replay_s,
            )
            if start == committed.offset:
                return plan
            rewound = TopicPartition(tp.topic, tp.partition, start)
            probe.commit(offsets=[rewound], asynchronous=False)
        finally:
            probe.close()
        TRAIL.rewound(key, start)
        return dataclasses.replace(plan, start_offset=start)


def _record_at(consumer, tp: TopicPartition, timeout: float, offset: int):
    """The fingerprint ``(timestamp, digest)`` of the record at ``offset``; ``None`` when the log
    has none there, ``GONE`` when retention removed it (for ``CommitTrail.verified_start``)."""
    low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
    if offset < low:
        return GONE
    if offset >= high:
        return None
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset)])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1, timeout=0.5):
            if message.error() is None:
                found, timestamp_ms, digest = fingerprint(message)
                return (timestamp_ms, digest) if found == offset else None
    raise KafkaUnavailableError(
        f"Kafka {tp.topic}[{tp.partition}]: no record came back from offset {offset} within "
        f"{timeout:g} s while checking what the broker still holds after a restart"
    )


class _ReaderSettings:
    """What every worker needs to build consumers: picklable, secrets resolved only on workers."""

    def __init__(
        self,
        config: KafkaConfig,
        group_id: str | None,
        consumer_factory: ConsumerFactory | None,
        timeout_s: float,
        outage_replay_s: float = 0.0,
    ) -> None:
        self.config = config
        self.group_id = group_id
        self.consumer_factory = consumer_factory
        self.timeout_s = timeout_s
        self.outage_replay_s = outage_replay_s
        self.read_id = uuid.uuid4().hex  # the same in the planner's and the readers' copies

    def new_consumer(self, error_cb: Callable[[KafkaError], None] | None = None):
        settings = self.config.consumer_dict()
        settings.update(_READER_SETTINGS)
        settings["group.id"] = self.group_id or settings.get("group.id") or _NO_GROUP
        settings["logger"] = _LOGGER  # librdkafka's own messages through Python logging
        if error_cb is not None:
            settings["error_cb"] = error_cb
        return (self.consumer_factory or Consumer)(settings)

    def trail_key(self, topic: str, partition: int) -> tuple[str, str, str, int]:
        """The partition's key in :data:`~transforms.kafka.commit_trail.TRAIL`."""
        return (self.config.bootstrap_servers, self.group, topic, partition)

    @property
    def group(self) -> str:
        return self.group_id or _NO_GROUP

    def outage(self, began_at: float) -> None:
        """The brokers were unreachable from ``began_at``: restarted reads replay before it."""
        TRAIL.outage(self.config.bootstrap_servers, self.group, began_at)


class _ReadPartitionsFn(beam.DoFn):
    """Reads one partition per element (a :class:`PartitionPlan`); bounded by its plan."""

    #: Polls fill batches (a backlog's records are there to read: wait for a full batch).
    _drain = False

    def __init__(
        self,
        reader: _ReaderSettings,
        *,
        commit_offsets: bool,
        idle_watermark_lag_s: float,
        batch_size: int,
        poll_timeout_s: float,
        max_process_s: float,
        settle_heap: bool,
        partition_discovery_s: float | None = None,
    ) -> None:
        self._reader = reader
        self._commit_offsets = commit_offsets and reader.group_id is not None
        self._idle_lag = Duration.of(idle_watermark_lag_s)
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._max_process_s = max_process_s
        self._settle_heap = settle_heap
        self._discovery_s = partition_discovery_s  # for PartitionWatch elements (unbounded)

    def setup(self) -> None:
        if self._settle_heap:
            settle_heap()
        self._consumers: collections.OrderedDict[tuple[str, int], _PartitionConsumer] = (
            collections.OrderedDict()
        )
        self._committer = None
        self._lister = None  # lists partitions for a PartitionWatch
        self._committed: dict[tuple[str, int], int] = {}
        self._staged_for: Any = None  # the bundle finalizer that commits ``_staged``
        self._staged: dict[tuple[str, int], int] = {}
        self._staged_marks: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._outage = OutageWatch()

    def teardown(self) -> None:
        for reader in self._consumers.values():
            reader.close()
        self._consumers.clear()
        WARM.close_all(self._reader.read_id)
        for client in (self._committer, self._lister):
            if client is not None:
                client.close()
        self._committer = self._lister = None

    def process(
        self,
        plan: PartitionPlan,
        window=beam.DoFn.WindowParam,
        finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF params (passed by name)
        tracker=_RESTRICTION,
        watermark=_WATERMARK,
    ):
        return self._read(plan, (window,), tracker, watermark, finalizer)

    def _consumer(self, topic: str, partition: int, start: int) -> _PartitionConsumer:
        """One cached consumer per partition this worker reads, so checkpoints keep prefetch;
        the first one the planner started for this partition and start offset, if any."""
        key = (topic, partition)
        reader = self._consumers.pop(key, None)
        if reader is None:
            warm = WARM.take((self._reader.read_id, topic, partition, start))
            if warm is not None:
                reader, errors = warm
                errors.attach(self._outage.on_error)
            else:
                consumer = self._reader.new_consumer(error_cb=self._outage.on_error)
                reader = _PartitionConsumer(consumer, topic, partition)
            if len(self._consumers) >= _MAX_CACHED_CONSUMERS:
                _, oldest = self._consumers.popitem(last=False)
                oldest.close()
        self._consumers[key] = reader
        return reader

    def _read(
        self,
        plan: PartitionPlan,
        windows: tuple,
        tracker,
        watermark,
        finalizer,
        budget_s: float | None = None,
    ) -> Iterator:
        """Read one partition for up to ``budget_s`` (``max_process_s``), then checkpoint.

        A live (drain) read also ends the partition's turn once the records already fetched are
        taken: waiting for more would keep the other partitions' fetched records waiting.
        """
        start = tracker.current_restriction().start
        reader = self._consumer(plan.topic, plan.partition, start)
        reader.position_at(start)
        next_offset = start
        plan_stop = plan.stop_offset  # the restriction's own stop shrinks when it checkpoints
        deadline = time.monotonic() + (self._max_process_s if budget_s is None else budget_s)
        done = emitted = False
        mark = None  # fingerprint of the last record emitted, for the commit trail
        while True:
            stop = tracker.current_restriction().stop
            if next_offset >= stop:
                tracker.try_claim(stop)  # marks the range done
                done = True
                break
            wait_s = 0.0 if emitted and self._drain else self._poll_timeout_s
            # A batch consume waits its whole timeout for a full batch: asking for no more
            # than the range holds lets the last poll of a bounded read return (0.1 s a
            # partition, a tenth of a short re-score) as soon as the range has arrived.
            wanted = min(self._batch_size, stop - next_offset)
            messages = reader.poll(wanted, wait_s, drain=self._drain)
            if self._outage.seen and (messages or reader.broker_answers()):
                error = self._outage.error()  # unemitted messages are re-read after the restart
                self._reader.outage(error.began_at)
                raise error
            if not messages:
                self._check_truncation(plan, reader, next_offset)
                if self._caught_up(plan, reader, next_offset, stop, watermark):
                    tracker.try_claim(stop)
                    done = True
                    break
                if emitted and self._drain:
                    tracker.defer_remainder()  # drained: the next partition's turn
                    break
                if _known_to_exist(plan, reader, next_offset) and time.monotonic() < deadline:
                    continue  # a new consumer's first fetch is not back yet: wait, not defer
                tracker.defer_remainder(Duration.of(self._poll_timeout_s))
                break
            batch, ended = self._cut(messages, next_offset, stop, plan.stop_timestamp_ms)
            ended = ended or messages[-1].offset() >= stop
            if batch:
                if not tracker.try_claim(batch[-1].offset()):
                    break  # a runner checkpoint took the rest
                next_offset = batch[-1].offset() + 1
                if self._commit_offsets:
                    mark = fingerprint(batch[-1])
                sample = batch[:16]  # enough for a size estimate, cheap per batch
                reader.mean_bytes = sum(len(m) for m in sample) / len(sample)
                records, earliest = _records(plan.topic, plan.partition, batch)
                # Before the yield: a downstream step that never returns leaves this on record.
                progress.add(progress.CONSUMED, len(records))
                progress.record_position(
                    plan.topic, plan.partition, next_offset, min(reader.end_offset(), plan_stop)
                )
                # Free the messages before downstream steps run: alive across the collector's
                # young-generation passes they would be promoted and bring on full collections.
                del messages, batch, sample
                yield WindowedValue(records, Timestamp(micros=earliest * 1000), windows)
                emitted = True
            if ended:
                tracker.try_claim(stop)  # done; the messages past the stop are dropped
                done = True
                break
            reader.next_offset = next_offset  # everything taken from the queue was emitted
            if time.monotonic() >= deadline:
                tracker.defer_remainder()
                break
        end = reader.end_offset()
        BACKLOG.record(plan.topic, plan.partition, end, reader.mean_bytes)
        # A finished (bounded) read has nothing left, whatever the log end is now.
        reached = next_offset if done else min(end, plan_stop)
        progress.record_position(plan.topic, plan.partition, next_offset, reached)
        if done:
            # Its prefetcher would keep polling the log end (about a core per consumer on
            # noida-db), and no later restriction of this partition starts where this one ended.
            del self._consumers[(plan.topic, plan.partition)]
            reader.close()
        if mark is not None:
            self._stage_commit(finalizer, plan.topic, plan.partition, next_offset, mark)

    @staticmethod
    def _cut(
        messages: list, next_offset: int, stop: int, stop_timestamp_ms: int | None
    ) -> tuple[list, bool]:
        """Messages in ``[next_offset, stop)`` and before the stop time; True when the stop time
        was hit. Offsets below ``next_offset`` only appear after an offset reset by the client."""
        if messages[0].offset() < next_offset:
            messages = [m for m in messages if m.offset() >= next_offset]
            if not messages:
                return messages, False
        if messages[-1].offset() >= stop:
            messages = [m for m in messages if m.offset() < stop]
        if stop_timestamp_ms is not None:
            for index, message in enumerate(messages):
                if message.timestamp()[1] >= stop_timestamp_ms:
                    return messages[:index], True
        return messages, False

    def _check_truncation(self, plan: PartitionPlan, reader, next_offset: int) -> None:
        """Fail the read when the log now ends below its position: the broker lost records.

        A broker that restarts without records it had acknowledged (an unclean restart, or an
        unclean leader election) gives the lost offsets to new records, which a reader past
        them would never see. The group's offset is rewound to the new log end and the bundle
        fails: the read restarted from the group's offsets (the local supervisor restarts a
        stream by itself) reads the new records; on Dataflow, drain and relaunch.
        """
        end = reader.end_offset()
        if end < 0 or end >= next_offset:
            return
        if self._commit_offsets:
            self._commit(plan.topic, plan.partition, end, rewind=True)
        raise KafkaLogTruncatedError(
            f"Kafka {plan.topic}[{plan.partition}]: the log now ends at offset {end}, below this "
            f"reader's position {next_offset}: the broker lost acknowledged records (unclean "
            "restart). The consumer group's offset was rewound to the new end; the read must "
            "restart from the group's offsets to see the records written at the reused offsets."
        )

    def _caught_up(self, plan, reader, next_offset, stop, watermark) -> bool:
        """Handle an empty poll; True when the partition is finished (bounded plans only)."""
        if reader.app_position() >= stop:
            return True  # only transaction markers or compacted gaps were left before stop
        end = reader.end_offset()
        if end < 0 or end > next_offset:
            return False  # data is there (or the end is unknown): just not fetched yet
        idle_mark = Timestamp.now() - self._idle_lag
        current = watermark.current_watermark()
        if current is None or idle_mark > current:
            watermark.advance_to(idle_mark)
        if plan.stop_timestamp_ms is not None:
            return idle_mark.micros >= plan.stop_timestamp_ms * 1000
        return False

    def _stage_commit(
        self, finalizer, topic: str, partition: int, offset: int, mark: tuple[int, int, int]
    ) -> None:
        """Commit ``offset`` (past the record ``mark``) when the bundle is finalized, in one
        request with the bundle's other partitions (a synchronous commit per partition made each
        live bundle longer)."""
        # Runners reuse one finalizer object per DoFn, emptied after each bundle's finalization.
        if self._staged_for is not finalizer or not finalizer.has_callbacks():
            self._staged_for, self._staged, self._staged_marks = finalizer, {}, {}
            finalizer.register(
                functools.partial(self._commit_offsets_of, self._staged, self._staged_marks)
            )
        self._staged[(topic, partition)] = offset
        self._staged_marks[(topic, partition)] = mark

    def _commit(self, topic: str, partition: int, offset: int, *, rewind: bool = False) -> None:
        """Commit one partition's offset (``rewind``: below what was committed, after a log
        truncation)."""
        self._commit_offsets_of({(topic, partition): offset}, {}, rewind=rewind)

    def _commit_offsets_of(
        self,
        offsets: dict[tuple[str, int], int],
        marks: Mapping[tuple[str, int], tuple[int, int, int]],
        rewind: bool = False,
    ) -> None:
        """Bundle finalizer: the bundle's output is durable, so its offsets may be committed
        (``marks``: the last record read below each, for the commit trail).

        Nothing is committed after a broker outage until the read restarts (``broker_outage``).
        """
        due = {
            key: offset
            for key, offset in offsets.items()
            # a later bundle may have committed further (finalizers may run out of order)
            if rewind or offset > self._committed.get(key, -1)
        }
        if not due or self._outage.seen:
            return
        if self._committer is None:
            self._committer = self._reader.new_consumer(error_cb=self._outage.on_error)
        try:
            self._committer.commit(
                offsets=[TopicPartition(t, p, offset) for (t, p), offset in due.items()],
                asynchronous=False,
            )
        except KafkaException as err:
            self._outage.on_commit_error(err)
            _LOGGER.warning(
                "Commit of %s failed (records will be re-read after a restart): %s",
                ", ".join(f"{t}[{p}]@{offset}" for (t, p), offset in due.items()),
                err,
            )
            return
        for (topic, partition), offset in due.items():
            self._committed[(topic, partition)] = offset
            progress.record_commit(topic, partition, offset)
            key = self._reader.trail_key(topic, partition)
            if rewind:
                TRAIL.rewound(key, offset)
            elif (topic, partition) in marks:
                TRAIL.committed(key, offset, marks[(topic, partition)])


class KafkaLogTruncatedError(RuntimeError):
    """The partition's log ends below the read's position: the broker lost records."""


class _ReadUnboundedPartitionsFn(_ReadPartitionsFn):
    """The same reader marked unbounded, so runners treat the output as a stream.

    Its polls hand out what has been fetched instead of waiting to fill a batch (latency). Its
    elements are partition plans and one :class:`PartitionWatch`, which reads new partitions.
    """

    _drain = True

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: PartitionPlan | PartitionWatch,
        window=beam.DoFn.WindowParam,
        finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF params (passed by name)
        tracker=_RESTRICTION,
        watermark=_WATERMARK,
    ):
        if isinstance(element, PartitionWatch):
            return self._watch(element, (window,), tracker, watermark, finalizer)
        return self._read(element, (window,), tracker, watermark, finalizer)

    def _watch(self, watch: PartitionWatch, windows, tracker, watermark, finalizer) -> Iterator:
        """List the partitions when due, read each new one for a share of ``max_process_s``,
        then checkpoint.

        The watch's watermark only moves when every partition it reads is caught up, and then to
        the last listing minus ``idle_watermark_lag_s``: a partition not yet listed may hold
        records from any time since.
        """
        state = tracker.current_restriction()
        now = time.time()
        if now >= state.checked_at + self._discovery_s:
            state = self._discover(watch, state, now)
            if not tracker.try_claim(state):
                return
        caught_up = True
        budget_s = self._max_process_s / max(1, len(state.plans))
        for index, plan in enumerate(state.plans):
            partition = WatchedPartition(tracker, index, plan)
            yield from self._read(plan, windows, partition, partition, finalizer, budget_s)
            if partition.refused:
                return  # a runner checkpoint took the rest
            caught_up = caught_up and partition.caught_up
        if caught_up:
            idle_mark = Timestamp.of(state.listed_at) - self._idle_lag
            current = watermark.current_watermark()
            if current is None or idle_mark > current:
                watermark.advance_to(idle_mark)
        wait_s = self._poll_timeout_s if state.plans else state.checked_at + self._discovery_s - now
        tracker.defer_remainder(Duration.of(max(wait_s, self._poll_timeout_s)))

    def _discover(self, watch: PartitionWatch, state, now: float):
        """``state`` after listing the partitions: new ones planned, or unchanged on failure."""
        if self._lister is None:
            self._lister = self._reader.new_consumer()
        try:
            plans = plan_partitions(
                self._lister,
                watch.topics,
                start=watch.start,
                start_fallback="earliest",
                timeout=self._reader.timeout_s,
                skip=state.known,
            )
        except (KafkaUnavailableError, ValueError) as err:
            _LOGGER.warning(
                "Listing the partitions of %s failed (retried in %gs): %s",
                ", ".join(watch.topics),
                self._discovery_s,
                err,
            )
            return dataclasses.replace(state, checked_at=now)
        for plan in plans:
            _LOGGER.info(
                "Kafka %s[%d]: new partition, reading from offset %d",
                plan.topic,
                plan.partition,
                plan.start_offset,
            )
            progress.record_position(
                plan.topic, plan.partition, plan.start_offset, plan.end_offset_at_launch
            )
            TRAIL.started(self._reader.trail_key(plan.topic, plan.partition), plan.start_offset)
        return state.found(plans, now)


class ReadFromKafka(beam.PTransform):
    """Read Kafka topics as a PCollection of :class:`KafkaRecord` (event time = Kafka time).

    Args:
        config: a ``KafkaConfig``; local-broker tuning such as ``LOCAL_BROKER_SETTINGS``
            belongs there (``config.with_extra(...)``), it is never applied by default.
        topics: a topic name or several.
        group_id: consumer group for ``start="committed"`` and for committing offsets.
        start: "committed" (the group's offsets; ``start_fallback`` where it has none),
            "earliest", "latest", a timezone-aware ``datetime`` or epoch milliseconds (first
            record at or after that time, via ``offsets_for_times``).
        start_fallback: "earliest" or "latest", for partitions without a committed offset.
        stop: "unbounded" (default, a stream), "end_at_launch" (everything present when the
            pipeline starts: backfills and training exports) or ``{(topic, partition): offset}``
            (exclusive) for every partition.
        max_records: stop after exactly this many records in total.
        stop_timestamp_ms: end each partition at its first record at or after this time.
        commit_offsets: commit read offsets to ``group_id`` after each bundle is durable.
        idle_watermark_lag_s: a caught-up partition moves its watermark to now minus this.
        timeout_s: bound on each broker call at launch; unreachable brokers or unknown topics
            fail the pipeline within about this time instead of hanging.
        batch_size: messages per ``consume()`` call (one ``try_claim`` per batch).
        poll_timeout_s: how long one poll waits for data; an empty poll checkpoints.
        max_process_s: a busy partition checkpoints after this long, which bounds the bundle
            (and so the time until its offsets are committed, and, on the local runner that
            processes partitions one after another, the latency of the other partitions).
        partition_discovery_s: how often an unbounded read lists the topics' partitions, to read
            the partitions added while it runs; ``None`` lists them at launch only. Windows close
            up to this much later: the watermark waits until a listing showed no new partition.
        work_units: read a bounded read as work units (see :mod:`transforms.kafka.bounded_read`):
            planned when the pipeline is built (the brokers must be reachable from the launching
            process), each of at most ``max_unit_records`` offsets, spread over the workers.
            ``None`` (default): on every runner but the local one-process ones (DirectRunner,
            FnApiRunner), which keep the splittable DoFn and its incremental commits.
        max_unit_records: offsets per work unit.
        topics_option: the pipeline option the topics come from (e.g. ``"--inputTopic"``),
            named in the error when a topic does not exist.
        consumer_factory: builds a consumer from a librdkafka dict (tests pass a fake).
        settle_heap: when a worker sets the reader up, exclude what it holds from later full
            garbage collections (:func:`transforms.kafka.heap.settle_heap`, ``gc.freeze``): they
            traverse Beam's whole heap and came with every ~150k records. Process-wide; turn it
            off if your code manages ``gc.freeze`` itself.
        outage_replay_s: after a broker outage, a read restarted in the same process goes back
            to the last commit it made this long before the outage was noticed: a broker that
            persists by snapshot (the local noida-db) can come back without outputs it had
            acknowledged while keeping the group's offsets past them. 0 on a cluster whose
            acknowledged writes survive restarts (``acks=all``, replicated, no unclean leader
            election) saves re-reading that much after an outage.

    Returns:
        PCollection[KafkaRecord] (``.batched()``: PCollection[Batch], lists of records); unbounded
        unless a stop, ``max_records`` or ``stop_timestamp_ms`` is given.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: str | Sequence[str],
        *,
        group_id: str | None = None,
        start: str | int | datetime.datetime = "committed",
        start_fallback: str = "earliest",
        stop: str | Mapping[tuple[str, int], int] = "unbounded",
        max_records: int | None = None,
        stop_timestamp_ms: int | None = None,
        commit_offsets: bool = True,
        idle_watermark_lag_s: float = 2.0,
        timeout_s: float = 20.0,
        batch_size: int = 1000,
        poll_timeout_s: float = 0.1,
        max_process_s: float = 0.5,
        partition_discovery_s: float | None = 30.0,
        work_units: bool | None = None,
        max_unit_records: int = 100_000,
        topics_option: str | None = None,
        consumer_factory: ConsumerFactory | None = None,
        settle_heap: bool = True,
        outage_replay_s: float = 60.0,
    ) -> None:
        super().__init__()
        self._topics = (topics,) if isinstance(topics, str) else tuple(topics)
        if not self._topics or not all(isinstance(t, str) and t for t in self._topics):
            raise ValueError(f"topics must be one or more non-empty names, got {topics!r}")
        start = normalize_start(start)
        if start == "committed" and group_id is None:
            raise ValueError("start='committed' needs a group_id (or use start='earliest')")
        if start_fallback not in ("earliest", "latest"):
            raise ValueError(f"start_fallback={start_fallback!r}: use 'earliest' or 'latest'")
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {max_records}")
        if partition_discovery_s is not None and not partition_discovery_s > 0:
            raise ValueError(f"partition_discovery_s must be > 0 or None: {partition_discovery_s}")
        if max_unit_records < 1:
            raise ValueError(f"max_unit_records must be >= 1, got {max_unit_records}")
        if not outage_replay_s >= 0:
            raise ValueError(f"outage_replay_s must be >= 0, got {outage_replay_s}")
        self._work_units = work_units
        self._max_unit_records = max_unit_records
        self._bounded = stop != "unbounded" or max_records is not None
        self._bounded = self._bounded or stop_timestamp_ms is not None
        self._plan_kwargs = {
            "start": start,
            "start_fallback": start_fallback,
            "stop": normalize_stop(stop),
            "max_records": max_records,
            "stop_timestamp_ms": stop_timestamp_ms,
        }
        self._reader = _ReaderSettings(
            config, group_id, consumer_factory, timeout_s, outage_replay_s
        )
        self._watch_start = None  # where partitions found while running start; None: no watch
        if not self._bounded and partition_discovery_s is not None:
            self._watch_start = "committed" if start == "committed" else "earliest"
        self._topics_option = topics_option
        self._emit_batches = False
        self._read_kwargs = {
            "commit_offsets": commit_offsets,
            "idle_watermark_lag_s": idle_watermark_lag_s,
            "batch_size": batch_size,
            "poll_timeout_s": poll_timeout_s,
            "max_process_s": max_process_s,
            "settle_heap": settle_heap,
            "partition_discovery_s": partition_discovery_s,
        }

    def batched(self) -> ReadFromKafka:
        """The same read, emitting each polled batch as one ``Batch`` (a list of KafkaRecord).

        For consumers that work on batches anyway (model scoring, bulk sinks) this skips Beam's
        per-element cost, most of the reader's CPU (bench/bench_read_from_kafka.py). A batch holds
        records of one partition in offset order; its event time is its earliest record's.
        """
        clone = copy.copy(self)
        clone._emit_batches = True
        return clone

    def display_data(self) -> dict[str, Any]:
        """What the runner UI shows: where and what is read (never the connection's secrets)."""
        stop = self._plan_kwargs["stop"]
        return {
            "topics": ", ".join(self._topics),
            "groupId": self._reader.group_id or "",
            "start": str(self._plan_kwargs["start"]),
            "stop": stop if isinstance(stop, str) else f"{len(stop)} explicit offsets",
            "maxRecords": self._plan_kwargs["max_records"] or 0,
            "bootstrapServers": self._reader.config.bootstrap_servers,
        }

    def _plan_units(self):
        """The bounded read's work units, planned now (when the pipeline is built)."""
        from transforms.kafka.bounded_read import describe_units, split_plans

        planner = _PlanPartitionsFn(
            self._reader, self._topics, self._plan_kwargs, topics_option=self._topics_option
        )
        units = split_plans(planner.process(None), self._max_unit_records)
        _LOGGER.info("Kafka bounded read: work units per partition: %s", describe_units(units))
        return units

    def _uses_work_units(self, pipeline: beam.Pipeline) -> bool:
        if not self._bounded:
            return False
        if self._work_units is not None:
            return self._work_units
        return type(pipeline.runner).__name__ not in _ONE_PROCESS_RUNNERS

    def expand(self, pbegin):
        if self._uses_work_units(pbegin.pipeline):
            from transforms.kafka.bounded_read import ReadWorkUnits  # it subclasses our DoFn

            batches = pbegin | "ReadWorkUnits" >> ReadWorkUnits(
                self._reader,
                self._plan_units(),
                **self._read_kwargs,
            )
        else:
            batches = self._read_splittable(pbegin)
        if self._emit_batches:
            return batches
        return batches | "EmitRecords" >> beam.ParDo(_EmitRecordsFn()).with_output_types(
            KafkaRecord
        )

    def _read_splittable(self, pbegin):
        read_fn = _ReadPartitionsFn if self._bounded else _ReadUnboundedPartitionsFn
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "PlanPartitions"
            >> beam.ParDo(
                _PlanPartitionsFn(
                    self._reader,
                    self._topics,
                    self._plan_kwargs,
                    watch_start=self._watch_start,
                    topics_option=self._topics_option,
                    warm=self._bounded
                    and type(pbegin.pipeline.runner).__name__ in _ONE_PROCESS_RUNNERS,
                )
            )
            | "Distribute" >> beam.Reshuffle()
            | "ReadPartitions"
            >> beam.ParDo(read_fn(self._reader, **self._read_kwargs)).with_output_types(Batch)
        )
