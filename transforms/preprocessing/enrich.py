"""KSQL's stream-table join: enrich rows from a reference table held in memory as a side input.

The table comes from CSV or JSON-lines files (local or ``gs://``, globs allowed, via Beam
FileSystems) or a BigQuery query. It is loaded when the pipeline runs (on a worker, not at
construction) and, with ``refresh_interval_s``, reloaded periodically — Beam's slowly-updating
side input pattern: ``PeriodicImpulse`` → load → global window re-triggered on every load; each
row is joined against the most recently loaded table.

Usage::

    cars = FileReference("gs://bucket/ref/cars.csv", schema=RowSchema.from_bigquery_json(...))
    rows | EnrichWithSideInput(cars, key="car_id", fields={"model": "model", "fleet": "fleet"})
    rows | EnrichWithSideInput(
        BigQueryReference("SELECT card_id, country FROM risk.cards"),
        key="card_id", how="inner", refresh_interval_s=600).with_dead_letters()

Join semantics: ``how="left"`` keeps every row, with ``None`` in the added columns when no
reference row matches; ``how="inner"`` drops unmatched rows like SQL and counts them
(``enrich.unmatched``) — with ``with_dead_letters()`` they become dead letters (reason
``NoMatch``) instead. A null key never matches. Duplicate reference keys: the last row wins (a
warning says how many). An added column that already exists in the row is an error: rename it
with ``fields={"new_name": "column"}``.

Locally (DirectRunner) a refreshed side input is materialised before the main input is processed,
so every row sees the last table loaded; on Dataflow/Flink rows see the table current when they
are processed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode

from transforms.decoding.rejection import Reason, Rejected
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema
from transforms.preprocessing.row_stage import METRICS_NAMESPACE, RowOp, RowStage
from transforms.sinks.gcp_endpoints import GcpEndpoints

__all__ = [
    "EnrichWithSideInput",
    "FileReference",
    "BigQueryReference",
    "ReferenceSource",
    "ReferenceTable",
    "JOIN_TYPES",
]

_LOGGER = logging.getLogger(__name__)

JOIN_TYPES = ("left", "inner")
_FILE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_CSV_TRUE, _CSV_FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


class ReferenceSource(Protocol):
    """Anything that can (re)load the reference rows; must be picklable."""

    def load(self) -> list[dict[str, Any]]: ...


def _csv_value(text: str, kind: str) -> Any:
    """CSV cells are text: convert to the schema type so the validator sees real values."""
    if text == "":
        return None
    if kind == "INTEGER":
        return int(text)
    if kind == "FLOAT":
        return float(text)
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered in _CSV_TRUE | _CSV_FALSE:
            return lowered in _CSV_TRUE
        raise ValueError(f"not a boolean: {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class FileReference:
    """Reference rows from CSV (header line) or JSON-lines files; local, ``gs://``, or a glob.

    With ``schema`` every row is converted (CSV text → typed) and validated like decoded rows,
    and a bad line fails the load naming file and line; without it CSV values stay strings.
    ``file_format`` (``csv``/``jsonl``) defaults from the extension.
    """

    path: str
    schema: RowSchema | None = None
    file_format: str | None = None

    def __post_init__(self) -> None:
        if self.file_format is None:
            suffix = "." + self.path.rsplit(".", 1)[-1].lower() if "." in self.path else ""
            if suffix not in _FILE_FORMATS:
                raise ValueError(
                    f"cannot tell the format of {self.path!r}: pass file_format='csv' or 'jsonl'"
                )
            object.__setattr__(self, "file_format", _FILE_FORMATS[suffix])
        if self.file_format not in ("csv", "jsonl"):
            raise ValueError(f"file_format must be 'csv' or 'jsonl', got {self.file_format!r}")

    def load(self) -> list[dict[str, Any]]:
        from apache_beam.io.filesystems import FileSystems

        matches = FileSystems.match([self.path])[0].metadata_list
        if not matches:
            raise FileNotFoundError(f"no reference file matches {self.path}")
        validator = RowValidator(self.schema) if self.schema else None
        rows: list[dict[str, Any]] = []
        for metadata in sorted(matches, key=lambda m: m.path):
            with FileSystems.open(metadata.path) as handle:
                text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
                rows.extend(self._parse(metadata.path, text, validator))
        _LOGGER.info("Loaded %d reference rows from %s", len(rows), self.path)
        return rows

    def _parse(self, path: str, text: io.TextIOBase, validator: RowValidator | None):
        if self.file_format == "csv":
            lines: Iterable[tuple[int, Any]] = (
                (n + 2, r) for n, r in enumerate(csv.DictReader(text))
            )
        else:
            lines = ((n + 1, line) for n, line in enumerate(text) if line.strip())
        for line_no, item in lines:
            try:
                if self.file_format == "csv":
                    if None in item:
                        raise ValueError("more cells than header columns")
                    if self.schema:
                        item = {
                            k: _csv_value(v, self.schema.field(k).type) if k in self.schema else v
                            for k, v in item.items()
                        }
                else:
                    item = json.loads(item)
                    if not isinstance(item, dict):
                        raise ValueError("a JSON line must be an object")
                yield validator.validate(item) if validator else dict(item)
            except (ValueError, Rejected) as err:
                raise ValueError(f"reference file {path}, line {line_no}: {err}") from err


@dataclasses.dataclass(frozen=True)
class BigQueryReference:
    """Reference rows from a BigQuery query (or ``table`` ``project.dataset.table``).

    The client comes from ``endpoints`` (default: resolved from the environment when loading,
    so ``BIGQUERY_EMULATOR_HOST`` selects the local emulator).
    """

    query: str | None = None
    table: str | None = None
    endpoints: GcpEndpoints | None = None

    def __post_init__(self) -> None:
        if (self.query is None) == (self.table is None):
            raise ValueError("BigQueryReference needs exactly one of query or table")

    def load(self) -> list[dict[str, Any]]:
        endpoints = self.endpoints or GcpEndpoints.from_options()
        client = endpoints.bigquery_client()
        sql = self.query or f"SELECT * FROM `{self.table}`"
        job = client.query(sql, retry=endpoints.bigquery_retry)
        rows = [dict(row.items()) for row in job.result()]
        _LOGGER.info("Loaded %d reference rows from BigQuery", len(rows))
        return rows


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
    """One loaded version of the reference: rows indexed by key, and when it was loaded."""

    loaded_at: float
    columns: tuple[str, ...]
    index: Mapping[Any, Mapping[str, Any]]

    @classmethod
    def build(
        cls, rows: Iterable[Mapping[str, Any]], key: tuple[str, ...], loaded_at: float
    ) -> ReferenceTable:
        index: dict[Any, Mapping[str, Any]] = {}
        columns: dict[str, None] = {}
        count = 0
        for row in rows:
            count += 1
            missing = [k for k in key if k not in row]
            if missing:
                raise ValueError(f"reference row has no key column {missing}: {row!r}")
            index[_key_of(row, key)] = row
            columns.update(dict.fromkeys(row))
        if count != len(index):
            _LOGGER.warning(
                "Reference table has %d rows with a repeated key; the last one wins",
                count - len(index),
            )
        return cls(loaded_at, tuple(c for c in columns if c not in key), index)


def _key_of(row: Mapping[str, Any], key: tuple[str, ...]) -> Any:
    return row.get(key[0]) if len(key) == 1 else tuple(row.get(k) for k in key)


def _load_table(
    _: Any, source: ReferenceSource, key: tuple[str, ...], wanted: tuple[str, ...]
) -> ReferenceTable:
    """Load and index the reference; a requested column it lacks is an error (likely a typo)."""
    table = ReferenceTable.build(source.load(), key, time.time())
    missing = [c for c in wanted if c not in table.columns and c not in key]
    if table.index and missing:
        raise ValueError(
            f"reference has no column {missing}; its columns: {', '.join(key + table.columns)}"
        )
    return table


class _EnrichOp(RowOp):
    stage = "enrich"

    def __init__(
        self,
        key: tuple[str, ...],
        fields: tuple[tuple[str, str], ...] | None,
        inner: bool,
    ) -> None:
        self._key = key
        self._fields = fields
        self._inner = inner
        self._matched = self._unmatched = None

    def setup(self) -> None:
        self._matched = Metrics.counter(METRICS_NAMESPACE, "enrich.matched")
        self._unmatched = Metrics.counter(METRICS_NAMESPACE, "enrich.unmatched")

    def __call__(self, row: Mapping[str, Any], tables: Sequence[ReferenceTable]):
        table = max(tables, key=lambda t: t.loaded_at) if tables else None
        fields = self._fields or tuple((c, c) for c in (table.columns if table else ()))
        key = _key_of(row, self._key)
        match = table.index.get(key) if table is not None and key is not None else None
        if match is None:
            self._unmatched.inc()
            if self._inner:
                if self.routes_dead_letters:
                    raise Rejected(self.stage, Reason.NO_MATCH, f"no reference row for key {key!r}")
                return
        else:
            self._matched.inc()
        out = dict(row)
        for new_name, column in fields:
            if new_name in out:
                raise ValueError(
                    f"column {new_name!r} is already in the row; rename it with "
                    f"fields={{'other_name': {column!r}}}"
                )
            out[new_name] = match.get(column) if match is not None else None
        yield out


def _names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be a field name or a non-empty sequence of them")
    return names


class EnrichWithSideInput(RowStage):
    """Join each row with the reference row whose key matches (KSQL stream-table join).

    Args:
        reference: a :class:`FileReference`, :class:`BigQueryReference` or any picklable object
            with ``load() -> list[dict]``.
        key: the row field(s) to join on.
        reference_key: the reference column(s) matching ``key`` (default: the same names).
        fields: reference columns to add — a sequence of names, or ``{new_name: column}``;
            default all non-key columns of the loaded table.
        how: ``"left"`` or ``"inner"`` (see the module docstring).
        refresh_interval_s: reload the reference this often (streaming); ``None`` = load once.
        refresh_stop_after_s: stop refreshing after this long (bounded runs and tests).

    Returns: the enriched rows (or :class:`~transforms.preprocessing.row_stage.RowsAndDeadLetters`
    after
    ``with_dead_letters()``).
    """

    def __init__(
        self,
        reference: ReferenceSource,
        *,
        key: str | Sequence[str],
        reference_key: str | Sequence[str] | None = None,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        how: str = "left",
        refresh_interval_s: float | None = None,
        refresh_stop_after_s: float | None = None,
        label: str | None = None,
    ) -> None:
        if not callable(getattr(reference, "load", None)):
            raise TypeError(f"reference must have a load() method, got {reference!r}")
        if how not in JOIN_TYPES:
            raise ValueError(f"how must be one of {JOIN_TYPES}, got {how!r}")
        row_key = _names(key, "key")
        ref_key = _names(reference_key, "reference_key") if reference_key else row_key
        if len(ref_key) != len(row_key):
            raise ValueError(f"key {row_key} and reference_key {ref_key} differ in length")
        if refresh_interval_s is not None and refresh_interval_s <= 0:
            raise ValueError(f"refresh_interval_s must be positive, got {refresh_interval_s}")
        if refresh_stop_after_s is not None and refresh_interval_s is None:
            raise ValueError("refresh_stop_after_s needs refresh_interval_s")
        if fields is None:
            spec = None
        elif isinstance(fields, Mapping):
            spec = tuple(fields.items())
        else:
            spec = tuple((f, f) for f in _names(fields, "fields"))
        super().__init__(_EnrichOp(row_key, spec, how == "inner"), label)
        self._fields = spec
        self._reference = reference
        self._reference_key = ref_key
        self._refresh_interval_s = refresh_interval_s
        self._refresh_stop_after_s = refresh_stop_after_s

    def expand(self, rows: beam.PCollection):
        wanted = tuple(column for _, column in self._fields or ())
        load = beam.Map(_load_table, source=self._reference, key=self._reference_key, wanted=wanted)
        if self._refresh_interval_s is None:
            tables = rows.pipeline | "Once" >> beam.Impulse() | "LoadReference" >> load
        else:
            # REBASE_* resolves the start (and stop) at run time, not at construction.
            if self._refresh_stop_after_s is None:
                ticks = PeriodicImpulse(
                    fire_interval=self._refresh_interval_s, rebase=RebaseMode.REBASE_START
                )
            else:
                ticks = PeriodicImpulse(
                    start_timestamp=0,
                    stop_timestamp=self._refresh_stop_after_s,
                    fire_interval=self._refresh_interval_s,
                    rebase=RebaseMode.REBASE_ALL,
                )
            tables = (
                rows.pipeline
                | "RefreshTicks" >> ticks
                | "LoadReference" >> load
                | "LatestPane"
                >> beam.WindowInto(
                    window.GlobalWindows(),
                    trigger=trigger.Repeatedly(trigger.AfterCount(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING,
                )
            )
        return self._run(rows, beam.pvalue.AsList(tables))
