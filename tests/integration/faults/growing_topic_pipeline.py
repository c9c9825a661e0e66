"""A streaming ReadFromKafka pipeline that lists partitions often, for test_partitions_added.py.

Kafka → ReadFromKafka (unbounded, ``partition_discovery_s`` from the command line) → a fused step
that appends ``partition offset timestamp_ms received_ms`` per record to a file as it arrives.

    python tests/integration/faults/growing_topic_pipeline.py --bootstrap H:P --topic T \
        --out F --group G --discovery-s 2 --runner=FnApiRunner --streaming
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.reader import ReadFromKafka

__all__ = ["AppendLines", "main"]


class AppendLines(beam.DoFn):
    """Appends each record's coordinates and the time it arrived, one write per record."""

    def __init__(self, path: str) -> None:
        self._path = path

    def setup(self) -> None:
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def process(self, record):
        received_ms = int(time.time() * 1000)
        line = f"{record.partition} {record.offset} {record.timestamp_ms} {received_ms}\n"
        os.write(self._fd, line.encode())

    def teardown(self) -> None:
        os.close(self._fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--discovery-s", type=float, required=True)
    args, beam_args = parser.parse_known_args(argv)
    config = KafkaConfig(bootstrap_servers=args.bootstrap).with_extra(LOCAL_BROKER_SETTINGS)
    read = ReadFromKafka(
        config,
        args.topic,
        group_id=args.group,
        start="committed",
        partition_discovery_s=args.discovery_s,
        max_process_s=0.2,
    )
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _ = p | "Read" >> read | "Sink" >> beam.ParDo(AppendLines(args.out))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    main()
