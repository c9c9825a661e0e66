"""The backlog the streaming reader reports to the runner equals the real lag on the broker.

Dataflow's streaming autoscaler reads ``restriction_size`` of the residual restriction at each
checkpoint (and the tracker's progress). Here the unbounded reader runs one bundle against the
real local broker, as a runner calls it, while records keep arriving; the reported size must be
(broker's end offset − the residual's start) × the record size, and the residual's progress must
agree.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.window import GlobalWindow
from confluent_kafka import Consumer, TopicPartition
from export_events import produce

from transforms.kafka.partition_plan import plan_partitions
from transforms.kafka.reader import _ReaderSettings, _ReadUnboundedPartitionsFn
from transforms.kafka.restriction import KafkaOffsetTracker, KafkaRestrictionProvider
from transforms.kafka.watermark import KafkaWatermarkEstimator

pytestmark = pytest.mark.integration

RECORD_BYTES = 200


def _end_offset(kafka_config, topic: str) -> int:
    consumer = Consumer(kafka_config.consumer_dict("backlog-check"))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        consumer.close()


def test_reported_backlog_is_the_real_lag(kafka_config, topic_factory, group_id):
    topic = topic_factory(partitions=1)
    produce(kafka_config, topic, [b"x" * RECORD_BYTES] * 5000)
    settings = _ReaderSettings(kafka_config, group_id, None, timeout_s=10)
    client = settings.new_consumer()
    (plan,) = plan_partitions(client, [topic], start="earliest")
    client.close()
    # A bundle budget of 0: every bundle checkpoints after its first batch (or at once while the
    # consumer's first fetch is not back), with most of the backlog left; like a runner, resume
    # the residual until a bundle has read something.
    fn = _ReadUnboundedPartitionsFn(
        settings,
        commit_offsets=False,
        idle_watermark_lag_s=2.0,
        batch_size=100,
        poll_timeout_s=0.1,
        max_process_s=0.0,
        settle_heap=False,
    )
    fn.setup()
    provider = KafkaRestrictionProvider()
    try:
        restriction, read = provider.initial_restriction(plan), 0
        for _ in range(50):
            tracker = ThreadsafeRestrictionTracker(
                KafkaOffsetTracker(restriction, provider.backlog)
            )
            outputs = list(
                fn.process(
                    plan,
                    GlobalWindow(),
                    beam.DoFn.BundleFinalizerParam(),
                    RestrictionTrackerView(tracker),
                    ThreadsafeWatermarkEstimator(KafkaWatermarkEstimator(None)),
                )
            )
            read += sum(len(batch.value) for batch in outputs)
            residual, _ = tracker.deferred_status()
            restriction = residual
            if read:
                break
        produce(kafka_config, topic, [b"y" * RECORD_BYTES] * 700)  # more arrives meanwhile
        assert 0 < read < 5000
        assert residual.start == read
    finally:
        fn.teardown()

    end_seen = provider.backlog.end_offset(topic, 0)  # what the reader saw at its last poll
    assert end_seen == 5000
    assert provider.restriction_size(plan, residual) == (end_seen - read) * RECORD_BYTES
    # The residual's tracker (where the runner resumes) reports the same as remaining work.
    progress = KafkaOffsetTracker(residual, provider.backlog).current_progress()
    assert (progress.completed_work, progress.remaining_work) == (0, end_seen - read)
    # The real lag now is larger (700 arrived since); the next poll's report catches up.
    assert _end_offset(kafka_config, topic) - read == (end_seen - read) + 700
