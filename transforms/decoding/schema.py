"""Row schemas: the declared shape of decoded rows, shared by decode, sinks, trainer and scorer.

One :class:`RowSchema` is read from a BigQuery JSON schema or an Avro schema, so the same
declaration drives validation, the BigQuery table and the model's feature list. Two schemas ship
with the package (``creditcard`` and ``car_sensor``).

Usage::

    schema = RowSchema.load("gs://bucket/schemas/creditcard.json")   # or a local path
    schema = bundled_schema("car_sensor")
    features = schema.drop("event_id", "car_id", "is_anomaly").numeric_names
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "Field",
    "RowSchema",
    "bundled_schema",
    "bundled_schema_path",
    "BUNDLED_SCHEMAS",
    "FIELD_TYPES",
    "FIELD_MODES",
    "NUMERIC_TYPES",
    "CATEGORICAL_TYPES",
]

_LOGGER = logging.getLogger(__name__)

FIELD_TYPES = frozenset(
    {"INTEGER", "FLOAT", "NUMERIC", "STRING", "BOOLEAN", "TIMESTAMP", "BYTES", "RECORD"}
)
FIELD_MODES = frozenset({"REQUIRED", "NULLABLE", "REPEATED"})
#: Types a model treats as numbers (z-score etc.).
NUMERIC_TYPES = frozenset({"INTEGER", "FLOAT", "NUMERIC"})
#: Types a model treats as categories (vocabulary).
CATEGORICAL_TYPES = frozenset({"STRING", "BOOLEAN"})
#: Names accepted by :func:`bundled_schema`.
BUNDLED_SCHEMAS = ("creditcard", "car_sensor")

# BigQuery legacy type names and standard-SQL aliases, normalised on read.
_TYPE_ALIASES = {
    "INT64": "INTEGER",
    "FLOAT64": "FLOAT",
    "BOOL": "BOOLEAN",
    "STRUCT": "RECORD",
    "BIGNUMERIC": "NUMERIC",
}

# Avro primitive → BigQuery type.
_AVRO_PRIMITIVES = {
    "int": "INTEGER",
    "long": "INTEGER",
    "float": "FLOAT",
    "double": "FLOAT",
    "string": "STRING",
    "boolean": "BOOLEAN",
    "bytes": "BYTES",
}
_AVRO_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One column. ``fields`` holds the sub-columns of a RECORD."""

    name: str
    type: str
    mode: str = "NULLABLE"
    fields: tuple[Field, ...] = ()
    description: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"field name must be a non-empty string, got {self.name!r}")
        if self.type not in FIELD_TYPES:
            raise ValueError(
                f"field {self.name!r}: type {self.type!r} is not one of {sorted(FIELD_TYPES)}"
            )
        if self.mode not in FIELD_MODES:
            raise ValueError(
                f"field {self.name!r}: mode {self.mode!r} is not one of {sorted(FIELD_MODES)}"
            )
        if (self.type == "RECORD") != bool(self.fields):
            raise ValueError(f"field {self.name!r}: a RECORD needs sub-fields, other types none")

    @property
    def required(self) -> bool:
        return self.mode == "REQUIRED"

    @property
    def repeated(self) -> bool:
        return self.mode == "REPEATED"

    def to_bigquery_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "mode": self.mode}
        if self.description:
            out["description"] = self.description
        if self.fields:
            out["fields"] = [f.to_bigquery_json() for f in self.fields]
        return out


def _fields_from_bigquery(items: Sequence[Mapping[str, Any]], where: str) -> tuple[Field, ...]:
    fields = []
    for item in items:
        if not isinstance(item, Mapping) or "name" not in item or "type" not in item:
            raise ValueError(f"{where}: every field needs 'name' and 'type', got {item!r}")
        kind = str(item["type"]).upper()
        kind = _TYPE_ALIASES.get(kind, kind)
        fields.append(
            Field(
                name=item["name"],
                type=kind,
                mode=str(item.get("mode") or "NULLABLE").upper(),
                fields=_fields_from_bigquery(item.get("fields") or (), f"{where}.{item['name']}"),
                description=item.get("description"),
            )
        )
    return tuple(fields)


