"""The record ReadFromKafka emits and WriteToKafka accepts.

A frozen dataclass rather than a tuple so downstream code names what it uses and Beam can
pickle it between workers.
"""

from __future__ import annotations

import dataclasses

__all__ = ["KafkaRecord", "Headers"]

Headers = tuple[tuple[str, bytes | None], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class KafkaRecord:
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
