"""Unit tests of ReadFromKafka's pure parts and of the transform over an in-memory fake consumer.

The broker-facing behaviour (real consumer, commits, kill -9, live streaming) is covered in
tests/integration/test_read_from_kafka.py; here a fake consumer stands in for librdkafka so the
restriction, watermark, planning and emission logic run fast and deterministically.
"""

from __future__ import annotations

import datetime
import functools
import itertools

import apache_beam as beam
import pytest
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from transforms.kafka import reader as reader_module
from transforms.kafka.config import KafkaConfig
from transforms.kafka.partition_plan import (
    KafkaUnavailableError,
    PartitionPlan,
    _allocate,
    normalize_start,
    normalize_stop,
    plan_partitions,
)
from transforms.kafka.reader import (
    KafkaBrokerOutageError,
    KafkaLogTruncatedError,
    ReadFromKafka,
    _PartitionConsumer,
    _PlanPartitionsFn,
    _ReaderSettings,
    _ReadUnboundedPartitionsFn,
)
from transforms.kafka.record import KafkaRecord
from transforms.kafka.restriction import (
    UNBOUNDED_OFFSET,
    KafkaOffsetTracker,
    KafkaRestrictionProvider,
    PartitionBacklog,
    PartitionOffsetRange,
)
from transforms.kafka.warm_consumers import WARM
from transforms.kafka.watermark import KafkaWatermarkEstimator

# ---------------------------------------------------------------- fake Kafka (in-process)

_CLUSTERS: dict[str, FakeCluster] = {}


class FakeMessage:
    def __init__(self, topic, partition, offset, key, value, timestamp_ms, headers=None):
        self._fields = (topic, partition, offset, key, value, timestamp_ms, headers)

    def topic(self):
        return self._fields[0]

    def partition(self):
        return self._fields[1]

    def offset(self):
        return self._fields[2]

    def key(self):
        return self._fields[3]

    def value(self):
        return self._fields[4]

    def timestamp(self):
        return (1, self._fields[5])

    def headers(self):
        return self._fields[6]

    def error(self):
        return None

    def __len__(self):
        return len(self._fields[4] or b"")


class FakeCluster:
    """Topics as lists of messages per partition, plus committed offsets per group."""

    def __init__(self, name: str, topics: dict[str, list[list[FakeMessage]]]) -> None:
        self.name = name
        self.topics = topics
        self.committed: dict[tuple[str, str, int], int] = {}
        self.commit_calls: list[tuple[str, str, int, int]] = []
        self.commit_requests = 0
        self.reachable = True
        self.asked: list[int] = []  # num_messages of each consume() call
        self.open_consumers = 0
        self.error_callbacks: list = []
        _CLUSTERS[name] = self

    def factory(self):
        return functools.partial(FakeConsumer, self.name)

    def go_down(self) -> None:
        """Every broker stops: consumers hear it through their ``error_cb``, as librdkafka's."""
        self.reachable = False
        for callback in self.error_callbacks:
            callback(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))


class FakeConsumer:
    def __init__(self, cluster_name: str, settings: dict) -> None:
        self._cluster = _CLUSTERS[cluster_name]
        self._group = settings["group.id"]
        self._assigned: tuple[str, int] | None = None
        self._position = OFFSET_INVALID
        self._cluster.open_consumers += 1
        if "error_cb" in settings:
            self._cluster.error_callbacks.append(settings["error_cb"])

    def _check(self):
        if not self._cluster.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "all brokers down"))

    def list_topics(self, topic, timeout):
        self._check()
        md = type("Md", (), {})()
        partitions = self._cluster.topics.get(topic)
        topic_md = type("TopicMd", (), {})()
        topic_md.error = None if partitions is not None else "UNKNOWN_TOPIC_OR_PART"
        topic_md.partitions = dict.fromkeys(range(len(partitions or [])))
        md.topics = {topic: topic_md}
        return md

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        if not cached:
            self._check()
        log = self._cluster.topics[tp.topic][tp.partition]
        return (log[0].offset() if log else 0, log[-1].offset() + 1 if log else 0)

    def committed(self, tps, timeout):
        self._check()
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self._cluster.committed.get((self._group, tp.topic, tp.partition), -1001),
            )
            for tp in tps
        ]

    def offsets_for_times(self, tps, timeout):
        self._check()
        result = []
        for tp in tps:
            log = self._cluster.topics[tp.topic][tp.partition]
            found = next((m.offset() for m in log if m.timestamp()[1] >= tp.offset), -1)
            result.append(TopicPartition(tp.topic, tp.partition, found))
        return result

    def assign(self, tps):
        (tp,) = tps
        self._assigned = (tp.topic, tp.partition)
        self._position = tp.offset

    def consume(self, num_messages, timeout):
        self._cluster.asked.append(num_messages)
        if not self._cluster.reachable:
            return []
        topic, partition = self._assigned
        batch = [m for m in self._cluster.topics[topic][partition] if m.offset() >= self._position][
            :num_messages
        ]
        if batch:
            self._position = batch[-1].offset() + 1
        return batch

    def position(self, tps):
        return [TopicPartition(tps[0].topic, tps[0].partition, self._position)]

    def commit(self, offsets, asynchronous):
        self._check()
        self._cluster.commit_requests += 1
        for tp in offsets:
            self._cluster.committed[(self._group, tp.topic, tp.partition)] = tp.offset
            self._cluster.commit_calls.append((self._group, tp.topic, tp.partition, tp.offset))

    def close(self):
        self._cluster.open_consumers -= 1