def _avro_type(avro: Any, name: str) -> tuple[str, tuple[Field, ...]]:
    """Map one (non-union, non-array) Avro type to a BigQuery type and RECORD sub-fields."""
    if isinstance(avro, str):
        if avro in _AVRO_PRIMITIVES:
            return _AVRO_PRIMITIVES[avro], ()
        raise ValueError(f"Avro field {name!r}: unsupported type {avro!r}")
    if not isinstance(avro, Mapping):
        raise ValueError(f"Avro field {name!r}: unsupported type {avro!r}")
    logical = avro.get("logicalType")
    kind = avro.get("type")
    if logical in _AVRO_TIMESTAMPS and kind == "long":
        return "TIMESTAMP", ()
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return "NUMERIC", ()
    if kind == "record":
        return "RECORD", _fields_from_avro_record(avro)
    if kind == "enum":
        return "STRING", ()
    if kind == "fixed":
        return "BYTES", ()
    if kind in _AVRO_PRIMITIVES:
        return _AVRO_PRIMITIVES[kind], ()
    raise ValueError(f"Avro field {name!r}: unsupported type {avro!r}")


def _field_from_avro(item: Mapping[str, Any]) -> Field:
    name = item["name"]
    avro = item["type"]
    mode = "REQUIRED"
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"Avro field {name!r}: only unions with null are supported")
        mode = "NULLABLE" if len(branches) < len(avro) else "REQUIRED"
        avro = branches[0]
    if isinstance(avro, Mapping) and avro.get("type") == "array":
        mode = "REPEATED"
        avro = avro["items"]
    kind, sub = _avro_type(avro, name)
    return Field(name=name, type=kind, mode=mode, fields=sub, description=item.get("doc"))


def _fields_from_avro_record(record: Mapping[str, Any]) -> tuple[Field, ...]:
    if record.get("type") != "record":
        raise ValueError(f"an Avro row schema must be a record, got type {record.get('type')!r}")
    return tuple(_field_from_avro(item) for item in record.get("fields", ()))


_BQ_TO_AVRO = {
    "INTEGER": "long",
    "FLOAT": "double",
    "STRING": "string",
    "BOOLEAN": "boolean",
    "BYTES": "bytes",
    "TIMESTAMP": {"type": "long", "logicalType": "timestamp-micros"},
    "NUMERIC": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 9},
}


