"""Dead-letter records: what failed, where it came from, and the raw bytes to replay it.

Every transform that can reject input emits :class:`DeadLetter` on a tagged output instead of
dropping the element. The same record is written to a BigQuery dead-letter table
(:data:`BIGQUERY_SCHEMA`) or to a Kafka topic as JSON (:meth:`DeadLetter.to_json`).

A payload too big for the dead-letter sink is cut with :meth:`DeadLetter.truncated`, which keeps
the original length and a SHA-256 of the full payload (``transforms.size_limits.FitDeadLetters``
does it before every sink)::

    letter = letter.truncated(512 * 1024)
    letter.payload_truncated, letter.payload_length, letter.payload_sha256
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from transforms.kafka.record import KafkaRecord

__all__ = ["DeadLetter", "DEAD_LETTER_TAG", "BIGQUERY_SCHEMA"]

#: The tag of the dead-letter output of every transform in this package.
DEAD_LETTER_TAG = "dead_letter"

#: BigQuery schema of a dead-letter table, in the JSON-schema form ``bq`` and Beam accept.
BIGQUERY_SCHEMA: dict[str, list[dict[str, str]]] = {
    "fields": [
        {"name": "stage", "type": "STRING", "mode": "REQUIRED"},
        {"name": "error_type", "type": "STRING", "mode": "REQUIRED"},
        {"name": "error_message", "type": "STRING", "mode": "REQUIRED"},
        {"name": "topic", "type": "STRING", "mode": "NULLABLE"},
        {"name": "partition", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "offset", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "key", "type": "BYTES", "mode": "NULLABLE"},
        {"name": "payload", "type": "BYTES", "mode": "NULLABLE"},
        {"name": "failed_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
        {"name": "payload_truncated", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "payload_length", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "payload_sha256", "type": "STRING", "mode": "NULLABLE"},
    ]
}

#: Columns only a truncated letter fills; BigQuery rows leave them out otherwise, so dead-letter
#: tables created before they existed keep accepting the other letters.
_TRUNCATION_FIELDS = ("payload_truncated", "payload_length", "payload_sha256")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _utcnow_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected element: the original bytes, its Kafka coordinates and why it failed.

    ``stage`` names the step that rejected it (``"decode"``, ``"validate"``, ``"bigquery"``,
    ``"size"`` …) so operators can tell a malformed producer from a sink problem. A truncated
    letter (:meth:`truncated`) has ``payload_truncated`` set, the full payload's length in
    ``payload_length`` and its hex SHA-256 in ``payload_sha256``; the Kafka coordinates lead to
    the full message.
    """

    stage: str
    error_type: str
    error_message: str
    payload: bytes | None
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    failed_at: str = dataclasses.field(default_factory=_utcnow_iso)
    payload_truncated: bool = False
    payload_length: int | None = None
    payload_sha256: str | None = None

    @classmethod
    def from_record(
        cls, record: KafkaRecord, stage: str, error: BaseException | str, error_type: str = ""
    ) -> DeadLetter:
        """Build a dead letter for ``record`` from an exception or a reason string."""
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            message = str(error)
        else:
            error_type = error_type or "Rejected"
            message = error
        return cls(
            stage=stage,
            error_type=error_type,
            error_message=message,
            payload=record.value,
            key=record.key,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    @classmethod
    def from_row(
        cls,
        row: Mapping[str, Any] | tuple[KafkaRecord, Mapping[str, Any]],
        stage: str,
        error: BaseException | str,
        error_type: str = "",
        record: KafkaRecord | None = None,
    ) -> DeadLetter:
        """Dead letter for a decoded row a later stage (a sink) rejected.

        With its ``record`` the letter keeps the original Kafka bytes and coordinates; without,
        the payload is the row as JSON (BYTES values base64-encoded). A ``(KafkaRecord, row)``
        pair (``DecodeAndValidate.with_records()``) counts as a row with its record.
        """
        if record is None and isinstance(row, tuple) and len(row) == 2:
            if isinstance(row[0], KafkaRecord):
                record = row[0]
        if record is not None:
            return cls.from_record(record, stage, error, error_type=error_type)
        if isinstance(error, BaseException):
            error_type = error_type or type(error).__name__
            error = str(error)
        payload = json.dumps(row, sort_keys=True, default=_json_default).encode("utf-8")
        return cls(stage, error_type or "Rejected", error, payload)

    def truncated(self, max_payload_bytes: int) -> DeadLetter:
        """This letter with at most ``max_payload_bytes`` of its payload (itself if it fits).

        A cut records the full payload's length and SHA-256; cutting an already truncated
        letter again keeps those of the original payload.
        """
        if max_payload_bytes < 0:
            raise ValueError(f"max_payload_bytes must be >= 0, got {max_payload_bytes}")
        payload = self.payload
        if payload is None or len(payload) <= max_payload_bytes:
            return self
        if self.payload_truncated:
            length, digest = self.payload_length, self.payload_sha256
        else:
            length, digest = len(payload), hashlib.sha256(payload).hexdigest()
        return dataclasses.replace(
            self,
            payload=bytes(payload[:max_payload_bytes]),
            payload_truncated=True,
            payload_length=length,
            payload_sha256=digest,
        )

    def _json_row(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        for name in ("key", "payload"):
            if row[name] is not None:
                row[name] = base64.b64encode(row[name]).decode("ascii")
        return row

    def to_bigquery_row(self) -> dict[str, Any]:
        """Row for :data:`BIGQUERY_SCHEMA` (BYTES base64-encoded, as the BigQuery API expects).

        The truncation columns are only present for a truncated letter.
        """
        row = self._json_row()
        if not self.payload_truncated:
            for name in _TRUNCATION_FIELDS:
                del row[name]
        return row

    def to_json(self) -> bytes:
        """UTF-8 JSON for a Kafka dead-letter topic; bytes fields base64-encoded, every field
        present (``payload_truncated`` false, its length and hash null, when not cut)."""
        return json.dumps(self._json_row(), sort_keys=True).encode("utf-8")
