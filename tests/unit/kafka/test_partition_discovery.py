"""Partitions added while an unbounded ReadFromKafka runs, and topics missing at launch.

The watch (a PartitionWatch element of the reader's splittable DoFn) runs here one process()
call at a time over the fake consumer of test_read_from_kafka.py, the way the runner calls it:
a call lists the partitions when due, reads the new ones, then checkpoints; the residual carries
the state to the next call. The live run on the real broker is in
tests/integration/faults/test_partitions_added.py.
"""

from __future__ import annotations

import dataclasses
import time

import apache_beam as beam
import pytest
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.kafka.partition_plan import (
    KafkaTopicNotFoundError,
    PartitionPlan,
    PartitionWatch,
    plan_partitions,
)
from transforms.kafka.reader import (
    ReadFromKafka,
    _PlanPartitionsFn,
    _ReaderSettings,
    _ReadUnboundedPartitionsFn,
)
from transforms.kafka.restriction import (
    UNBOUNDED_OFFSET,
    KafkaRestrictionProvider,
    PartitionBacklog,
    WatchRestriction,
    WatchTracker,
)
from transforms.kafka.watermark import KafkaWatermarkEstimator, ReaderWatermarkProvider

from .test_read_from_kafka import _CLUSTERS, CONFIG, FakeCluster, FakeConsumer, FakeMessage, _log

LAUNCH = frozenset({("events", 0), ("events", 1), ("events", 2)})


@pytest.fixture
def cluster(request):
    name = request.node.name
    yield FakeCluster(name, {"events": _log("events", 3, 20)})
    _CLUSTERS.pop(name, None)


def _add_partition(cluster: FakeCluster, records: int) -> int:
    """A new partition holding ``records`` records; returns its number."""
    partition = len(cluster.topics["events"])
    log = _log("events", partition + 1, records)[partition]
    cluster.topics["events"].append(log)
    return partition


def _watch_fn(cluster, group="g", discovery_s=30.0):
    settings = _ReaderSettings(CONFIG, group, cluster.factory(), timeout_s=5)
    fn = _ReadUnboundedPartitionsFn(
        settings,
        commit_offsets=True,
        idle_watermark_lag_s=2.0,
        batch_size=8,
        poll_timeout_s=0.01,
        max_process_s=1.0,
        settle_heap=False,
        partition_discovery_s=discovery_s,
    )
    fn.setup()
    return fn


def _watch(start="committed", listed_at=None) -> PartitionWatch:
    listed_at = time.time() if listed_at is None else listed_at
    return PartitionWatch(("events",), LAUNCH, start, listed_at)


def _call(fn, watch, restriction, estimator_state=None):
    """One process() call as the runner makes it (each output's time observed by the watermark
    estimator): the (partition, offset) pairs emitted, the residual, the watermark estimator and
    the bundle finalizer."""
    provider = KafkaRestrictionProvider(PartitionBacklog())
    tracker = ThreadsafeRestrictionTracker(provider.create_tracker(restriction))
    marks = ReaderWatermarkProvider()
    if estimator_state is None:
        estimator_state = marks.initial_estimator_state(watch, restriction)
    estimator = ThreadsafeWatermarkEstimator(marks.create_watermark_estimator(estimator_state))
    finalizer = beam.DoFn.BundleFinalizerParam()
    outputs = []
    for output in fn.process(
        watch, GlobalWindow(), finalizer, RestrictionTrackerView(tracker), estimator
    ):
        estimator.observe_timestamp(output.timestamp)
        outputs.append(output)
    tracker.check_done()
    residual, _delay = tracker.deferred_status()
    emitted = [(r.partition, r.offset) for batch in outputs for r in batch.value]
    return emitted, residual, estimator, finalizer


def _initial(watch: PartitionWatch) -> WatchRestriction:
    return KafkaRestrictionProvider().initial_restriction(watch)


def _due(restriction: WatchRestriction) -> WatchRestriction:
    """The same state with its last listing an hour ago: the next call lists the partitions."""
    return dataclasses.replace(restriction, checked_at=restriction.checked_at - 3600)


# ---------------------------------------------------------------- the watch, call by call