def _avro_field(field: Field, namespace: str) -> dict[str, Any]:
    if field.type == "RECORD":
        kind: Any = {
            "type": "record",
            "name": f"{field.name}_record",
            "namespace": namespace,
            "fields": [_avro_field(f, f"{namespace}.{field.name}") for f in field.fields],
        }
    else:
        kind = _BQ_TO_AVRO[field.type]
    if field.repeated:
        kind = {"type": "array", "items": kind}
    out: dict[str, Any] = {"name": field.name, "type": kind}
    if not field.required and not field.repeated:
        out.update(type=["null", kind], default=None)
    if field.description:
        out["doc"] = field.description
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class RowSchema:
    """An ordered set of :class:`Field`; immutable and picklable so DoFns can carry it."""

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate field names: {duplicates}")
        if not names:
            raise ValueError("a row schema needs at least one field")

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_bigquery_json(cls, source: str | Mapping[str, Any] | Sequence[Any]) -> RowSchema:
        """Read a BigQuery JSON schema: ``{"fields": [...]}``, a bare field list, or a file path.

        Accepts the ``bq show --schema`` list form and the ``{"fields": ...}`` form Beam and the
        REST API use; ``INT64``/``FLOAT64``/``BOOL``/``STRUCT`` are normalised to legacy names.
        """
        if isinstance(source, str):
            return cls.from_bigquery_json(json.loads(_read_text(source)))
        items = source.get("fields") if isinstance(source, Mapping) else source
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise ValueError("a BigQuery JSON schema is a list of fields or {'fields': [...]}")
        return cls(_fields_from_bigquery(items, "schema"))

    @classmethod
    def from_avro(cls, schema: str | Mapping[str, Any]) -> RowSchema:
        """Read an Avro record schema (a dict, its JSON text, or a ``.avsc`` path).

        ``["null", T]`` → NULLABLE, arrays → REPEATED, ``timestamp-millis/micros`` → TIMESTAMP,
        ``decimal`` → NUMERIC, enum → STRING, nested records → RECORD.
        """
        if isinstance(schema, str):
            text = schema if schema.lstrip().startswith("{") else _read_text(schema)
            schema = json.loads(text)
        return cls(_fields_from_avro_record(schema))

    @classmethod
    def load(cls, path: str) -> RowSchema:
        """Load a schema file, local or ``gs://`` (Beam FileSystems); the content picks the format.

        An object with ``"type": "record"`` is Avro; a list, or an object with ``"fields"`` and no
        ``"type"``, is a BigQuery JSON schema.
        """
        try:
            document = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"schema file {path} is not valid JSON: {err}") from err
        if isinstance(document, Mapping) and document.get("type") == "record":
            _LOGGER.info("Loaded Avro schema from %s", path)
            return cls.from_avro(document)
        if isinstance(document, list) or (isinstance(document, Mapping) and "fields" in document):
            _LOGGER.info("Loaded BigQuery JSON schema from %s", path)
            return cls.from_bigquery_json(document)
        raise ValueError(f"schema file {path} is neither a BigQuery JSON schema nor an Avro record")

    # -- views ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    def field(self, name: str) -> Field:
        """The field called ``name``; ``KeyError`` if absent."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r} in schema (fields: {', '.join(self.names)})")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def numeric_names(self) -> tuple[str, ...]:
        """Scalar INTEGER/FLOAT/NUMERIC columns, in order (labels included: drop them yourself)."""
        return tuple(f.name for f in self.fields if f.type in NUMERIC_TYPES and not f.repeated)

    @property
    def categorical_names(self) -> tuple[str, ...]:
        """Scalar STRING/BOOLEAN columns, in order (ids included: drop them yourself)."""
        return tuple(f.name for f in self.fields if f.type in CATEGORICAL_TYPES and not f.repeated)

    def select(self, *names: str) -> RowSchema:
        """A schema with only ``names``, in the given order (``KeyError`` for unknown ones)."""
        return RowSchema(tuple(self.field(n) for n in names))

    def drop(self, *names: str) -> RowSchema:
        """A schema without ``names`` (``KeyError`` for unknown ones, to catch typos)."""
        for n in names:
            self.field(n)
        return RowSchema(tuple(f for f in self.fields if f.name not in names))

    # -- serialisation ----------------------------------------------------------------------------

    def to_bigquery_json(self) -> dict[str, list[dict[str, Any]]]:
        """``{"fields": [...]}``: what ``WriteToBigQuery(schema=...)`` and the REST API take."""
        return {"fields": [f.to_bigquery_json() for f in self.fields]}

    def to_avro(self, name: str = "Row", namespace: str = "kafka_beam_ml") -> dict[str, Any]:
        """An Avro record schema for these fields (the default writer schema for AVRO input).

        TIMESTAMP → ``timestamp-micros``, NUMERIC → ``decimal(38, 9)``, NULLABLE → ``["null", T]``.
        """
        return {
            "type": "record",
            "name": name,
            "namespace": namespace,
            "fields": [_avro_field(f, namespace) for f in self.fields],
        }


def _read_text(path: str) -> str:
    """Read a local or ``gs://`` file as UTF-8 via Beam FileSystems."""
    from apache_beam.io.filesystems import FileSystems  # heavy import, only when a path is used

    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8")


def bundled_schema_path(name: str, kind: str = "json") -> str:
    """File path of a shipped schema (``kind`` ``"json"`` = BigQuery, ``"avsc"`` = Avro).

    For ``--schemaPath`` defaults and Avro producers; the files are package data.
    """
    if name not in BUNDLED_SCHEMAS:
        raise ValueError(f"no bundled schema {name!r}; choose one of {', '.join(BUNDLED_SCHEMAS)}")
    if kind not in ("json", "avsc"):
        raise ValueError(f"kind must be 'json' or 'avsc', got {kind!r}")
    schemas = importlib.resources.files("transforms.decoding").joinpath("schemas")
    return str(schemas.joinpath(f"{name}.{kind}"))


def bundled_schema(name: str) -> RowSchema:
    """One of the schemas shipped in ``transforms/decoding/schemas/``: ``creditcard`` or
    ``car_sensor``."""
    with open(bundled_schema_path(name), encoding="utf-8") as handle:
        return RowSchema.from_bigquery_json(json.load(handle))
