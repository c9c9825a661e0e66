"""Avro payload decoders: schemaless records with a known writer schema, and Confluent framing.

The Confluent format is ``0x00`` + a 4-byte big-endian schema id + a schemaless Avro record; the
writer schema is fetched from the schema registry (``GET /schemas/ids/{id}``) with confluent-kafka's
``SchemaRegistryClient`` and kept parsed per id, so the registry sees one request per id per worker.

Failures that belong to one message raise :class:`~transforms.decoding.rejection.Rejected` (dead
letter);
a registry that is unreachable or answers 5xx raises its own error so the runner retries.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from collections.abc import Mapping
from typing import Any

import fastavro

from transforms.decoding.rejection import Reason, Rejected

__all__ = ["AvroDecoder", "ConfluentAvroDecoder", "WIRE_FORMAT_MAGIC"]

_LOGGER = logging.getLogger(__name__)
_STAGE = "decode"

#: First byte of a Confluent-framed message.
WIRE_FORMAT_MAGIC = 0
_HEADER = struct.Struct(">bI")
#: How long an unknown schema id is remembered before the registry is asked again.
_UNKNOWN_ID_TTL_S = 60.0
_MAX_DETAIL = 300


def _fullname(schema: Any) -> str | None:
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        return None
    name = schema.get("name", "")
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _reader_for(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> Any:
    """The reader schema, aliased to the writer's record name so differently named but
    compatible schemas resolve (Avro matches records by name; aliases are the spec's remedy)."""
    writer_name, reader_name = _fullname(writer), _fullname(reader)
    if writer_name and reader_name and writer_name != reader_name:
        aliases = list(reader.get("aliases", ()))
        reader = {**reader, "aliases": [*aliases, writer_name]}
    return fastavro.parse_schema(dict(reader))


def _read_record(payload: bytes, writer: Any, reader: Any | None, start: int = 0) -> Mapping:
    buffer = io.BytesIO(payload)
    buffer.seek(start)
    try:
        record = fastavro.schemaless_reader(buffer, writer, reader)
    except Exception as err:  # noqa: BLE001 - fastavro raises many types for corrupt input
        detail = str(err)  # resolution errors print whole schemas: keep the letter readable
        detail = detail if len(detail) <= _MAX_DETAIL else detail[:_MAX_DETAIL] + "…"
        raise Rejected(
            _STAGE, Reason.INVALID_AVRO, f"cannot decode Avro: {type(err).__name__}: {detail}"
        ) from err
    if buffer.tell() != len(payload):
        raise Rejected(
            _STAGE,
            Reason.INVALID_AVRO,
            f"{len(payload) - buffer.tell()} trailing bytes after the Avro record",
        )
    if not isinstance(record, Mapping):
        raise Rejected(_STAGE, Reason.NOT_AN_OBJECT, "the Avro schema is not a record")
    return record


class AvroDecoder:
    """Schemaless Avro records written with ``writer_schema`` (resolved to ``reader_schema``)."""

    def __init__(self, writer_schema: Mapping[str, Any], reader_schema: Mapping | None = None):
        self._writer = fastavro.parse_schema(dict(writer_schema))
        self._reader = fastavro.parse_schema(dict(reader_schema)) if reader_schema else None

    def __call__(self, payload: bytes) -> Mapping[str, Any]:
        return _read_record(payload, self._writer, self._reader)


class ConfluentAvroDecoder:
    """Confluent wire-format Avro; writer schemas come from the registry, parsed once per id.

    ``registry_config`` is passed to ``SchemaRegistryClient`` (e.g. ``basic.auth.user.info``).
    ``reader_schema``, when given, is what records are resolved to (schema evolution).
    """

    def __init__(
        self,
        registry_url: str,
        *,
        reader_schema: Mapping[str, Any] | None = None,
        registry_config: Mapping[str, Any] | None = None,
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({**(registry_config or {}), "url": registry_url})
        if reader_schema is not None:
            fastavro.parse_schema(dict(reader_schema))  # a bad reader schema fails here, once
        self._reader_schema = reader_schema
        self._schemas: dict[int, tuple[Any, Any]] = {}  # id → parsed (writer, reader)
        self._unknown: dict[int, float] = {}  # id → monotonic time it was found missing

    def __call__(self, payload: bytes) -> Mapping[str, Any]:
        if len(payload) < _HEADER.size:
            raise Rejected(
                _STAGE,
                Reason.BAD_WIRE_FORMAT,
                f"{len(payload)} bytes is shorter than the 5-byte Confluent header",
            )
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != WIRE_FORMAT_MAGIC:
            raise Rejected(
                _STAGE,
                Reason.BAD_WIRE_FORMAT,
                f"magic byte is {magic & 0xFF:#04x}, not 0x00: not Confluent wire format",
            )
        writer, reader = self._schemas.get(schema_id) or self._fetch(schema_id)
        return _read_record(payload, writer, reader, start=_HEADER.size)

    def _fetch(self, schema_id: int) -> tuple[Any, Any]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        missing_since = self._unknown.get(schema_id)
        if missing_since is not None and time.monotonic() - missing_since < _UNKNOWN_ID_TTL_S:
            raise Rejected(_STAGE, Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} not found")
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as err:
            if err.http_status_code != 404:
                raise  # auth, 5xx after retries …: not this message's fault, let the bundle retry
            self._unknown[schema_id] = time.monotonic()
            raise Rejected(
                _STAGE, Reason.UNKNOWN_SCHEMA_ID, f"schema id {schema_id} not found: {err}"
            ) from err
        if registered.schema_type not in (None, "AVRO"):
            raise Rejected(
                _STAGE,
                Reason.UNSUPPORTED_SCHEMA,
                f"schema id {schema_id} is {registered.schema_type}, not AVRO",
            )
        if registered.references:
            raise Rejected(
                _STAGE,
                Reason.UNSUPPORTED_SCHEMA,
                f"schema id {schema_id} uses schema references, which are not supported",
            )
        try:
            document = json.loads(registered.schema_str)
            writer = fastavro.parse_schema(document)
        except Exception as err:  # noqa: BLE001 - JSON and fastavro parse errors alike
            raise Rejected(
                _STAGE, Reason.UNSUPPORTED_SCHEMA, f"schema id {schema_id} does not parse: {err}"
            ) from err
        reader = _reader_for(self._reader_schema, document) if self._reader_schema else None
        _LOGGER.info("Fetched Avro writer schema id %d from the registry", schema_id)
        self._schemas[schema_id] = (writer, reader)
        return writer, reader
