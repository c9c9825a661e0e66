"""ReadFromKafka against the real local broker (noida-db), cross-checked with kcat.

Covers the issue's list: exact records and per-partition order on a multi-partition topic, resume
from committed offsets, start at a timestamp, bounded stops, keys and headers, write → read,
kill -9 and restart with nothing lost, live delivery on ``--streaming``, clear errors in bounded
time, and the multi-processing runner (pickling).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, Producer, TopicPartition
from read_to_file_pipeline import AppendToFile

from transforms.kafka.config import KafkaConfig
from transforms.kafka.partition_plan import KafkaUnavailableError
from transforms.kafka.reader import ReadFromKafka
from transforms.kafka.record import KafkaRecord
from transforms.kafka.writer import WriteToKafka

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _produce(bootstrap: str, topic: str, count: int, *, partitions: int = 3, start_ts=None):
    """``count`` records spread round-robin with keys and headers; returns the KafkaRecords."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    delivered = []

    def on_delivery(err, msg, headers):
        assert err is None, err
        delivered.append(
            KafkaRecord(
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.key(),
                msg.value(),
                msg.timestamp()[1],
                headers,
            )
        )

    for i in range(count):
        headers = (("seq", b"%d" % i), ("empty", None)) if i % 2 else ()
        producer.produce(
            topic,
            key=b"key-%d" % i,
            value=b"value-%d" % i,
            partition=i % partitions,
            headers=list(headers),
            timestamp=start_ts + i if start_ts is not None else 0,
            on_delivery=lambda err, msg, h=headers: on_delivery(err, msg, h),
        )
    producer.flush(30)
    assert len(delivered) == count
    return delivered


def _kcat(bootstrap: str, topic: str) -> set[tuple[int, int, str, str, int]]:
    """An independent client's view of the topic: (partition, offset, key, value, timestamp)."""
    out = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%p\t%o\t%k\t%s\t%T\n"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows = set()
    for line in out.splitlines():
        partition, offset, key, value, ts = line.split("\t")
        rows.add((int(partition), int(offset), key, value, int(ts)))
    return rows