def _log(topic: str, partitions: int, per_partition: int, *, gap_every: int = 0):
    """Messages with keys, headers and increasing timestamps; optional offset gaps."""
    logs = []
    for partition in range(partitions):
        offsets = (o for o in itertools.count() if not gap_every or o % gap_every)
        logs.append(
            [
                FakeMessage(
                    topic,
                    partition,
                    offset,
                    b"k%d" % partition,
                    b"v%d-%d" % (partition, offset),
                    1_000_000 + offset * 10,
                    [("h", b"%d" % offset)],
                )
                for offset in itertools.islice(offsets, per_partition)
            ]
        )
    return logs


def _record(m: FakeMessage) -> KafkaRecord:
    return KafkaRecord(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.value(),
        m.timestamp()[1],
        (m.headers()[0],),
    )


CONFIG = KafkaConfig(bootstrap_servers="fake:9092")


@pytest.fixture
def cluster(request):
    name = request.node.name
    yield FakeCluster(name, {"events": _log("events", 3, 20)})
    _CLUSTERS.pop(name, None)


# ---------------------------------------------------------------- restriction and tracker


def _tracker(start=0, stop=10, backlog=None):
    rng = PartitionOffsetRange(start, stop, "t", 0)
    return KafkaOffsetTracker(rng, backlog or PartitionBacklog())


def test_tracker_claims_in_order_and_refuses_past_stop():
    tracker = _tracker(0, 10)
    assert tracker.try_claim(0)
    assert tracker.try_claim(4)  # a batch ending at 4 claims 1..4 too
    with pytest.raises(ValueError):
        tracker.try_claim(3)
    assert not tracker.try_claim(10)
    tracker.check_done()


def test_tracker_never_splits_a_partition_in_parallel():
    tracker = _tracker(0, 100)
    tracker.try_claim(9)
    assert tracker.try_split(0.5) is None
    assert tracker.current_restriction() == PartitionOffsetRange(0, 100, "t", 0)


def test_checkpoint_splits_after_last_claim():
    tracker = _tracker(0, UNBOUNDED_OFFSET)
    tracker.try_claim(9)
    primary, residual = tracker.try_split(0)
    assert primary == PartitionOffsetRange(0, 10, "t", 0)
    assert residual == PartitionOffsetRange(10, UNBOUNDED_OFFSET, "t", 0)
    tracker.check_done()
    assert tracker.try_split(0) is None  # only one checkpoint per tracker


def test_checkpoint_before_any_claim_defers_everything():
    tracker = _tracker(5, UNBOUNDED_OFFSET)
    primary, residual = tracker.try_split(0)
    assert (primary.start, primary.stop) == (5, 5)
    assert (residual.start, residual.stop) == (5, UNBOUNDED_OFFSET)
    tracker.check_done()


def test_unclaimed_work_is_not_done():
    tracker = _tracker(0, 10)
    tracker.try_claim(3)
    with pytest.raises(ValueError):
        tracker.check_done()


def test_progress_and_size_come_from_the_end_offset():
    backlog = PartitionBacklog()
    tracker = _tracker(100, UNBOUNDED_OFFSET, backlog)
    assert tracker.current_progress().remaining_work == 0  # end unknown yet
    backlog.record("t", 0, 150, 20.0)
    tracker.try_claim(109)
    progress = tracker.current_progress()
    assert (progress.completed_work, progress.remaining_work) == (10, 40)
    assert not tracker.is_bounded()

    provider = KafkaRestrictionProvider(backlog)
    plan = PartitionPlan("t", 0, 100, UNBOUNDED_OFFSET, end_offset_at_launch=120)
    rng = provider.initial_restriction(plan)
    assert provider.restriction_size(plan, rng) == 50 * 20.0
    other = PartitionPlan("t", 1, 0, 30, end_offset_at_launch=25)
    # Unknown to this worker's backlog: falls back to the end offset seen at launch.
    assert provider.restriction_size(other, provider.initial_restriction(other)) == 25


def test_truncate_stops_unbounded_and_keeps_bounded_ranges():
    provider = KafkaRestrictionProvider(PartitionBacklog())
    unbounded = PartitionOffsetRange(0, UNBOUNDED_OFFSET, "t", 0)
    bounded = PartitionOffsetRange(0, 7, "t", 0)
    assert provider.truncate(None, unbounded) is None
    assert provider.truncate(None, bounded) == bounded


