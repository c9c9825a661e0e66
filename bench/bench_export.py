"""Benchmark the export pipelines against a raw confluent-kafka consume loop, in the same run.

Produces ``--events`` credit-card JSON events to a fresh topic on the local broker, then times
(wall clock, ``--repeats`` runs each, median reported):

* ``raw consume``: confluent-kafka ``consume()`` of every message, nothing else (the baseline);
* ``kafka_to_gcs``: ``pipelines.kafka_to_gcs.run`` — read → decode/validate → ``--filter`` →
  tf.Example TFRecord shards in a local directory (DirectRunner, this process);
* ``kafka_to_bigquery FILE_LOADS``: ``pipelines.kafka_to_bigquery.run --writeMethod=FILE_LOADS``
  — the same source → Parquet files on the GCS emulator → one load job into the BigQuery
  emulator (all ``--events``; the time includes the load job);
* ``load job alone``: the same rows as one Parquet file (the format FILE_LOADS writes for this
  schema) on the GCS emulator, loaded by one job — the emulator's own load time, for scale
  (read + load is FILE_LOADS' ceiling);
* ``kafka_to_bigquery``: ``pipelines.kafka_to_bigquery.run`` — the same source → streaming
  inserts into the BigQuery emulator (``--bq-events`` of them: the emulator is the bottleneck);
* ``insertAll loop``: the same rows, already decoded, sent with google-cloud-bigquery
  ``insert_rows_json`` in batches of 500 — the emulator's own ceiling, for scale.

Before each timed run the benchmark waits for the stack's broker to go idle: noida-db rewrites
its whole state a few seconds after each change (a pipeline's offset commits are one), burning a
core for seconds, which otherwise lands in whichever run comes next.

Pipeline times include pipeline start-up. CPU-seconds (user + system of this process, which runs
the pipelines in-process) are printed per run as µs of CPU per row. Needs the local stack
(``scripts/stack.sh up``; pass its ports from ``scripts/stack.sh env``)::

    .venv/bin/python bench/bench_export.py --events 200000 --bq-events 50000 \
        --bootstrap 127.0.0.1:9092 --bigquery-endpoint http://127.0.0.1:9050 \
        --storage-endpoint http://127.0.0.1:9023
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import tensorflow  # noqa: F401 - imported up front so no timed run pays TF's import (5-20 s)
from bench_scoring import stack_kafka_pid, wait_until_idle
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from google.cloud import bigquery

from pipelines import kafka_to_bigquery, kafka_to_gcs
from transforms.decoding.schema import bundled_schema, bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.sinks.gcp_endpoints import GcpEndpoints

_LOGGER = logging.getLogger(__name__)


def _event(i: int) -> bytes:
    row = {"event_id": f"evt-{i:08d}", "card_id": f"card-{i % 1000}", "Time": float(i)}
    row.update({f"V{k}": ((i * 7919 + k * 104729) % 20000) / 10000.0 - 1.0 for k in range(1, 29)})
    row.update({"Amount": (i * 31 % 50000) / 100.0, "Class": int(i % 577 == 0)})
    return json.dumps(row).encode()


def _produce(config: KafkaConfig, events: int, partitions: int) -> str:
    topic = f"bench-export-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(config.producer_dict())
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    producer = Producer({**config.producer_dict(), "linger.ms": "20"})
    started = time.perf_counter()
    for i in range(events):
        while True:
            try:
                producer.produce(topic, _event(i), key=f"card-{i % 1000}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    print(f"produced {events} events to {topic} in {time.perf_counter() - started:.1f}s")
    return topic


def _parquet(events: int) -> bytes:
    """The events as one Parquet file, as FILE_LOADS writes them."""
    import io

    import pyarrow.parquet as pq

    from transforms.decoding.row_validation import RowValidator
    from transforms.sinks.arrow_tables import ArrowTables

    schema = bundled_schema("creditcard")
    rows = RowValidator(schema).decode_json_fast_all([_event(i) for i in range(events)])
    buffer = io.BytesIO()
    pq.write_table(ArrowTables(schema)(rows), buffer)
    return buffer.getvalue()


def _raw_consume(config: KafkaConfig, topic: str, events: int, partitions: int) -> None:
    consumer = Consumer(config.consumer_dict(f"bench-{uuid.uuid4().hex[:8]}"))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = 0
    while seen < events:
        seen += sum(1 for m in consumer.consume(1000, 1.0) if m.error() is None)
    consumer.close()


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _timed(name: str, repeats: int, rows: int, action: Callable[[], None]) -> float:
    """Median rows/s over ``repeats`` runs of ``action``, each after the broker went idle;
    prints µs of this process's CPU/row."""
    rates = []
    broker = stack_kafka_pid()
    for attempt in range(repeats):
        wait_until_idle(broker, quiet_s=1.0)
        started, cpu = time.perf_counter(), _cpu_s()
        action()
        seconds, cpu = time.perf_counter() - started, _cpu_s() - cpu
        rates.append(rows / seconds)
        print(
            f"  {name} run {attempt + 1}: {seconds:.2f}s = {rows / seconds:,.0f} rows/s, "
            f"{cpu * 1e6 / rows:.1f} µs CPU/row"
        )
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bq-events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--bigquery-endpoint", default="http://127.0.0.1:9050")
    parser.add_argument("--storage-endpoint", default="http://127.0.0.1:9023")
    parser.add_argument("--project", default="kafka-beam-ml-local")
    parser.add_argument(
        "--skip-streaming", action="store_true", help="only the TFRecord and FILE_LOADS paths"
    )
    parser.add_argument("--settle", type=float, default=10.0, help="s for the broker to go idle")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = KafkaConfig(bootstrap_servers=args.bootstrap).with_extra(LOCAL_BROKER_SETTINGS)
    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    source = [
        f"--bootstrapServers={args.bootstrap}",
        f"--kafkaConfig={extra}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        "--filter=Amount >= 0",
        f"--project={args.project}",
    ]
    endpoints = GcpEndpoints(
        project=args.project,
        bigquery_endpoint=args.bigquery_endpoint,
        storage_endpoint=args.storage_endpoint,
    )
    bq = endpoints.bigquery_client()
    bucket = endpoints.storage_client().create_bucket(f"bench-export-{uuid.uuid4().hex[:8]}")

    topic = _produce(config, args.events, args.partitions)
    bucket.blob("load_alone.parquet").upload_from_string(_parquet(args.events))
    bq_topic = topic if args.skip_streaming else _produce(config, args.bq_events, args.partitions)
    time.sleep(args.settle)  # noida-db snapshots its state a few seconds after writes

    def to_gcs() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-export-") as out:
            kafka_to_gcs.run([*source, f"--inputTopic={topic}", f"--outputDirectory={out}"])

    def insert_loop() -> None:
        dataset = f"bench_{uuid.uuid4().hex[:8]}"
        bq.create_dataset(dataset, retry=endpoints.bigquery_retry)
        try:
            table = bq.create_table(
                bigquery.Table(
                    f"{args.project}.{dataset}.events",
                    schema=[
                        bigquery.SchemaField.from_api_repr(f)
                        for f in bundled_schema("creditcard").to_bigquery_json()["fields"]
                    ],
                )
            )
            rows = [json.loads(_event(i)) for i in range(args.bq_events)]
            for start in range(0, len(rows), 500):
                errors = bq.insert_rows_json(
                    table,
                    rows[start : start + 500],
                    row_ids=[str(i) for i in range(start, min(start + 500, len(rows)))],
                    retry=endpoints.bigquery_retry,
                )
                assert not errors, errors[:3]
        finally:
            bq.delete_dataset(dataset, delete_contents=True, retry=endpoints.bigquery_retry)

    def to_bigquery(topic_name: str, *extra: str, expect: int | None = None) -> None:
        dataset = f"bench_{uuid.uuid4().hex[:8]}"
        bq.create_dataset(dataset, retry=endpoints.bigquery_retry)
        try:
            kafka_to_bigquery.run(
                [
                    *source,
                    f"--inputTopic={topic_name}",
                    f"--outputTableSpec={args.project}:{dataset}.events",
                    f"--bigqueryEndpoint={args.bigquery_endpoint}",
                    *extra,
                ]
            )
            if expect is not None:
                rows = bq.get_table(f"{args.project}.{dataset}.events").num_rows
                assert rows == expect, f"FILE_LOADS table holds {rows} rows, not {expect}"
        finally:
            bq.delete_dataset(dataset, delete_contents=True, retry=endpoints.bigquery_retry)

    def load_job_alone() -> None:
        """The emulator's own load ceiling: the same rows as one Parquet file (the format
        FILE_LOADS writes for this schema), one job."""
        dataset = f"bench_{uuid.uuid4().hex[:8]}"
        bq.create_dataset(dataset, retry=endpoints.bigquery_retry)
        try:
            job = bq.load_table_from_uri(
                f"gs://{bucket.name}/load_alone.parquet",
                f"{args.project}.{dataset}.events",
                job_config=bigquery.LoadJobConfig(
                    source_format=bigquery.SourceFormat.PARQUET,
                    schema=[
                        bigquery.SchemaField.from_api_repr(f)
                        for f in bundled_schema("creditcard").to_bigquery_json()["fields"]
                    ],
                ),
                retry=endpoints.bigquery_retry,
            )
            job.result(timeout=600)
        finally:
            bq.delete_dataset(dataset, delete_contents=True, retry=endpoints.bigquery_retry)

    def file_loads() -> None:
        to_bigquery(
            topic,
            "--writeMethod=FILE_LOADS",
            f"--temp_location=gs://{bucket.name}/tmp",
            f"--storageEndpoint={args.storage_endpoint}",
            expect=args.events,
        )

    print(f"medians of {args.repeats} runs:")
    try:
        _report(
            args,
            config,
            topic,
            bq_topic,
            to_gcs,
            file_loads,
            load_job_alone,
            lambda: to_bigquery(bq_topic),
            insert_loop,
        )
    finally:
        for blob in endpoints.storage_client().list_blobs(bucket.name):
            blob.delete()
        bucket.delete()
        # Big topics make the shared noida-db rewrite a large snapshot after every change.
        AdminClient(config.producer_dict()).delete_topics(list({topic, bq_topic}))


