"""Benchmark: WriteToKafka on the DirectRunner vs a raw confluent-kafka producer loop.

Same run, same broker, same producer settings (idempotent, acks=all, murmur2_random), same
generated messages (key = i mod 1024, 64-byte value). Each repeat writes ``--messages`` to a fresh
3-partition topic with the raw loop and then with a pipeline ``Impulse -> FlatMap(generate) ->
WriteToKafka``, checks the topic holds exactly that many messages, and deletes it. Before each
timing it waits until the broker's CPU is idle (noida-db rewrites its state after changes, see
docs/local_stack.md#kafka-broker-noida-db). Prints msgs/s for each, the ratio, and medians over
``--repeats``.

By default it starts its own noida-db on 127.0.0.1:19292 (data under a temp dir, stopped at the
end) so a million messages do not load the shared stack; ``--bootstrap`` uses an existing broker.

    .venv/bin/python bench/bench_write_to_kafka.py                  # 1M messages x 3, ~1 min
    .venv/bin/python bench/bench_write_to_kafka.py --messages 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import confluent_kafka
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka.admin import AdminClient, NewTopic

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.writer import PRODUCER_DEFAULTS, WriteToKafka

PARTITIONS = 3


def _message(i: int) -> tuple[bytes, bytes]:
    return b"%d" % (i % 1024), b"v%063d" % i


def _messages(_: bytes, count: int) -> Iterator[tuple[bytes, bytes]]:
    return map(_message, range(count))


def raw_producer_loop(config: KafkaConfig, topic: str, count: int) -> float:
    """The baseline: produce + poll(0) per message, flush at the end. Returns seconds."""
    producer = confluent_kafka.Producer({**PRODUCER_DEFAULTS, **config.producer_dict()})
    failures = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(err)

    started = time.perf_counter()
    for i in range(count):
        key, value = _message(i)
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"raw producer: {len(failures)} failed, first {failures[0]}")
    return elapsed


def beam_pipeline(config: KafkaConfig, topic: str, count: int) -> float:
    """WriteToKafka on the default DirectRunner, including pipeline start-up. Returns seconds."""
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions([])) as p:
        _ = p | beam.Impulse() | beam.FlatMap(_messages, count) | WriteToKafka(config, topic)
    return time.perf_counter() - started


def _topic_size(admin_config: dict[str, str], topic: str) -> int:
    consumer = confluent_kafka.Consumer({**admin_config, "group.id": "bench-size"})
    try:
        return sum(
            consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        )
    finally:
        consumer.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime in clock ticks


def _broker_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True)
    marker = "pid="
    if marker not in out.stdout:
        return None
    return int(out.stdout.split(marker, 1)[1].split(",", 1)[0])


def wait_until_idle(pid: int | None, limit_s: float = 120.0) -> None:
    """Wait until the broker uses < 5 % of a core over 1 s twice in a row."""
    if pid is None:
        time.sleep(5)
        return
    deadline = time.monotonic() + limit_s
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        before = _cpu_seconds(pid)
        time.sleep(1)
        quiet = quiet + 1 if _cpu_seconds(pid) - before < 0.05 else 0


def start_own_broker(port: int, data_dir: str) -> subprocess.Popen:
    spec = importlib.util.find_spec("noida_db")
    binary = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
    cmd = [str(binary), "start", "--only", "kafka", "--host", "127.0.0.1",
           "--kafka-port", str(port), "--data-dir", data_dir]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1)
            return proc
        except confluent_kafka.KafkaException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"noida-db did not answer on port {port}")


def run(bootstrap: str, broker_pid: int | None, count: int, repeats: int) -> None:
    config = KafkaConfig(bootstrap).with_extra(LOCAL_BROKER_SETTINGS)
    plain = {"bootstrap.servers": bootstrap, **LOCAL_BROKER_SETTINGS}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    rates: dict[str, list[float]] = {"raw": [], "beam": []}
    for repeat in range(1, repeats + 1):
        for name, write in (("raw", raw_producer_loop), ("beam", beam_pipeline)):
            topic = f"bench-write-{name}-{uuid.uuid4().hex[:8]}"
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=30)
            wait_until_idle(broker_pid)
            seconds = write(config, topic, count)
            landed = _topic_size(plain, topic)
            if landed != count:
                raise RuntimeError(f"{name}: {landed} of {count} messages on {topic}")
            rates[name].append(count / seconds)
            print(f"repeat {repeat} {name:>4}: {count} msgs in {seconds:6.2f} s = "
                  f"{count / seconds:9.0f} msgs/s", flush=True)  # fmt: skip
            admin.delete_topics([topic])[topic].result(timeout=30)
        print(f"repeat {repeat} ratio beam/raw: {rates['beam'][-1] / rates['raw'][-1]:.3f}")
    raw, piped = statistics.median(rates["raw"]), statistics.median(rates["beam"])
    ratios = [b / r for b, r in zip(rates["beam"], rates["raw"], strict=True)]
    print(f"median raw producer loop : {raw:9.0f} msgs/s")
    print(f"median WriteToKafka      : {piped:9.0f} msgs/s")
    print(f"ratio of the medians     : {piped / raw:.3f}")
    print(f"median of repeat ratios  : {statistics.median(ratios):.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--port", type=int, default=19292, help="port of the broker we start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.bootstrap:
        port = int(args.bootstrap.rsplit(":", 1)[1])
        run(args.bootstrap, _broker_pid(port), args.messages, args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as data_dir:
        broker = start_own_broker(args.port, data_dir)
        try:
            run(f"127.0.0.1:{args.port}", broker.pid, args.messages, args.repeats)
        finally:
            broker.terminate()  # noida-db may finish writing its snapshot first
            try:
                broker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


if __name__ == "__main__":
    main()
