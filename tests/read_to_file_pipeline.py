"""A ReadFromKafka pipeline run as a subprocess by the reader's kill -9, live-delivery and
added-partition tests.

Kafka → ReadFromKafka → a fused file sink that appends ``partition offset timestamp_ms
received_ms`` per record. The sink fsyncs in ``finish_bundle``, i.e. before the bundle completes
and therefore before the reader's finalizer commits its offsets: what is committed is on disk.

    python tests/read_to_file_pipeline.py --bootstrap H:P --topic T --out F \
        [--group G] [--bounded] [--delay-s 0.001] [--batch-size 50] [--discovery-s 2] \
        [--streaming]
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

__all__ = ["AppendToFile", "main"]


class AppendToFile(beam.DoFn):
    """Writes each record's coordinates as it arrives; durable (fsync) at the end of a bundle."""

    def __init__(self, path: str, delay_s: float = 0.0) -> None:
        self._path = path
        self._delay_s = delay_s

    def start_bundle(self) -> None:
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def process(self, record):
        received_ms = int(time.time() * 1000)
        line = f"{record.partition} {record.offset} {record.timestamp_ms} {received_ms}\n"
        os.write(self._fd, line.encode())
        if self._delay_s:
            time.sleep(self._delay_s)

    def finish_bundle(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--group")
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--discovery-s", type=float, help="partition listing interval (unbounded)")
    args, beam_args = parser.parse_known_args(argv)
    config = KafkaConfig(bootstrap_servers=args.bootstrap).with_extra(LOCAL_BROKER_SETTINGS)
    read = ReadFromKafka(
        config,
        args.topic,
        group_id=args.group,
        start="committed" if args.group else "earliest",
        stop="end_at_launch" if args.bounded else "unbounded",
        batch_size=args.batch_size,
        max_process_s=0.2,
        **({"partition_discovery_s": args.discovery_s} if args.discovery_s else {}),
    )
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _ = p | "Read" >> read | "Sink" >> beam.ParDo(AppendToFile(args.out, args.delay_s))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    main()
