"""A ReadFromKafka pipeline whose downstream step never returns, run with the stall watchdog.

Started as a subprocess by test_watchdog.py. It takes the Kafka source flags of every pipeline
(``KAFKA_SOURCE``, including ``--progressSeconds`` and ``--stallTimeoutSeconds``) and starts the
watchdog the way the pipelines' ``run()`` do. Every record reaches a step that sleeps forever:
on a topic with backlog the pipeline stalls; on an idle topic it just waits for records.

    python tests/integration/faults/blocked_read_pipeline.py --bootstrapServers=H:P \
        --inputTopic=T --consumerGroupId=G --startOffset=earliest --stallTimeoutSeconds=5 \
        --progressSeconds=1 --runner=FnApiRunner --streaming
"""

from __future__ import annotations

import contextlib
import logging
import time

import apache_beam as beam

from pipelines.common.options import KAFKA_SOURCE, options_class, parse_and_validate, validate
from pipelines.common.watchdog import watchdog_from_options
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.kafka.reader import ReadFromKafka

__all__ = ["BlockForever", "main"]

_Options = options_class("BlockedReadOptions", KAFKA_SOURCE)


class BlockForever(beam.DoFn):
    """A sink that hangs on its first record (as a stuck network call would)."""

    def process(self, record):
        while True:
            time.sleep(60)


def main(argv: list[str] | None = None) -> None:
    options = parse_and_validate(argv, _Options, KAFKA_SOURCE)
    values = validate(options, KAFKA_SOURCE)
    config = KafkaConfig.from_options(values).with_extra(LOCAL_BROKER_SETTINGS)
    read = ReadFromKafka(
        config,
        values["inputTopic"],
        group_id=values["consumerGroupId"],
        start="committed",
        start_fallback=values["startOffset"],
        batch_size=100,  # the first batch leaves a lag behind when the sink blocks
    )
    with watchdog_from_options(values) or contextlib.nullcontext():
        with beam.Pipeline(options=options) as p:
            _ = p | "Read" >> read | "Block" >> beam.ParDo(BlockForever())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    main()
