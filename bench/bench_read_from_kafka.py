"""Benchmark: ReadFromKafka → Count on the DirectRunner vs a raw confluent-kafka consume loop.

Also times ``ReadFromKafka(...).batched()`` (one list per polled batch) → sum of lengths. The
fair baseline reads every field the reader exposes (offset, key, value, timestamp, headers); a
loop that only touches values is timed too. All readers use the same consumer settings and
``consume()`` batch size (``--batch-size``).

Same run, same broker, same topic: produces N small messages once (default 1M), waits for the
broker to settle (noida-db rewrites its state after writes), then times each reader R times
(default 3) and prints msgs/s per repetition, the medians and the ratio (target >= 0.5).
It also prints messages per CPU-second of this process (all threads): on a shared, busy machine
that is the steadier measure of what each reader costs.

Every reader starts from the same collector state: the heap is settled
(:func:`transforms.kafka.heap.settle_heap`, which ReadFromKafka's workers do at setup) right before
each timing, so the raw loops get the same help from ``gc.freeze`` as the reader.

    .venv/bin/python bench/bench_read_from_kafka.py --bootstrap 127.0.0.1:19392 --count 1000000

The Beam time includes pipeline construction and the launch-time partition planning: it is what
a user waits for. Use a private broker for 1M messages (the snapshot noida-db writes is large).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.heap import settle_heap
from transforms.kafka.reader import ReadFromKafka


class Timer:
    """Wall-clock and process CPU time (all threads) of a block."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def produce(admin: AdminClient, bootstrap: str, topic: str, count: int, partitions: int) -> float:
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20})
    started = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=b"event-%08d" % i, key=b"%d" % (i % 1000))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return count / (time.perf_counter() - started)


def raw_consume(
    bootstrap: str, topic: str, count: int, partitions: int, batch_size: int, *, all_fields: bool
) -> Timer:
    """The baseline: one consumer, batched consume, the reader's consumer settings.

    ``all_fields`` reads what the reader exposes per message (offset, key, value, timestamp,
    headers) — the fair comparison; otherwise only each message's value is touched.
    """
    settings = {"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}"}
    settings.update(LOCAL_BROKER_SETTINGS)
    consumer = Consumer(settings)
    with Timer() as timer:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        seen = 0
        while seen < count:
            for message in consumer.consume(num_messages=batch_size, timeout=1.0):
                if message.error() is not None:
                    continue
                if all_fields:
                    fields = (
                        message.offset(),
                        message.key(),
                        message.value(),
                        message.timestamp()[1],
                        message.headers(),
                    )
                    seen += fields[2] is not None
                elif message.value() is not None:
                    seen += 1
    consumer.close()
    return timer


def beam_read(bootstrap: str, topic: str, count: int, batch_size: int, *, batched: bool) -> Timer:
    """ReadFromKafka → count on the DirectRunner; ``batched`` counts ``.batched()`` lists."""
    config = KafkaConfig(bootstrap_servers=bootstrap).with_extra(LOCAL_BROKER_SETTINGS)
    read = ReadFromKafka(
        config, topic, start="earliest", stop="end_at_launch", batch_size=batch_size
    )
    with Timer() as timer:
        p = beam.Pipeline()
        if batched:
            sizes = p | read.batched() | beam.Map(len)
            total = sizes | beam.CombineGlobally(sum)
        else:
            total = p | read | beam.combiners.Count.Globally()
        _ = total | beam.Map(lambda n: Metrics.counter("bench", "records").inc(n))
        result = p.run()
        result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_name("records"))
    counted = [c.committed for c in query["counters"]]
    if counted != [count]:
        raise RuntimeError(f"ReadFromKafka counted {counted}, expected {count}")
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="consume(num_messages=...) for every reader"
    )
    parser.add_argument("--settle-s", type=float, default=15.0, help="wait after producing")
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic = f"bench-read-{uuid.uuid4().hex[:8]}"
    rate = produce(admin, args.bootstrap, topic, args.count, args.partitions)
    print(f"produced {args.count} messages to {topic}: {rate:,.0f} msgs/s")
    time.sleep(args.settle_s)
    size = args.batch_size
    readers = {
        "raw loop, all fields": lambda: raw_consume(
            args.bootstrap, topic, args.count, args.partitions, size, all_fields=True
        ),
        "raw loop, value only": lambda: raw_consume(
            args.bootstrap, topic, args.count, args.partitions, size, all_fields=False
        ),
        "ReadFromKafka → Count": lambda: beam_read(
            args.bootstrap, topic, args.count, size, batched=False
        ),
        ".batched() → sum(len)": lambda: beam_read(
            args.bootstrap, topic, args.count, size, batched=True
        ),
    }
    runs: dict[str, list[Timer]] = {name: [] for name in readers}
    try:
        for rep in range(args.repetitions):
            for name, read in readers.items():
                settle_heap(min_interval_s=0)
                runs[name].append(read())
            print(
                f"rep {rep + 1}: "
                + ", ".join(
                    f"{name} {args.count / timers[-1].wall:,.0f} msgs/s "
                    f"({args.count / timers[-1].cpu:,.0f}/CPU-s)"
                    for name, timers in runs.items()
                )
            )
    finally:
        admin.delete_topics([topic])[topic].result(30)
    medians = {}
    for name, timers in runs.items():
        wall = args.count / statistics.median(t.wall for t in timers)
        cpu = args.count / statistics.median(t.cpu for t in timers)
        medians[name] = (wall, cpu)
        print(f"median {name:22}: {wall:,.0f} msgs/s, {cpu:,.0f} msgs/CPU-s")
    for baseline in list(readers)[:2]:
        raw_wall, raw_cpu = medians[baseline]
        for name in list(readers)[2:]:
            wall, cpu = medians[name]
            print(
                f"ratio {name} / {baseline}: {wall / raw_wall:.2f} wall-clock (target >= 0.5), "
                f"{cpu / raw_cpu:.2f} per CPU-second"
            )


if __name__ == "__main__":
    main()