# ---------------------------------------------------------------- watermark


def test_watermark_follows_newest_record_and_never_goes_back():
    estimator = KafkaWatermarkEstimator(None)
    assert estimator.current_watermark() is None
    estimator.observe_timestamp(Timestamp(10))
    estimator.observe_timestamp(Timestamp(5))  # an older record does not pull it back
    assert estimator.current_watermark() == Timestamp(10)
    with pytest.raises(ValueError, match="backwards"):
        estimator.advance_to(Timestamp(9))
    with pytest.raises(ValueError):
        estimator.advance_to(12)


def test_watermark_idle_advance_and_state_round_trip():
    estimator = KafkaWatermarkEstimator(Timestamp(10))
    estimator.advance_to(Timestamp(20))
    resumed = KafkaWatermarkEstimator(estimator.get_estimator_state())
    assert resumed.current_watermark() == Timestamp(20)
    resumed.observe_timestamp(Timestamp(15))
    assert resumed.current_watermark() == Timestamp(20)


# ---------------------------------------------------------------- planning start/stop offsets


def _plan(cluster, group="g", **kwargs):
    client = FakeConsumer(cluster.name, {"group.id": group})
    return {(p.topic, p.partition): p for p in plan_partitions(client, ["events"], **kwargs)}


def _starts_stops(plans):
    return {key: (p.start_offset, p.stop_offset) for key, p in plans.items()}


def test_start_committed_with_fallbacks(cluster):
    cluster.committed[("g", "events", 1)] = 7
    plans = _plan(cluster, start="committed", start_fallback="earliest")
    assert [plans[("events", p)].start_offset for p in range(3)] == [0, 7, 0]
    plans = _plan(cluster, start="committed", start_fallback="latest")
    assert [plans[("events", p)].start_offset for p in range(3)] == [20, 7, 20]
    assert all(p.stop_offset == UNBOUNDED_OFFSET for p in plans.values())


def test_start_earliest_latest_and_timestamp(cluster):
    assert {p.start_offset for p in _plan(cluster, start="earliest").values()} == {0}
    assert {p.start_offset for p in _plan(cluster, start="latest").values()} == {20}
    # Timestamps are 1_000_000 + 10 * offset: the first record at/after 1_000_055 is offset 6.
    assert {p.start_offset for p in _plan(cluster, start=1_000_055).values()} == {6}
    # No record that late yet: start at the end, i.e. only new records.
    assert {p.start_offset for p in _plan(cluster, start=9_000_000).values()} == {20}


def test_normalize_start_accepts_aware_datetimes_only():
    aware = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
    assert normalize_start(aware) == 1_793_491_200_000
    with pytest.raises(ValueError, match="timezone"):
        normalize_start(datetime.datetime(2026, 11, 1))
    with pytest.raises(ValueError):
        normalize_start("beginning")
    with pytest.raises(ValueError):
        normalize_stop({("t", 0): -1})


def test_bounded_stops(cluster):
    plans = _plan(cluster, start="earliest", stop="end_at_launch")
    assert set(_starts_stops(plans).values()) == {(0, 20)}
    explicit = {("events", 0): 5, ("events", 1): 0, ("events", 2): 30}
    plans = _plan(cluster, start="earliest", stop=explicit)
    assert [plans[("events", p)].stop_offset for p in range(3)] == [5, 0, 30]
    with pytest.raises(ValueError, match=r"events\[2\]"):
        _plan(cluster, start="earliest", stop={("events", 0): 5, ("events", 1): 5})
    # Stop time: first record at/after 1_000_100 is offset 10; later than every record → pending.
    plans = _plan(cluster, start="earliest", stop_timestamp_ms=1_000_100)
    assert set(_starts_stops(plans).values()) == {(0, 10)}
    assert {p.stop_timestamp_ms for p in plans.values()} == {None}
    plans = _plan(cluster, start="earliest", stop_timestamp_ms=9_000_000)
    assert {p.stop_timestamp_ms for p in plans.values()} == {9_000_000}


def test_max_records_is_exact_in_total(cluster):
    cluster.committed[("g", "events", 0)] = 18  # only 2 left in partition 0
    plans = _plan(cluster, start="committed", max_records=21)
    counts = [
        plans[("events", p)].stop_offset - plans[("events", p)].start_offset for p in range(3)
    ]
    assert counts == [2, 10, 9]
    # More than the backlog: the shortfall is spread and waited for.
    plans = _plan(cluster, start="earliest", max_records=63)
    assert sum(p.stop_offset - p.start_offset for p in plans.values()) == 63


@pytest.mark.parametrize(
    ("available", "total", "expected"),
    [
        ([5, 5], 9, [5, 4]),
        ([0, 10], 3, [0, 3]),
        ([1, 1, 1], 6, [2, 2, 2]),
        ([3, 0], 4, [4, 0]),
        ([7, 7, 7], 0, [0, 0, 0]),
    ],
)
def test_allocate(available, total, expected):
    assert _allocate(available, total) == expected


