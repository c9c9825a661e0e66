"""Bounded reads as work units (transforms/kafka/bounded_read.py): splitting, commits, records.

The fake consumer of test_read_from_kafka stands in for librdkafka; the same read on a real
broker and on a Dask cluster is tested in tests/integration/test_dask_runner.py.
"""

from __future__ import annotations

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Duration

from transforms.kafka.bounded_read import (
    WorkUnit,
    _ReadUnitsFn,
    _UnitTracker,
    committable_offset,
    split_plans,
)
from transforms.kafka.partition_plan import UNBOUNDED_OFFSET, PartitionPlan, plan_partitions
from transforms.kafka.reader import ReadFromKafka, _ReaderSettings

from .test_read_from_kafka import CONFIG, _log, _record, cluster  # noqa: F401 (fixture)

_READ_OPTIONS = {
    "idle_watermark_lag_s": 2.0,
    "batch_size": 4,
    "poll_timeout_s": 0.01,
    "max_process_s": 1.0,
    "settle_heap": False,
}


class _Finalizer:
    def __init__(self) -> None:
        self.callbacks = []

    def register(self, callback) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        for callback in self.callbacks:
            callback()


def _reader(cluster):  # noqa: F811
    return _ReaderSettings(CONFIG, "g", cluster.factory(), 5.0)


def _plans(cluster):  # noqa: F811
    client = _reader(cluster).new_consumer()
    return plan_partitions(client, ["events"], start="earliest", stop="end_at_launch")


def _plan(start, stop, end, stop_ts=None, partition=0):
    return PartitionPlan("t", partition, start, stop, end, stop_ts)


def _ranges(units: list[WorkUnit]) -> list[tuple[int, int]]:
    return [(u.plan.start_offset, u.plan.stop_offset) for u in units]


def test_present_offsets_are_cut_into_equal_units_of_at_most_the_limit():
    units = split_plans([_plan(10, 35, 35)], max_unit_records=10)
    assert _ranges(units) == [(10, 18), (18, 26), (26, 35)]
    assert [(u.range_start, u.index, u.count) for u in units] == [
        (10, 0, 3),
        (10, 1, 3),
        (10, 2, 3),
    ]
    assert all(u.plan.stop_timestamp_ms is None for u in units)


def test_offsets_past_the_log_end_form_one_open_last_unit():
    # max_records or explicit stops past the end at launch: records still to be written.
    units = split_plans([_plan(0, 50, 20)], max_unit_records=10)
    assert _ranges(units) == [(0, 10), (10, 20), (20, 50)]
    # A pending stop time: the last unit follows the log until that time.
    units = split_plans([_plan(0, UNBOUNDED_OFFSET, 20, stop_ts=123)], max_unit_records=100)
    assert _ranges(units) == [(0, 20), (20, UNBOUNDED_OFFSET)]
    assert [u.plan.stop_timestamp_ms for u in units] == [None, 123]


def test_empty_plans_give_no_unit_and_the_limit_is_checked():
    assert split_plans([_plan(7, 7, 7), _plan(9, 5, 20)], max_unit_records=10) == []
    with pytest.raises(ValueError, match="max_unit_records"):
        split_plans([], max_unit_records=0)


def test_only_the_contiguous_run_of_finished_units_is_committable():
    assert committable_offset(0, [(10, 20), (0, 10), (20, 30)]) == 30  # any finishing order
    assert committable_offset(0, [(0, 10), (20, 30)]) == 10  # [10, 20) unfinished
    assert committable_offset(5, [(10, 20)]) == 5  # nothing from the start
    assert committable_offset(0, [(0, 10), (10, 12)]) == 12  # a stop-time unit ended early


def test_unit_tracker_claims_defers_and_reports_where_it_ended():
    tracker = _UnitTracker(5, 10)
    assert tracker.try_claim(7) and tracker.next_offset == 8
    tracker.defer_remainder(Duration.of(0.25))
    assert (tracker.current_restriction().start, tracker.deferred_s) == (8, 0.25)
    assert not tracker.try_claim(10) and tracker.done and tracker.reached() == 10
    open_ended = _UnitTracker(20, UNBOUNDED_OFFSET)
    open_ended.try_claim(24)
    assert open_ended.reached() == 25


def test_units_read_every_record_once_and_commit_each_partition_end(cluster):  # noqa: F811
    cluster.topics["events"] = _log("events", 3, 20, gap_every=4)  # compacted-style gaps
    expected = [_record(m) for log in cluster.topics["events"] for m in log]
    with TestPipeline() as p:
        read = ReadFromKafka(
            CONFIG,
            "events",
            group_id="g",
            start="earliest",
            stop="end_at_launch",
            work_units=True,  # the default on distributed runners, not on this local one
            max_unit_records=6,  # 26 offsets per partition: 5 units each
            batch_size=4,
            consumer_factory=cluster.factory(),
        )
        assert_that(p | read, equal_to(expected))
    ends = {p: log[-1].offset() + 1 for p, log in enumerate(cluster.topics["events"])}
    assert {p: o for (_, _, p), o in cluster.committed.items()} == ends
    # Unit by unit as each finished after the ones before it (finalizers), never backwards.
    for partition in range(3):
        offsets = [o for (_, _, p, o) in cluster.commit_calls if p == partition]
        assert len(offsets) == 5 and offsets == sorted(set(offsets))
    assert cluster.open_consumers == 0


def test_a_unit_finished_out_of_order_waits_for_the_partition_commit(cluster):  # noqa: F811
    log = cluster.topics["events"]
    cluster.committed[("g", "events", 0)] = 3  # not a unit boundary of this run's plan
    (unit,) = [u for u in split_plans(_plans(cluster), 10) if u.plan.partition == 0][1:]
    fn = _ReadUnitsFn(_reader(cluster), commit_units=True, **_READ_OPTIONS)
    fn.setup()
    finalizer = _Finalizer()
    outputs = list(fn.process(unit, window=GlobalWindow(), finalizer=finalizer))
    assert [r.offset for b in outputs[:-1] for r in b.value] == list(range(10, 20))
    assert outputs[-1].tag == "done_units"
    finalizer.run()
    assert cluster.commit_calls == []  # [3, 10) is not known to be read: nothing committed
    fn.teardown()
    assert len(log[0]) == 20


def test_units_resume_from_committed_offsets_and_honour_max_records(cluster):  # noqa: F811
    log = cluster.topics["events"]
    cluster.committed.update({("g", "events", 0): 5, ("g", "events", 1): 20})
    expected = [_record(m) for m in log[0][5:] + log[2]]
    with TestPipeline() as p:
        read = ReadFromKafka(
            CONFIG,
            "events",
            group_id="g",
            stop="end_at_launch",
            work_units=True,
            max_unit_records=4,
            consumer_factory=cluster.factory(),
        )
        assert_that(p | read, equal_to(expected))
    with TestPipeline() as p:
        capped = ReadFromKafka(
            CONFIG,
            "events",
            start="earliest",
            max_records=12,
            work_units=True,
            max_unit_records=3,
            consumer_factory=cluster.factory(),
        )
        assert_that(p | capped, equal_to([_record(m) for part in log for m in part[:4]]))