def test_the_watch_reads_only_partitions_added_after_launch(cluster):
    fn = _watch_fn(cluster)
    watch = _watch()
    restriction = _initial(watch)
    assert restriction == WatchRestriction(LAUNCH, (), watch.listed_at, watch.listed_at)

    # Nothing new: the launch partitions are never read by the watch.
    emitted, residual, _, _ = _call(fn, watch, _due(restriction))
    assert emitted == [] and residual.known == LAUNCH and residual.plans == ()

    new = _add_partition(cluster, 5)
    committed = _add_partition(cluster, 6)
    cluster.committed[("g", "events", committed)] = 2  # the group's offset wins over earliest
    emitted, residual, _, finalizer = _call(fn, watch, _due(residual))
    assert emitted == [(new, o) for o in range(5)] + [(committed, o) for o in range(2, 6)]
    assert residual.known == LAUNCH | {("events", new), ("events", committed)}
    assert [(p.partition, p.start_offset, p.stop_offset) for p in residual.plans] == [
        (new, 5, UNBOUNDED_OFFSET),
        (committed, 6, UNBOUNDED_OFFSET),
    ]
    finalizer.finalize_bundle()  # new partitions commit like any other
    assert cluster.committed[("g", "events", new)] == 5
    assert cluster.committed[("g", "events", committed)] == 6
    fn.teardown()


def test_records_written_before_the_listing_are_read_without_a_group(cluster):
    fn = _watch_fn(cluster, group=None)
    watch = _watch(start="earliest")
    new = _add_partition(cluster, 3)
    emitted, residual, _, finalizer = _call(fn, watch, _due(_initial(watch)))
    assert emitted == [(new, 0), (new, 1), (new, 2)]
    assert not finalizer.has_callbacks()  # no group: nothing to commit
    fn.teardown()


def test_the_watch_state_survives_a_checkpoint_on_another_worker(cluster):
    first = _watch_fn(cluster)
    watch = _watch()
    new = _add_partition(cluster, 4)
    emitted, residual, estimator, _ = _call(first, watch, _due(_initial(watch)))
    assert emitted == [(new, o) for o in range(4)]
    first.teardown()

    # The residual resumes on a fresh DoFn (no cached consumer): new records only, and the
    # listing is not due again yet, so a partition added meanwhile waits for it.
    cluster.topics["events"][new].extend(_log("events", new + 1, 7)[new][4:])
    later = _add_partition(cluster, 2)
    second = _watch_fn(cluster)
    emitted, residual, estimator, _ = _call(
        second, watch, residual, estimator.get_estimator_state()
    )
    assert emitted == [(new, 4), (new, 5), (new, 6)]
    assert ("events", later) not in residual.known

    emitted, residual, _, _ = _call(second, watch, _due(residual), estimator.get_estimator_state())
    assert emitted == [(later, 0), (later, 1)]  # and nothing of the partitions read before
    assert [(p.partition, p.start_offset) for p in residual.plans] == [(new, 7), (later, 2)]
    second.teardown()


def test_a_failed_listing_is_retried_at_the_next_interval_without_failing_the_read(cluster):
    fn = _watch_fn(cluster)
    watch = _watch()
    cluster.reachable = False
    before = time.time()
    emitted, residual, _, _ = _call(fn, watch, _due(_initial(watch)))
    assert emitted == [] and residual.known == LAUNCH
    assert residual.checked_at >= before  # tried: the next try waits for the interval
    assert residual.listed_at == watch.listed_at  # but the watermark still waits for a listing
    fn.teardown()


def test_the_watch_watermark_follows_the_last_listing_not_its_records(cluster):
    fn = _watch_fn(cluster)
    listed_at = time.time() - 600
    watch = _watch(listed_at=listed_at)
    restriction = WatchRestriction(LAUNCH, (), listed_at, time.time())  # listing not due
    _, _, estimator, _ = _call(fn, watch, restriction)
    # Caught up, but a partition not listed yet may hold records since the last listing.
    assert estimator.current_watermark() == Timestamp.of(listed_at) - Duration.of(2)

    new = _add_partition(cluster, 0)
    before = time.time()
    _, residual, estimator, _ = _call(fn, watch, _due(restriction), estimator.get_estimator_state())
    assert estimator.current_watermark() >= Timestamp.of(before) - Duration.of(2)
    mark = estimator.current_watermark()
    # A record stamped in the future does not move it: an unlisted partition may hold older ones.
    future_ms = int((time.time() + 3600) * 1000)
    cluster.topics["events"][new].append(FakeMessage("events", new, 0, b"k", b"v", future_ms))
    emitted, _, estimator, _ = _call(fn, watch, residual, estimator.get_estimator_state())
    assert emitted == [(new, 0)] and estimator.current_watermark() == mark
    fn.teardown()