def test_unknown_topic_and_unreachable_brokers_fail_clearly(cluster):
    client = FakeConsumer(cluster.name, {"group.id": "g"})
    with pytest.raises(ValueError, match="'missing' is not readable"):
        plan_partitions(client, ["missing"], start="earliest")
    cluster.reachable = False
    with pytest.raises(KafkaUnavailableError, match="within 3s"):
        plan_partitions(client, ["events"], start="earliest", timeout=3)


def test_constructor_validates_early():
    with pytest.raises(ValueError, match="group_id"):
        ReadFromKafka(CONFIG, "events")
    with pytest.raises(ValueError, match="topics"):
        ReadFromKafka(CONFIG, [], start="earliest")
    with pytest.raises(ValueError, match="start_fallback"):
        ReadFromKafka(CONFIG, "events", group_id="g", start_fallback="never")


# ---------------------------------------------------------------- the transform on a fake broker


def _run(cluster, expected, **kwargs):
    kwargs.setdefault("batch_size", 7)  # several polls and claims per partition
    with TestPipeline() as p:
        records = p | ReadFromKafka(CONFIG, "events", consumer_factory=cluster.factory(), **kwargs)
        assert_that(records, equal_to(expected))


def test_reads_every_record_once_with_keys_headers_and_gaps(cluster):
    cluster.topics["events"] = _log("events", 3, 20, gap_every=4)  # compacted-style gaps
    expected = [_record(m) for log in cluster.topics["events"] for m in log]
    _run(cluster, expected, group_id="g", start="earliest", stop="end_at_launch")
    # Each partition committed the offset after its last record, once the bundle was done.
    ends = {p: log[-1].offset() + 1 for p, log in enumerate(cluster.topics["events"])}
    assert {("events", p): o for (_, _, p), o in cluster.committed.items()} == {
        ("events", p): ends[p] for p in range(3)
    }
    for partition in range(3):
        offsets = [o for (_, _, p, o) in cluster.commit_calls if p == partition]
        assert offsets == sorted(set(offsets))  # per partition: only forward, never repeated


def test_resumes_from_committed_offsets_without_gap(cluster):
    log = cluster.topics["events"]
    cluster.committed.update({("g", "events", 0): 5, ("g", "events", 1): 20})
    expected = [_record(m) for m in log[0][5:] + log[2]]
    _run(cluster, expected, group_id="g", start="committed", stop="end_at_launch")


def test_max_records_and_stop_timestamp(cluster):
    log = cluster.topics["events"]
    expected = [_record(m) for m in log[0][:4] + log[1][:4] + log[2][:4]]
    _run(cluster, expected, start="earliest", max_records=12)
    expected = [_record(m) for part in log for m in part if m.timestamp()[1] < 1_000_050]
    _run(cluster, expected, start="earliest", stop_timestamp_ms=1_000_050)
    assert cluster.commit_calls == []  # no group: nothing committed