def _committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def _read_file(path: Path) -> list[tuple[int, int, int, int]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [tuple(int(x) for x in line.split()) for line in lines if line.count(" ") == 3]


def _read(p, kafka_config, topic, **kwargs):
    return p | ReadFromKafka(kafka_config, topic, **kwargs)


def test_exact_records_in_partition_order_cross_checked_with_kcat(
    kafka_bootstrap, kafka_config, topic_factory, group_id, tmp_path
):
    topic = topic_factory(partitions=3)
    produced = _produce(kafka_bootstrap, topic, 300)
    out = tmp_path / "seen.txt"
    with TestPipeline() as p:
        records = _read(p, kafka_config, topic, group_id=group_id, stop="end_at_launch")
        assert_that(records, equal_to(produced))
        _ = records | beam.ParDo(AppendToFile(str(out)))
    seen = _read_file(out)
    for partition in range(3):
        offsets = [o for (p_, o, _, _) in seen if p_ == partition]
        assert offsets == list(range(100)), f"partition {partition} out of order or incomplete"
    assert _kcat(kafka_bootstrap, topic) == {
        (r.partition, r.offset, r.key.decode(), r.value.decode(), r.timestamp_ms) for r in produced
    }
    # The bundle finalizer committed the end of every partition for the group.
    assert _committed(kafka_bootstrap, group_id, topic) == [100, 100, 100]


def test_resume_from_committed_offsets_no_gap_no_loss(
    kafka_bootstrap, kafka_config, topic_factory, group_id
):
    topic = topic_factory(partitions=3)
    produced = _produce(kafka_bootstrap, topic, 90)
    first_stop = {(topic, 0): 10, (topic, 1): 0, (topic, 2): 25}
    with TestPipeline() as p:
        records = _read(p, kafka_config, topic, group_id=group_id, stop=first_stop)
        assert_that(
            records, equal_to([r for r in produced if r.offset < first_stop[(topic, r.partition)]])
        )
    assert _committed(kafka_bootstrap, group_id, topic) == [10, -1001, 25]
    with TestPipeline() as p:
        records = _read(p, kafka_config, topic, group_id=group_id, stop="end_at_launch")
        assert_that(
            records, equal_to([r for r in produced if r.offset >= first_stop[(topic, r.partition)]])
        )


def test_start_at_timestamp(kafka_bootstrap, kafka_config, topic_factory):
    topic = topic_factory(partitions=2)
    base = int(time.time() * 1000) - 600_000  # noida-db hides records older than retention
    produced = _produce(kafka_bootstrap, topic, 40, partitions=2, start_ts=base)
    with TestPipeline() as p:
        late = _read(p, kafka_config, topic, start=base + 30, stop="end_at_launch")
        assert_that(late, equal_to([r for r in produced if r.timestamp_ms >= base + 30]))


def test_stop_timestamp_and_max_records_bounded(kafka_bootstrap, kafka_config, topic_factory):
    topic = topic_factory(partitions=2)
    base = int(time.time() * 1000) - 600_000  # noida-db hides records older than retention
    produced = _produce(kafka_bootstrap, topic, 40, partitions=2, start_ts=base)
    with TestPipeline() as p:
        before = p | "UntilTime" >> ReadFromKafka(
            kafka_config, topic, start="earliest", stop_timestamp_ms=base + 10
        )
        assert_that(
            before, equal_to([r for r in produced if r.timestamp_ms < base + 10]), label="ts"
        )
        six = p | "SixRecords" >> ReadFromKafka(
            kafka_config, topic, start="earliest", max_records=6
        )
        assert_that(
            six,
            equal_to([r for r in produced if r.offset < 3]),
            label="max",
        )


def test_write_to_kafka_then_read_round_trip(kafka_config, topic_factory):
    topic = topic_factory(partitions=3)
    rows = [
        KafkaRecord("src", 0, i, b"k%d" % i, b"v%d" % i, 0, (("n", b"%d" % i),)) for i in range(30)
    ]
    with TestPipeline() as p:
        _ = p | beam.Create(rows) | WriteToKafka(kafka_config, topic)
    with TestPipeline() as p:
        got = _read(p, kafka_config, topic, start="earliest", stop="end_at_launch") | beam.Map(
            lambda r: (r.key, r.value, r.headers)
        )
        assert_that(got, equal_to([(r.key, r.value, r.headers) for r in rows]))


def test_multi_processing_runner(kafka_bootstrap, kafka_config, topic_factory, group_id):
    topic = topic_factory(partitions=3)
    produced = _produce(kafka_bootstrap, topic, 60)
    options = PipelineOptions(direct_running_mode="multi_processing", direct_num_workers=2)
    with TestPipeline(options=options) as p:
        records = _read(p, kafka_config, topic, group_id=group_id, stop="end_at_launch")
        assert_that(records, equal_to(produced))
    assert _committed(kafka_bootstrap, group_id, topic) == [20, 20, 20]


def test_unknown_topic_and_unreachable_broker_fail_fast(kafka_config):
    started = time.monotonic()
    with pytest.raises(Exception, match="is not readable"):
        with TestPipeline() as p:
            _read(p, kafka_config, "no-such-topic-h3", start="earliest", timeout_s=5)
    assert time.monotonic() - started < 30
    dead = KafkaConfig(bootstrap_servers="127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(Exception, match=KafkaUnavailableError.__name__ + "|failed within"):
        with TestPipeline() as p:
            _read(p, dead, "events", start="earliest", timeout_s=3)
    assert time.monotonic() - started < 30


def _pipeline_process(bootstrap, topic, out, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "read_to_file_pipeline.py"),
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--out",
            str(out),
            *args,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.timeout(180)
def test_kill_9_mid_run_and_restart_loses_nothing(
    kafka_bootstrap, topic_factory, group_id, tmp_path
):
    topic = topic_factory(partitions=3)
    count = 2400
    produced = _produce(kafka_bootstrap, topic, count)
    out = tmp_path / "out.txt"
    # Small polls and a slow sink (~0.6 s of records per bundle): many bundles. Kill as soon as
    # the first bundle's offsets are committed, i.e. in the middle of a later bundle.
    args = ("--group", group_id, "--bounded", "--delay-s", "0.001", "--batch-size", "50")
    proc = _pipeline_process(kafka_bootstrap, topic, out, *args)
    try:
        _wait_for(
            lambda: sum(max(c, 0) for c in _committed(kafka_bootstrap, group_id, topic)) > 0,
            90,
            "the first committed offsets",
        )
    finally:
        _kill(proc)  # SIGKILL mid-run: no finish_bundle, no commit for the open bundle
    before_restart = len(_read_file(out))
    assert before_restart < count, "the run finished before it could be killed"
    proc = _pipeline_process(kafka_bootstrap, topic, out, *args)
    try:
        proc.wait(120)
    finally:
        _kill(proc)
    assert proc.returncode == 0
    seen = {(p_, o) for (p_, o, _, _) in _read_file(out)}
    expected = {(r.partition, r.offset) for r in produced}
    assert expected - seen == set(), f"lost {len(expected - seen)} records"
    # Restarted from the commits, not from offset 0: the duplicates are only the killed bundle.
    assert len(_read_file(out)) < count + before_restart


@pytest.mark.timeout(120)
def test_streaming_delivers_live_under_two_seconds(kafka_bootstrap, topic_factory, tmp_path):
    topic = topic_factory(partitions=3)
    out = tmp_path / "live.txt"
    proc = _pipeline_process(kafka_bootstrap, topic, out, "--runner=FnApiRunner", "--streaming")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    try:
        sent = 0

        def warm() -> bool:
            nonlocal sent
            producer.produce(topic, value=b"warm-up", partition=sent % 3)
            producer.flush(10)
            sent += 1
            time.sleep(0.2)
            return len(_read_file(out)) > 0

        _wait_for(warm, 90, "the streaming pipeline to deliver its first record")
        time.sleep(1.0)
        before = len(_read_file(out))
        for i in range(6):
            producer.produce(topic, value=b"live-%d" % i, partition=i % 3)
            producer.flush(10)
            time.sleep(0.3)
        _wait_for(lambda: len(_read_file(out)) >= before + 6, 10, "the live records")
        assert proc.poll() is None, "the streaming pipeline stopped"
    finally:
        _kill(proc)
    live = _read_file(out)[before:]
    latencies = [received - ts for (_, _, ts, received) in live]
    assert len(live) == 6 and max(latencies) < 2000, latencies
