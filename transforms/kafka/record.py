"""The record ReadFromKafka emits and WriteToKafka accepts.

A ``NamedTuple``: downstream code names the fields it uses, the record is immutable, and, unlike
a frozen dataclass, it is built at tuple speed (~0.5 against ~0.8 µs per record in the reader,
which builds a million a second; bench/bench_read_from_kafka.py).
:class:`KafkaRecordCoder` (registered for the type) encodes it between workers and estimates
its size without encoding it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from apache_beam import coders

__all__ = ["KafkaRecord", "KafkaRecordCoder", "Headers"]

Headers = tuple[tuple[str, bytes | None], ...]


class KafkaRecord(NamedTuple):
    """One Kafka message with its coordinates.

    ``timestamp_ms`` is the Kafka message timestamp (ms since the epoch); the reader uses it as the
    element's event time.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()

    def header(self, name: str) -> bytes | None:
        """Return the last value of header ``name`` (Kafka allows repeats), or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


class KafkaRecordCoder(coders.Coder):
    """Deterministic coder of :class:`KafkaRecord`: its fields as a tuple of primitives.

    Why: without it Beam falls back to pickling the dataclass, and its metrics sample element
    sizes by encoding them; for the reader's lists of records that pickled every record (~10 %
    of the scoring pipeline's time). :meth:`estimate_size` adds up the lengths instead.
    """

    def __init__(self) -> None:
        self._fields = coders.FastPrimitivesCoder()

    def encode(self, value: KafkaRecord) -> bytes:
        return self._fields.encode(tuple(value))

    def decode(self, encoded: bytes) -> KafkaRecord:
        topic, partition, offset, key, payload, timestamp_ms, headers = self._fields.decode(encoded)
        return KafkaRecord(
            topic, partition, offset, key, payload, timestamp_ms, tuple(map(tuple, headers))
        )

    def estimate_size(self, value: KafkaRecord) -> int:
        size = 24 + len(value.topic) + len(value.key or b"") + len(value.value or b"")
        for name, header in value.headers:
            size += len(name) + len(header or b"") + 2
        return size

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return KafkaRecord

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


coders.registry.register_coder(KafkaRecord, KafkaRecordCoder)
