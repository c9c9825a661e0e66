"""One consumer group, one running pipeline (transforms/kafka/group_lease.py) on the real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from export_events import creditcard_event, produce

from pipelines import kafka_to_gcs
from pipelines.common.supervisor import EXIT_PERMANENT
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.group_lease import STALE_S, ConsumerGroupInUseError, GroupLease

pytestmark = pytest.mark.integration

_HOLD = """
import sys, time
from transforms.kafka.config import KafkaConfig
from transforms.kafka.group_lease import GroupLease
with GroupLease(KafkaConfig(bootstrap_servers=sys.argv[1]), [sys.argv[2]], sys.argv[3]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_holder_is_refused_until_the_first_releases(kafka_config, topic_factory, group_id):
    topic = topic_factory(partitions=3)
    with GroupLease(kafka_config, [topic], group_id):
        with pytest.raises(
            ConsumerGroupInUseError, match=f"{group_id}.*is in use.*pid {os.getpid()}"
        ):
            with GroupLease(kafka_config, [topic], group_id):
                pass
        with GroupLease(kafka_config, [topic], group_id + "-other"):
            pass  # another group is not affected
    with GroupLease(kafka_config, [topic], group_id):
        pass  # released: the next run holds it


@pytest.mark.timeout(90)
def test_the_lease_of_a_killed_process_is_taken_over_once_silent(
    kafka_bootstrap, kafka_config, topic_factory, group_id
):
    topic = topic_factory(partitions=3)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, kafka_bootstrap, topic, group_id],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # no clean leave: the broker must time it out
        holder.wait(10)
    started = time.monotonic()
    with GroupLease(kafka_config, [topic], group_id):
        pass
    assert time.monotonic() - started < STALE_S + 5  # waited for it to go stale, then took it


@pytest.mark.timeout(120)
def test_an_export_with_a_group_in_use_is_refused_before_reading(
    stack_env, kafka_config, topic_factory, group_id, tmp_path
):
    topic = topic_factory(partitions=3)
    produce(kafka_config, topic, [json.dumps(creditcard_event(i)).encode() for i in range(5)])
    args = [
        f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
        f"--inputTopic={topic}",
        f"--consumerGroupId={group_id}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        f"--outputDirectory={tmp_path / 'out'}",
    ]
    with GroupLease(kafka_config, [topic], group_id):  # the "other copy"
        with pytest.raises(SystemExit) as stopped:  # no restart can fix it: exit 2
            kafka_to_gcs.run(args)
    assert stopped.value.code == EXIT_PERMANENT
    assert isinstance(stopped.value.__cause__, ConsumerGroupInUseError)
    assert "--consumerGroupId" in str(stopped.value.__cause__)
    assert not (tmp_path / "out").exists()  # nothing read, nothing written
    kafka_to_gcs.run(args)  # alone, the same export runs
    assert list((tmp_path / "out").glob("part-*"))