def _report(
    args: argparse.Namespace,
    config: KafkaConfig,
    topic: str,
    bq_topic: str,
    to_gcs: Callable[[], None],
    file_loads: Callable[[], None],
    load_job_alone: Callable[[], None],
    to_bigquery: Callable[[], None],
    insert_loop: Callable[[], None],
) -> None:
    """Time the baseline and both pipelines; print medians and ratios."""
    base = _timed(
        "raw consume",
        args.repeats,
        args.events,
        lambda: _raw_consume(config, topic, args.events, args.partitions),
    )
    gcs = _timed("kafka_to_gcs", args.repeats, args.events, to_gcs)
    loads = _timed("kafka_to_bigquery FILE_LOADS", args.repeats, args.events, file_loads)
    alone = _timed("load job alone", args.repeats, args.events, load_job_alone)
    if not args.skip_streaming:
        base_bq = _timed(
            "raw consume (bq topic)",
            args.repeats,
            args.bq_events,
            lambda: _raw_consume(config, bq_topic, args.bq_events, args.partitions),
        )
        bigquery = _timed("kafka_to_bigquery", args.repeats, args.bq_events, to_bigquery)
        ceiling = _timed("insertAll loop", args.repeats, args.bq_events, insert_loop)
    print()
    print(f"{'path':<28}{'rows':>9}{'rows/s':>12}{'vs raw consume':>16}")
    print(f"{'raw consume (baseline)':<28}{args.events:>9}{base:>12,.0f}{1.0:>15.3f}x")
    print(f"{'kafka_to_gcs (TFRecord)':<28}{args.events:>9}{gcs:>12,.0f}{gcs / base:>15.3f}x")
    print(
        f"{'kafka_to_bigquery FILE_LOADS':<28}{args.events:>9}{loads:>12,.0f}{loads / base:>15.3f}x"
    )
    # The load job runs after the read, so the best a FILE_LOADS pipeline can do is their sum.
    ceiling_loads = 1 / (1 / base + 1 / alone)
    print(f"{'load job alone (emul.)':<28}{args.events:>9}{alone:>12,.0f}{alone / base:>15.3f}x")
    print(
        f"FILE_LOADS / (raw consume + load job alone): {loads / ceiling_loads:.3f} "
        f"(that sum: {ceiling_loads:,.0f} rows/s)"
    )
    if args.skip_streaming:
        return
    print(f"{'raw consume, bq topic':<28}{args.bq_events:>9}{base_bq:>12,.0f}{1.0:>15.3f}x")
    print(
        f"{'kafka_to_bigquery (emul.)':<28}{args.bq_events:>9}{bigquery:>12,.0f}"
        f"{bigquery / base_bq:>15.3f}x"
    )
    print(
        f"{'insertAll loop (emul.)':<28}{args.bq_events:>9}{ceiling:>12,.0f}"
        f"{ceiling / base_bq:>15.3f}x"
    )
    print(f"kafka_to_bigquery / insertAll loop: {bigquery / ceiling:.3f}")


if __name__ == "__main__":
    main()