def test_partitions_keep_their_own_watermark_estimator():
    marks = ReaderWatermarkProvider()
    plan = PartitionPlan("events", 0, 0, UNBOUNDED_OFFSET, end_offset_at_launch=0)
    estimator = marks.create_watermark_estimator(marks.initial_estimator_state(plan, None))
    assert type(estimator) is KafkaWatermarkEstimator
    estimator.observe_timestamp(Timestamp(50))
    assert estimator.current_watermark() == Timestamp(50)


# ---------------------------------------------------------------- tracker and provider


def _plan(partition: int, start: int) -> PartitionPlan:
    return PartitionPlan("events", partition, start, UNBOUNDED_OFFSET, end_offset_at_launch=10)


def test_watch_tracker_claims_states_and_only_checkpoints():
    state = WatchRestriction(LAUNCH, (_plan(3, 0),), 1.0, 1.0)
    tracker = WatchTracker(state, PartitionBacklog())
    with pytest.raises(ValueError, match="checkpoint"):
        tracker.check_done()
    moved = state.advanced(0, 4)
    assert tracker.try_claim(moved) and tracker.current_restriction() == moved
    assert tracker.current_progress().remaining_work == 6  # end at discovery 10, next offset 4
    assert tracker.try_split(0.5) is None
    primary, residual = tracker.try_split(0)
    assert residual == moved and primary.plans == ()
    assert not tracker.try_claim(state) and tracker.try_split(0) is None
    tracker.check_done()
    assert not tracker.is_bounded()


def test_watch_size_and_drain():
    backlog = PartitionBacklog()
    provider = KafkaRestrictionProvider(backlog)
    state = WatchRestriction(LAUNCH, (_plan(3, 4), _plan(4, 0)), 1.0, 1.0)
    backlog.record("events", 4, 30, 100.0)  # partition 4 was polled: its end and record size
    assert provider.restriction_size(None, state) == 6 * 1.0 + 30 * 100.0
    assert provider.truncate(None, state) is None  # a drain stops the watch at once


# ---------------------------------------------------------------- planning at launch


def _plan_fn(cluster, watch_start, topics=("events",), option=None, **plan_kwargs):
    settings = _ReaderSettings(CONFIG, "g", cluster.factory(), timeout_s=5)
    kwargs = {"start": "earliest", "start_fallback": "earliest", "stop": "unbounded"}
    kwargs.update(plan_kwargs)
    return _PlanPartitionsFn(
        settings, topics, kwargs, watch_start=watch_start, topics_option=option
    )


def test_launch_plans_every_partition_then_emits_the_watch(cluster):
    before = time.time()
    *plans, watch = _plan_fn(cluster, "committed").process(None)
    assert [(p.topic, p.partition) for p in plans] == sorted(LAUNCH)
    assert isinstance(watch, PartitionWatch)
    assert (watch.topics, watch.known, watch.start) == (("events",), LAUNCH, "committed")
    assert before <= watch.listed_at <= time.time()
    bounded = list(_plan_fn(cluster, None, stop="end_at_launch").process(None))
    assert all(isinstance(p, PartitionPlan) for p in bounded) and len(bounded) == 3


def test_only_unbounded_reads_with_discovery_watch_for_partitions():
    def watch_start(**kwargs):
        return ReadFromKafka(CONFIG, "events", **kwargs)._watch_start

    assert watch_start(group_id="g") == "committed"
    assert watch_start(start="latest") == "earliest"  # a new partition holds only newer records
    assert watch_start(start="earliest", partition_discovery_s=None) is None
    assert watch_start(start="earliest", stop="end_at_launch") is None
    assert watch_start(start="earliest", max_records=5) is None
    with pytest.raises(ValueError, match="partition_discovery_s"):
        ReadFromKafka(CONFIG, "events", start="earliest", partition_discovery_s=0)


def test_a_topic_missing_at_launch_raises_naming_it_and_the_option(cluster):
    client = FakeConsumer(cluster.name, {"group.id": "g"})
    with pytest.raises(KafkaTopicNotFoundError, match="'missing' is not readable") as raised:
        plan_partitions(client, ["events", "missing"], start="earliest")
    assert raised.value.topic == "missing"
    assert "UNKNOWN_TOPIC_OR_PART" in str(raised.value)  # the supervisor's permanent-error code
    assert isinstance(raised.value, ValueError)

    fn = _plan_fn(cluster, "committed", topics=("events", "missing"), option="--inputTopic")
    with pytest.raises(KafkaTopicNotFoundError, match="'missing'.*fix --inputTopic"):
        list(fn.process(None))
