"""The progress registry (transforms.progress) and what ReadFromKafka records in it."""

from __future__ import annotations

import threading
import types

import apache_beam as beam
import pytest
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.window import GlobalWindow
from confluent_kafka import TopicPartition

from transforms import progress
from transforms.kafka.config import KafkaConfig
from transforms.kafka.partition_plan import PartitionPlan
from transforms.kafka.reader import (
    ReadFromKafka,
    _PlanPartitionsFn,
    _ReaderSettings,
    _ReadPartitionsFn,
    _ReadUnboundedPartitionsFn,
)
from transforms.kafka.restriction import (
    UNBOUNDED_OFFSET,
    KafkaOffsetTracker,
    PartitionBacklog,
    PartitionOffsetRange,
)
from transforms.kafka.watermark import KafkaWatermarkEstimator
from transforms.progress import ProgressRegistry


def test_counters_add_up_and_remember_when_they_changed(registry, clock):
    registry.add(progress.CONSUMED, 1000)
    clock.advance(5)
    registry.add(progress.CONSUMED, 500)
    registry.add(progress.WRITTEN)
    clock.advance(5)
    registry.add(progress.DEAD_LETTERS, 0)  # nothing happened: no counter, no progress
    snap = registry.snapshot()
    assert dict(snap.counters) == {"consumed": 1500, "written": 1}
    assert snap.counter(progress.DEAD_LETTERS) == 0
    assert dict(snap.counters_changed_at) == {"consumed": 1005.0, "written": 1005.0}
    assert snap.last_progress_at == 1005.0
    assert snap.taken_at == 1010.0


def test_lag_is_end_minus_next_offset_and_a_growing_end_is_not_progress(registry, clock):
    registry.record_position("events", 1, 100, 150)
    registry.record_position("events", 0, 40, 40)
    clock.advance(10)
    registry.record_position("events", 1, 100, 400)  # records arrive, nothing read
    snap = registry.snapshot()
    assert [(p.name, p.position, p.end, p.lag) for p in snap.partitions] == [
        ("events[0]", 40, 40, 0),
        ("events[1]", 100, 400, 300),
    ]
    assert snap.total_lag == 300
    assert snap.last_progress_at == 1000.0
    assert snap.partitions[1].position_changed_at == 1000.0


def test_an_unknown_end_keeps_the_last_known_one(registry):
    registry.record_position("events", 0, 5, None)
    assert registry.snapshot().partitions[0].lag == 0  # unknown end: no lag claimed
    registry.record_position("events", 0, 5, 50)
    registry.record_position("events", 0, 10, -1)  # a new consumer before its first fetch
    (partition,) = registry.snapshot().partitions
    assert (partition.position, partition.end, partition.lag) == (10, 50, 40)


def test_commits_are_progress_only_when_the_offset_changes(registry, clock):
    registry.record_commit("events", 2, 70)
    clock.advance(3)
    registry.record_commit("events", 2, 70)
    (partition,) = registry.snapshot().partitions
    assert (partition.committed, partition.committed_changed_at) == (70, 1000.0)
    assert partition.position is None and partition.lag == 0
    assert registry.snapshot().last_progress_at == 1000.0


def test_a_snapshot_is_a_frozen_copy_and_reset_forgets(registry):
    registry.add("consumed", 3)
    registry.record_position("t", 0, 1, 2)
    snap = registry.snapshot()
    registry.add("consumed", 3)
    registry.record_position("t", 0, 2, 2)
    assert snap.counter("consumed") == 3 and snap.partitions[0].position == 1
    with pytest.raises(TypeError):
        snap.counters["consumed"] = 0  # read-only view
    registry.reset()
    empty = registry.snapshot()
    assert (dict(empty.counters), empty.partitions, empty.last_progress_at) == ({}, (), None)


def test_concurrent_updates_are_not_lost():
    registry = ProgressRegistry()

    def work(partition: int) -> None:
        for offset in range(1, 2001):
            registry.add("consumed", 2)
            registry.record_position("t", partition, offset, 2000)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = registry.snapshot()
    assert snap.counter("consumed") == 4 * 2000 * 2
    assert [p.position for p in snap.partitions] == [2000] * 4 and snap.total_lag == 0


# ---------------------------------------------------------------- what the reader records


class _Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, 1_000_000 + self._offset)

    def key(self):
        return None

    def value(self):
        return b"v"

    def headers(self):
        return None

    def error(self):
        return None

    def __len__(self):
        return 1


class _Consumer:
    """One partition's log in memory; its high watermark is the log's length."""

    def __init__(self, log: list[_Message], commits: list) -> None:
        self._log = log
        self._commits = commits
        self._position = 0

    def list_topics(self, topic, timeout):
        topic_md = types.SimpleNamespace(error=None, partitions={0: None})
        return types.SimpleNamespace(topics={topic: topic_md})

    def assign(self, tps):
        self._position = tps[0].offset

    def consume(self, num_messages, timeout):
        batch = [m for m in self._log if m.offset() >= self._position][:num_messages]
        if batch:
            self._position = batch[-1].offset() + 1
        return batch

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return (0, len(self._log))

    def position(self, tps):
        return [TopicPartition(tps[0].topic, tps[0].partition, self._position)]

    def commit(self, offsets, asynchronous):
        self._commits.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    def close(self):
        pass


