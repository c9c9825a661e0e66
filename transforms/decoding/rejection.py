"""Why an input was rejected: the exception decoders and validators raise, and its reason codes.

A :class:`Rejected` is a *permanent* problem with one element (retrying cannot fix it), so the
transform that catches it emits a :class:`~transforms.dead_letter.DeadLetter` whose
``error_type`` is the reason code below. Transient problems (a registry that is down) are raised
as ordinary exceptions so the runner retries the bundle.
"""

from __future__ import annotations

__all__ = ["Rejected", "Reason"]


class Reason:
    """Reason codes: the ``error_type`` of dead letters, and the names of the metrics counters."""

    EMPTY_PAYLOAD = "EmptyPayload"  # Kafka value is null (a tombstone)
    OVERSIZE = "Oversize"  # value longer than max_message_bytes
    NOT_UTF8 = "NotUtf8"  # JSON bytes that are not UTF-8
    INVALID_JSON = "InvalidJson"  # not parseable as JSON
    NOT_AN_OBJECT = "NotAnObject"  # JSON array, string, number … instead of an object
    NON_FINITE = "NonFiniteNumber"  # NaN, Infinity, or a number too large for a double
    MISSING_FIELD = "MissingField"  # a REQUIRED field is absent
    NULL_IN_REQUIRED = "NullInRequired"  # a REQUIRED field is null
    WRONG_TYPE = "WrongType"  # value of the wrong type, e.g. "12" for an INTEGER
    OUT_OF_RANGE = "OutOfRange"  # e.g. an INTEGER beyond int64, a TIMESTAMP beyond year 9999
    UNKNOWN_FIELD = "UnknownField"  # field not in the schema with unknown_fields="reject"
    INVALID_AVRO = "InvalidAvro"  # bytes the Avro writer schema cannot decode
    BAD_WIRE_FORMAT = "BadWireFormat"  # no Confluent magic byte 0 + 4-byte schema id
    UNKNOWN_SCHEMA_ID = "UnknownSchemaId"  # the registry does not know the id (HTTP 404)
    UNSUPPORTED_SCHEMA = "UnsupportedSchema"  # registry schema is not a usable Avro schema
    NO_MATCH = "NoMatch"  # inner join found no reference row for the key


class Rejected(Exception):
    """A permanent problem with one element: ``stage`` (decode/validate/…), ``reason``, message."""

    def __init__(self, stage: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep all three fields when Beam pickles the exception
        return (type(self), (self.stage, self.reason, self.message))