def test_event_time_is_the_kafka_timestamp(cluster):
    with TestPipeline() as p:
        times = (
            p
            | ReadFromKafka(
                CONFIG,
                "events",
                start="earliest",
                stop={("events", 0): 3, ("events", 1): 0, ("events", 2): 0},
                consumer_factory=cluster.factory(),
            )
            | beam.Map(lambda r, t=beam.DoFn.TimestampParam: (r.offset, t.micros // 1000))
        )
        assert_that(times, equal_to([(0, 1_000_000), (1, 1_000_010), (2, 1_000_020)]))


# ---------------------------------------------------------------- the DoFn, one process() at a time


def _offsets(batches) -> list[int]:
    return [record.offset for batch in batches for record in batch.value]


def _process(fn, plan, restriction, estimator_state=None):
    """One process() call as the runner makes it: returns the batches it emitted, the tracker,
    the watermark estimator and the bundle finalizer."""
    tracker = ThreadsafeRestrictionTracker(KafkaOffsetTracker(restriction, PartitionBacklog()))
    estimator = ThreadsafeWatermarkEstimator(KafkaWatermarkEstimator(estimator_state))
    finalizer = beam.DoFn.BundleFinalizerParam()
    outputs = list(
        fn.process(plan, GlobalWindow(), finalizer, RestrictionTrackerView(tracker), estimator)
    )
    tracker.check_done()
    return outputs, tracker, estimator, finalizer


def _read_fn(cluster, group="g", settings=None):
    settings = settings or _ReaderSettings(CONFIG, group, cluster.factory(), timeout_s=5)
    fn = _ReadUnboundedPartitionsFn(
        settings,
        commit_offsets=True,
        idle_watermark_lag_s=2.0,
        batch_size=8,
        poll_timeout_s=0.01,
        max_process_s=5.0,
        settle_heap=False,
    )
    fn.setup()
    return fn


def test_unbounded_read_checkpoints_advances_idle_watermark_and_commits_on_finalize(cluster):
    fn = _read_fn(cluster)
    plan = PartitionPlan("events", 0, 0, UNBOUNDED_OFFSET, end_offset_at_launch=20)
    started = Timestamp.now()
    outputs, tracker, estimator, finalizer = _process(
        fn, plan, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 0)
    )
    assert _offsets(outputs) == list(range(20))
    # One element per poll (batch_size=8), at the batch's earliest record time.
    assert [[r.offset for r in wv.value] for wv in outputs] == [
        list(range(0, 8)),
        list(range(8, 16)),
        list(range(16, 20)),
    ]
    assert [wv.timestamp.micros // 1000 for wv in outputs] == [1_000_000, 1_000_080, 1_000_160]
    residual, _delay = tracker.deferred_status()
    assert residual == PartitionOffsetRange(20, UNBOUNDED_OFFSET, "events", 0)
    # Caught up at the end offset: the watermark moved to about now - 2 s, past every record.
    assert estimator.current_watermark() >= started - Duration.of(2)
    assert cluster.committed == {}  # nothing committed before the bundle is finalized
    finalizer.finalize_bundle()
    assert cluster.committed == {("g", "events", 0): 20}

    # The residual continues on the cached consumer; new records arrive meanwhile.
    cluster.topics["events"][0].extend(_log("events", 1, 25)[0][20:])
    outputs, tracker, estimator, finalizer = _process(
        fn, plan, residual, estimator.get_estimator_state()
    )
    assert _offsets(outputs) == [20, 21, 22, 23, 24]
    assert tracker.deferred_status()[0].start == 25
    finalizer.finalize_bundle()
    assert cluster.committed == {("g", "events", 0): 25}
    fn.teardown()


def test_a_bounded_read_asks_for_no_more_than_its_range_holds(cluster):
    """librdkafka's batch consume waits its whole timeout for a full batch: the last poll of
    a range asks for what is left, so it returns as soon as that has arrived."""
    fn = _read_fn(cluster)
    plan = PartitionPlan("events", 0, 3, 13, end_offset_at_launch=20)
    cluster.asked.clear()
    outputs, _, _, _ = _process(fn, plan, PartitionOffsetRange(3, 13, "events", 0))
    assert _offsets(outputs) == list(range(3, 13))
    assert cluster.asked == [8, 2]  # batch_size=8, then the 2 left
    fn.teardown()


def test_a_live_partition_hands_over_once_drained_and_an_idle_one_waits_a_poll(cluster):
    """Latency: a partition whose fetched records are all taken ends its turn at once (the
    other partitions' records wait otherwise); one with nothing new waits a poll timeout."""
    fn = _read_fn(cluster)
    plan = PartitionPlan("events", 0, 0, UNBOUNDED_OFFSET, end_offset_at_launch=20)
    outputs, tracker, _, _ = _process(
        fn, plan, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 0)
    )
    assert _offsets(outputs) == list(range(20))
    residual, delay = tracker.deferred_status()
    assert delay == Duration(0)
    outputs, tracker, _, _ = _process(fn, plan, residual)
    assert outputs == [] and tracker.deferred_status()[1] > Duration(0)
    fn.teardown()


def test_a_bundle_commits_all_its_partitions_in_one_request_and_each_bundle_its_own(cluster):
    """Runners reuse one finalizer per DoFn and empty it after each bundle's finalization."""
    fn = _read_fn(cluster)
    finalizer = beam.DoFn.BundleFinalizerParam()
    for end in (20, 25):
        for partition in range(3):
            plan = PartitionPlan("events", partition, 0, UNBOUNDED_OFFSET, 20)
            start = 0 if end == 20 else 20
            tracker = ThreadsafeRestrictionTracker(
                KafkaOffsetTracker(
                    PartitionOffsetRange(start, UNBOUNDED_OFFSET, "events", partition),
                    PartitionBacklog(),
                )
            )
            estimator = ThreadsafeWatermarkEstimator(KafkaWatermarkEstimator(None))
            list(
                fn.process(
                    plan, GlobalWindow(), finalizer, RestrictionTrackerView(tracker), estimator
                )
            )
        requests = cluster.commit_requests
        finalizer.finalize_bundle()
        finalizer.reset()
        assert cluster.commit_requests == requests + 1
        assert cluster.committed == {("g", "events", p): end for p in range(3)}
        for partition in range(3):
            cluster.topics["events"][partition].extend(_log("events", 3, 25)[partition][20:])
    fn.teardown()


def test_pending_stop_time_ends_the_partition_once_caught_up(cluster):
    fn = _read_fn(cluster, group=None)
    plan = PartitionPlan("events", 1, 0, UNBOUNDED_OFFSET, 20, stop_timestamp_ms=2_000_000)
    outputs, tracker, _, finalizer = _process(
        fn, plan, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 1)
    )
    assert _offsets(outputs) == list(range(20))
    assert tracker.deferred_status() is None  # finished, not checkpointed
    assert not finalizer.has_callbacks()  # no group: nothing to commit
    assert fn._consumers == {} and cluster.open_consumers == 0  # a done partition's is closed