@pytest.fixture
def process_registry():
    progress.reset()
    yield progress.REGISTRY
    progress.reset()


def _reader(fn_class, log, commits, *, max_process_s=5.0):
    settings = _ReaderSettings(
        KafkaConfig(bootstrap_servers="fake:9092"),
        "g",
        lambda _settings: _Consumer(log, commits),
        timeout_s=5,
    )
    fn = fn_class(
        settings,
        commit_offsets=True,
        idle_watermark_lag_s=2.0,
        batch_size=10,
        poll_timeout_s=0.01,
        max_process_s=max_process_s,
        settle_heap=False,
    )
    fn.setup()
    return fn


def _start(fn, plan, restriction):
    tracker = ThreadsafeRestrictionTracker(KafkaOffsetTracker(restriction, PartitionBacklog()))
    estimator = ThreadsafeWatermarkEstimator(KafkaWatermarkEstimator(None))
    finalizer = beam.DoFn.BundleFinalizerParam()
    outputs = fn.process(
        plan, GlobalWindow(), finalizer, RestrictionTrackerView(tracker), estimator
    )
    return outputs, finalizer


def test_reader_records_each_batch_before_handing_it_on_and_commits(process_registry):
    log = [_Message(offset) for offset in range(25)]
    commits: list = []
    fn = _reader(_ReadUnboundedPartitionsFn, log, commits)
    plan = PartitionPlan("events", 0, 0, UNBOUNDED_OFFSET, end_offset_at_launch=25)
    outputs, finalizer = _start(fn, plan, PartitionOffsetRange(0, UNBOUNDED_OFFSET, "events", 0))
    next(outputs)  # downstream holds the first batch (and might never return)
    snap = process_registry.snapshot()
    assert snap.counter(progress.CONSUMED) == 10
    assert [(p.name, p.position, p.end, p.lag, p.committed) for p in snap.partitions] == [
        ("events[0]", 10, 25, 15, None)
    ]
    assert len(list(outputs)) == 2  # the rest, then a checkpoint once caught up
    finalizer.finalize_bundle()
    (partition,) = process_registry.snapshot().partitions
    assert (partition.position, partition.lag, partition.committed) == (25, 0, 25)
    assert process_registry.snapshot().counter(progress.CONSUMED) == 25
    assert commits == [("events", 0, 25)]
    fn.teardown()


def test_a_bounded_read_has_no_lag_once_done_even_if_the_log_grew(process_registry):
    log = [_Message(offset) for offset in range(30)]  # 10 more than the plan's stop
    fn = _reader(_ReadPartitionsFn, log, [])
    plan = PartitionPlan("events", 3, 0, 20, end_offset_at_launch=20)
    outputs, _ = _start(fn, plan, PartitionOffsetRange(0, 20, "events", 3))
    next(outputs)
    assert process_registry.snapshot().partitions[0].end == 20  # the stop, not the log end
    list(outputs)
    (partition,) = process_registry.snapshot().partitions
    assert (partition.position, partition.lag) == (20, 0)
    fn.teardown()


def test_planning_shows_each_partition_s_backlog_before_its_first_poll(process_registry):
    log = [_Message(offset) for offset in range(40)]
    read = ReadFromKafka(
        KafkaConfig(bootstrap_servers="fake:9092"),
        "events",
        start="earliest",
        max_records=30,
        consumer_factory=lambda _settings: _Consumer(log, []),
    )
    plans = list(_PlanPartitionsFn(read._reader, read._topics, read._plan_kwargs).process(None))
    assert [(p.start_offset, p.stop_offset) for p in plans] == [(0, 30)]
    (partition,) = process_registry.snapshot().partitions
    assert (partition.name, partition.position, partition.end, partition.lag) == (
        "events[0]",
        0,
        30,  # what this read will take, not the whole log
        30,
    )


def test_counters_and_lag_are_also_beam_metrics():
    """What the registry counts inside a step is a Beam metric too (Dataflow's job-wide view)."""
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    def record(n: int) -> int:
        progress.add(progress.PREDICTIONS, n)
        progress.record_position("beam-metrics", n, 10, 10 + n)
        return n

    pipeline = TestPipeline()
    _ = pipeline | beam.Create([1, 2, 3]) | beam.Map(record)
    result = pipeline.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(progress.METRICS_NAMESPACE))
    [predictions] = [c for c in metrics["counters"] if c.key.metric.name == progress.PREDICTIONS]
    assert predictions.committed == 6
    lags = {g.key.metric.name: g.committed.value for g in metrics["gauges"]}
    assert lags == {"lag.beam-metrics.1": 1, "lag.beam-metrics.2": 2, "lag.beam-metrics.3": 3}


def test_the_lag_gauge_is_set_at_most_once_a_second_unless_caught_up():
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.testing.test_pipeline import TestPipeline

    def record(lags: tuple[int, ...]) -> None:
        for lag in lags:
            progress.record_position("gauge-throttle", len(lags), 100, 100 + lag)

    pipeline = TestPipeline()
    _ = pipeline | beam.Create([(7, 5), (7, 5, 0)]) | beam.Map(record)
    result = pipeline.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(progress.METRICS_NAMESPACE))
    lags = {g.key.metric.name: g.committed.value for g in metrics["gauges"]}
    assert lags["lag.gauge-throttle.2"] == 7  # the second set came within the interval
    assert lags["lag.gauge-throttle.3"] == 0  # caught up: always set
