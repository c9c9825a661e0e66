"""Kafka I/O in pure Python: a splittable-DoFn reader, a batching writer and their typed config.

Usage::

    from transforms.kafka import KafkaConfig, ReadFromKafka, WriteToKafka

    config = KafkaConfig(bootstrap_servers="broker:9092")
    records = p | ReadFromKafka(config, topics=["events"], group_id="my-pipeline")
"""

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig, KafkaConfigError
from transforms.kafka.reader import ReadFromKafka
from transforms.kafka.record import KafkaRecord, KafkaRecordCoder
from transforms.kafka.writer import KafkaWriteError, KafkaWriteResult, WriteToKafka

__all__ = [
    "KafkaConfig",
    "KafkaConfigError",
    "KafkaRecord",
    "KafkaRecordCoder",
    "KafkaWriteError",
    "KafkaWriteResult",
    "LOCAL_BROKER_SETTINGS",
    "ReadFromKafka",
    "WriteToKafka",
]