def test_a_failed_bundle_is_re_read_from_its_start(cluster):
    """Downstream fails on a batch: the cached consumer must not continue past it on retry."""
    fn = _read_fn(cluster)
    plan = PartitionPlan("events", 2, 0, UNBOUNDED_OFFSET, end_offset_at_launch=20)
    restriction = PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 2)
    tracker = ThreadsafeRestrictionTracker(KafkaOffsetTracker(restriction, PartitionBacklog()))
    estimator = ThreadsafeWatermarkEstimator(KafkaWatermarkEstimator(None))
    outputs = fn.process(
        plan,
        GlobalWindow(),
        beam.DoFn.BundleFinalizerParam(),
        RestrictionTrackerView(tracker),
        estimator,
    )
    assert [r.offset for r in next(outputs).value] == list(range(8))
    outputs.close()  # the bundle failed downstream: the runner retries the same restriction
    retried, _, _, _ = _process(fn, plan, restriction)
    assert _offsets(retried) == list(range(20))


def _read_live(cluster, fn, partition, restriction):
    plan = PartitionPlan("events", partition, 0, UNBOUNDED_OFFSET, end_offset_at_launch=20)
    return _process(fn, plan, restriction)


def test_after_a_broker_outage_commits_wait_and_the_read_fails_once_the_broker_is_back(cluster):
    """The broker may have lost outputs acknowledged before it went down (see broker_outage):
    no offset may be committed past them, and the read restarts from the group's offsets."""
    fn = _read_fn(cluster)
    outputs, tracker, _, finalizer = _read_live(
        cluster, fn, 0, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 0)
    )
    assert _offsets(outputs) == list(range(20))
    residual = tracker.deferred_status()[0]
    cluster.go_down()
    finalizer.finalize_bundle()  # the bundle's outputs were acknowledged just before the outage
    assert cluster.committed == {}

    # While the broker is away the read waits (nothing emitted, nothing raised).
    outputs, tracker, _, _ = _read_live(cluster, fn, 0, residual)
    assert outputs == [] and tracker.deferred_status()[0] == residual

    cluster.reachable = True
    cluster.topics["events"][0].extend(_log("events", 1, 25)[0][20:])
    with pytest.raises(KafkaBrokerOutageError, match="restarts from the consumer group"):
        _read_live(cluster, fn, 0, residual)
    assert cluster.committed == {}  # a restart reads offsets 0..24 again: duplicates, no gap

    # A runner that retries the bundle instead (Dataflow) goes on, and commits again.
    outputs, _, _, finalizer = _read_live(cluster, fn, 0, residual)
    assert _offsets(outputs) == [20, 21, 22, 23, 24]
    finalizer.finalize_bundle()
    assert cluster.committed == {("g", "events", 0): 25}
    fn.teardown()


def test_a_commit_that_finds_no_broker_also_holds_commits_until_the_restart(cluster):
    fn = _read_fn(cluster)
    outputs, tracker, _, finalizer = _read_live(
        cluster, fn, 1, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 1)
    )
    cluster.reachable = False  # the partition consumers have not polled since
    finalizer.finalize_bundle()
    cluster.reachable = True
    with pytest.raises(KafkaBrokerOutageError, match="a commit failed"):
        _read_live(cluster, fn, 1, tracker.deferred_status()[0])
    assert cluster.committed == {}
    fn.teardown()


def test_a_log_that_ends_below_the_position_rewinds_the_group_and_fails(cluster):
    """A restarted broker that lost records gives their offsets to new ones: read them."""
    fn = _read_fn(cluster)
    outputs, tracker, _, finalizer = _read_live(
        cluster, fn, 2, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 2)
    )
    finalizer.finalize_bundle()
    assert cluster.committed == {("g", "events", 2): 20}
    del cluster.topics["events"][2][12:]  # the broker kept offsets 0..11 only
    with pytest.raises(KafkaLogTruncatedError, match="ends at offset 12"):
        _read_live(cluster, fn, 2, tracker.deferred_status()[0])
    assert cluster.committed == {("g", "events", 2): 12}
    fn.teardown()


def test_a_restarted_read_starts_below_commits_whose_records_the_broker_lost(cluster):
    """The broker came back with the group's offset (20) but without records 18..19, and new
    records took offsets 18 on: the restarted read starts at the last commit whose record is
    still there (16), not at 20, which would skip the new records 18 and 19."""
    fn = _read_fn(cluster)
    for start, stop in ((0, 8), (8, 16), (16, 20)):
        _, _, _, finalizer = _read_live(
            cluster, fn, 0, PartitionOffsetRange(start, stop, "events", 0)
        )
        finalizer.finalize_bundle()
    fn.teardown()
    assert cluster.committed == {("g", "events", 0): 20}
    log = cluster.topics["events"][0]
    del log[18:]
    log.extend(
        FakeMessage("events", 0, offset, b"k0", b"new-%d" % offset, 2_000_000 + offset, None)
        for offset in range(18, 30)
    )
    cluster.committed[("g", "events", 1)] = 5  # a partition this process never read

    settings = _ReaderSettings(CONFIG, "g", cluster.factory(), timeout_s=5)
    planner = _PlanPartitionsFn(
        settings,
        ("events",),
        {"start": "committed", "start_fallback": "earliest", "stop": "unbounded"},
    )
    plans = {plan.partition: plan for plan in planner.process(None)}
    assert plans[0].start_offset == 16 and plans[1].start_offset == 5
    assert cluster.committed[("g", "events", 0)] == 16  # a crash now restarts there too

    fn = _read_fn(cluster)
    outputs, _, _, _ = _process(
        fn, plans[0], PartitionOffsetRange(16, UNBOUNDED_OFFSET, "events", 0)
    )
    values = [record.value for batch in outputs for record in batch.value]
    assert values == [b"v0-16", b"v0-17"] + [b"new-%d" % offset for offset in range(18, 30)]
    fn.teardown()


class _ErrorMessage:
    def __init__(self, code: int, *, fatal: bool = False, retriable: bool = False) -> None:
        self._error = KafkaError(code, "test error", fatal=fatal, retriable=retriable)

    def error(self):
        return self._error


class _ScriptedConsumer:
    """Hands out prepared batches, one per consume() call."""

    def __init__(self, batches):
        self._batches = list(batches)

    def consume(self, num_messages, timeout):
        return self._batches.pop(0)


def test_poll_skips_retriable_errors_and_raises_on_fatal_ones():
    good = _log("t", 1, 2)[0]
    transient = _ErrorMessage(KafkaError._TRANSPORT, retriable=True)
    fatal = _ErrorMessage(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    consumer = _PartitionConsumer(
        _ScriptedConsumer([[good[0], transient, good[1]], [fatal]]), "t", 0
    )
    consumer.next_offset = 0
    assert consumer.poll(10, 0.1) == good
    assert consumer.next_offset is None  # the queue moved: re-assign unless the caller confirms
    with pytest.raises(KafkaException):
        consumer.poll(10, 0.1)


def test_display_data_names_the_source_without_secrets():
    config = KafkaConfig(
        bootstrap_servers="broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="reader",
        sasl_password="env:H3_TEST_KAFKA_PASSWORD",
    )
    shown = ReadFromKafka(config, ["a", "b"], group_id="g", stop="end_at_launch").display_data()
    assert shown["topics"] == "a, b"
    assert shown["groupId"] == "g"
    assert shown["stop"] == "end_at_launch"
    assert shown["bootstrapServers"] == "broker:9093"
    assert "password" not in repr(shown).lower()


def _warm_planned(cluster, queued_min_messages: int = 10):
    """A planner as on the local runner, which starts the partitions' consumers."""
    config = CONFIG.with_extra({"queued.min.messages": str(queued_min_messages)})
    settings = _ReaderSettings(config, "g", cluster.factory(), timeout_s=5)
    planner = _PlanPartitionsFn(
        settings,
        ("events",),
        {"start": "earliest", "start_fallback": "earliest", "stop": "end_at_launch"},
        warm=True,
    )
    return settings, {plan.partition: plan for plan in planner.process(None)}


def test_a_local_read_starts_each_partition_consumer_when_planned_and_reads_with_it(cluster):
    """The local runner reads partitions one after another: their consumers fetch from the
    moment the read is planned (each first fetch took 0.2-0.3 s on the local broker)."""
    settings, plans = _warm_planned(cluster)
    assert len(WARM) == 3 and cluster.open_consumers == 3  # the planner's own client closed
    fn = _read_fn(cluster, settings=settings)
    for partition, plan in plans.items():
        restriction = PartitionOffsetRange(plan.start_offset, plan.stop_offset, "events", partition)
        outputs, _, _, _ = _process(fn, plan, restriction)
        assert _offsets(outputs) == list(range(20))
        assert cluster.open_consumers == 2 - partition  # none new; each finished one closed
    assert len(WARM) == 0
    fn.teardown()


def test_a_partition_with_a_long_backlog_is_not_started_ahead(cluster, monkeypatch):
    """The local broker sends a started consumer its whole partition, which waits in memory."""
    monkeypatch.setattr(reader_module, "MAX_WARM_RECORDS", 19)
    _warm_planned(cluster)  # 20 records in each partition
    assert len(WARM) == 0 and cluster.open_consumers == 0


def test_a_partition_shorter_than_a_consumer_queue_is_not_started_ahead(cluster):
    """Its consumer would keep fetching at the log end, which the local broker answers at once."""
    _warm_planned(cluster, queued_min_messages=21)  # 20 records in each partition
    assert len(WARM) == 0 and cluster.open_consumers == 0


def test_planned_consumers_nobody_took_are_closed_and_early_errors_reach_the_reader(cluster):
    settings, plans = _warm_planned(cluster)
    cluster.go_down()  # heard by the planned consumers before any reader took them
    cluster.reachable = True
    fn = _read_fn(cluster, settings=settings)
    assert not fn._outage.seen
    fn._consumer("events", 0, plans[0].start_offset)  # taken: its error reaches the reader
    assert fn._outage.seen
    fn._consumer("events", 1, plans[1].start_offset + 1)  # another start: a new consumer
    assert len(WARM) == 2 and cluster.open_consumers == 4  # partitions 1 and 2 still wait
    fn.teardown()
    assert len(WARM) == 0 and cluster.open_consumers == 0


def test_offsets_before_the_range_after_a_client_reset_are_not_re_emitted(cluster):
    """After an offset reset the client may hand out offsets below the range: they are skipped."""
    fn = _read_fn(cluster)
    plan = PartitionPlan("events", 0, 12, 15, end_offset_at_launch=20)
    restriction = PartitionOffsetRange(12, 15, "events", 0)
    reader = fn._consumer("events", 0, 12)
    reader.position_at(12)
    reader.consumer.assign([TopicPartition("events", 0, 3)])  # what a reset to earlier does
    outputs, _, _, _ = _process(fn, plan, restriction)
    assert _offsets(outputs) == [12, 13, 14]


def test_committed_offset_past_the_log_end_falls_back(cluster):
    cluster.committed[("g", "events", 0)] = 500  # e.g. the topic was recreated
    plans = _plan(cluster, start="committed", start_fallback="earliest")
    assert plans[("events", 0)].start_offset == 0


def test_explicit_stop_inside_a_compacted_gap(cluster):
    cluster.topics["events"] = _log("events", 3, 20, gap_every=4)  # offsets 1, 2, 3, 5, 6, 7, 9…
    log = cluster.topics["events"]
    stop = {("events", 0): 8, ("events", 1): 1, ("events", 2): 0}
    expected = [_record(m) for m in log[0] if m.offset() < 8]
    _run(cluster, expected, start="earliest", stop=stop, batch_size=100)


def test_output_is_unbounded_only_without_a_stop():
    p = beam.Pipeline()
    stream = p | "Stream" >> ReadFromKafka(CONFIG, "t", start="earliest")
    backfill = p | "Backfill" >> ReadFromKafka(CONFIG, "t", start="earliest", stop="end_at_launch")
    capped = p | "Capped" >> ReadFromKafka(CONFIG, "t", start="earliest", max_records=5)
    assert (stream.is_bounded, backfill.is_bounded, capped.is_bounded) == (False, True, True)
    assert stream.element_type is KafkaRecord


def test_batched_emits_lists_of_one_partition_in_offset_order(cluster):
    expected = [_record(m) for log in cluster.topics["events"] for m in log]
    with TestPipeline() as p:
        batches = (
            p
            | ReadFromKafka(
                CONFIG,
                "events",
                start="earliest",
                stop="end_at_launch",
                batch_size=6,
                consumer_factory=cluster.factory(),
            ).batched()
        )
        assert_that(batches | beam.FlatMap(lambda b: b), equal_to(expected), label="Records")
        ordered = batches | beam.Map(
            lambda b: (
                len({r.partition for r in b}) == 1
                and [r.offset for r in b] == sorted(r.offset for r in b)
                and 0 < len(b) <= 6
            )
        )
        assert_that(ordered | beam.Distinct(), equal_to([True]), label="Batches")


class _TimedConsumer:
    """Records consume() calls; returns the scripted batches (librdkafka's timeout semantics
    are not simulated: the test checks which calls a poll makes)."""

    def __init__(self, batches: list[list]) -> None:
        self._batches = batches
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages, timeout):
        self.calls.append((num_messages, timeout))
        return self._batches.pop(0) if self._batches else []


def test_a_draining_poll_takes_what_is_fetched_and_waits_only_for_a_first_message():
    good = _log("t", 1, 5)[0]
    fetched = _TimedConsumer([good[:3]])
    assert _PartitionConsumer(fetched, "t", 0).poll(10, 0.1, drain=True) == good[:3]
    assert fetched.calls == [(10, 0)]  # what was there, at once

    empty_then_some = _TimedConsumer([[], [good[0]], good[1:4]])
    reader = _PartitionConsumer(empty_then_some, "t", 0)
    assert reader.poll(10, 0.1, drain=True) == good[:4]
    assert empty_then_some.calls == [(10, 0), (1, 0.1), (9, 0)]

    filling = _TimedConsumer([good])
    assert _PartitionConsumer(filling, "t", 0).poll(10, 0.1) == good
    assert filling.calls == [(10, 0.1)]  # bounded reads still fill batches
