"""Write decoded rows to BigQuery; rows BigQuery rejects become dead letters, not lost rows.

Two methods:

* ``STREAMING_INSERTS`` (default; batch and streaming): rows are sent with ``insertAll`` from the
  same fused step that reads them, flushed before the bundle ends, so the reader commits Kafka
  offsets only after BigQuery accepted the rows. Insert ids are derived from Kafka coordinates
  (``topic/partition/offset``) when the element carries its :class:`KafkaRecord`, so a replayed
  bundle dedupes in BigQuery. Rows BigQuery rejects as invalid come back as
  ``DeadLetter(stage="bigquery")``; transient errors are retried a bounded number of times and
  then fail the bundle (so it is retried, never silently dropped and never hanging for minutes).
* ``FILE_LOADS`` (bounded input): newline-JSON files and load jobs
  (:mod:`transforms.sinks.bigquery_loads`, a batch of rows per file write). BigQuery rejects a
  whole load job, not single rows, so there are no per-row dead letters: a bad row fails the
  pipeline. Offsets are committed when the reader's bundle finishes, i.e. after the rows were
  written to the temporary files but *before* the load job ran; see
  ``docs/export_pipelines.md``.

Usage::

    rows = records | DecodeAndValidate(schema).with_records()    # (KafkaRecord, dict) pairs
    written = rows.rows | WriteRowsToBigQuery("proj:ds.events", schema, endpoints=endpoints)
    (decoded.dead_letters, written.dead_letters) | beam.Flatten() | WriteDeadLettersToBigQuery(
        "proj:ds.events_dead_letters", endpoints=endpoints)
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.gcp import bigquery_tools
from apache_beam.io.gcp.bigquery import BigQueryDisposition
from apache_beam.options.pipeline_options import GoogleCloudOptions

from transforms.dead_letter import BIGQUERY_SCHEMA, DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord
from transforms.sinks.bigquery_loads import LoadBatchesToBigQuery
from transforms.sinks.gcp_endpoints import GcpEndpoints
from transforms.size_limits import FitDeadLetters, FixedSizeLimit

__all__ = [
    "WriteRowsToBigQuery",
    "WriteDeadLettersToBigQuery",
    "BigQueryWriteResult",
    "BigQueryTransientError",
    "METHODS",
    "insert_id_for",
    "ROW_LIMIT",
]

_LOGGER = logging.getLogger(__name__)

#: Write methods :class:`WriteRowsToBigQuery` supports.
METHODS = ("STREAMING_INSERTS", "FILE_LOADS")

# insertAll error reasons that are the row's fault; anything else is retried. "stopped" marks
# valid rows BigQuery did not insert because a neighbour was invalid: they go again.
_PERMANENT_REASONS = frozenset({"invalid", "invalidQuery", "notImplemented", "Bad Request"})
_MAX_INSERT_ID_CHARS = 128  # BigQuery's limit for insertId
# insertAll requests are limited to 10 MB; flush well before, and refuse single rows above it
# (a row is also limited to 10 MB; 1 MB is left for the request around it).
_MAX_REQUEST_BYTES = 5_000_000
_MAX_ROW_BYTES = 9_000_000

#: The largest row (JSON) :class:`WriteRowsToBigQuery` sends with streaming inserts; larger
#: rows become dead letters (``RowTooLarge``).
ROW_LIMIT = FixedSizeLimit(_MAX_ROW_BYTES, "BigQuery streaming inserts")


class BigQueryTransientError(RuntimeError):
    """BigQuery kept failing rows with transient errors; raised so the runner retries the bundle."""


class BigQueryWriteResult(NamedTuple):
    """What :class:`WriteRowsToBigQuery` returns.

    ``dead_letters``: rows BigQuery rejected (always empty for ``FILE_LOADS``, where a bad row
    fails the load job). ``load_jobs``: ``(table id, job id)`` pairs of ``FILE_LOADS``, else
    None.
    """

    dead_letters: beam.PCollection
    load_jobs: beam.PCollection | None


Element = Mapping[str, Any] | tuple[KafkaRecord, Mapping[str, Any]]


def insert_id_for(record: KafkaRecord, salt: str = "") -> str:
    """Deterministic BigQuery insertId of a Kafka record: the same message always gets the same id.

    ``salt`` separates several rows made from one record (e.g. the dead-letter stage).
    """
    insert_id = f"{record.topic}/{record.partition}/{record.offset}"
    if salt:
        insert_id = f"{insert_id}/{salt}"
    if len(insert_id) > _MAX_INSERT_ID_CHARS:
        insert_id = hashlib.sha256(insert_id.encode("utf-8")).hexdigest()
    return insert_id


def _split(element: Element) -> tuple[KafkaRecord | None, Mapping[str, Any]]:
    """Accept plain rows and ``(KafkaRecord, row)`` pairs (``DecodeAndValidate.with_records()``)."""
    if isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], KafkaRecord):
        return element[0], element[1]
    return None, element


def _json_value(value: Any) -> Any:
    """A value as the BigQuery JSON API wants it: BYTES base64-encoded, containers recursed."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in row.items()}


def _table_reference(table_spec: str, project: str | None) -> Any:
    """Parse ``[project:]dataset.table``; a missing project comes from ``project``."""
    reference = bigquery_tools.parse_table_reference(table_spec)
    if not reference.projectId:
        if not project:
            raise ValueError(
                f"table {table_spec!r} names no project and none is configured "
                "(pass project:dataset.table, endpoints with a project, or --project)"
            )
        reference.projectId = project
    return reference


@dataclasses.dataclass(slots=True)
class _Pending:
    record: KafkaRecord | None
    row: Mapping[str, Any]
    json_row: dict[str, Any]
    insert_id: str
    window_value: Any


class _StreamingInsertFn(beam.DoFn):
    """``insertAll`` in batches, flushed before the bundle ends; rejected rows → dead letters.

    Kept in the reader's fused stage on purpose (no reshuffle, unlike Beam's streaming-insert
    path), so bundle finalization — and with it the Kafka offset commit — follows the insert.
    Uses google-cloud-bigquery with the endpoints' retry policy (30 s against an emulator) rather
    than Beam's ``BigQueryWrapper``, whose nested retries wait ~15 minutes on a dead endpoint.
    """

    def __init__(
        self,
        table: str,
        bq_schema: dict[str, Any],
        *,
        endpoints: GcpEndpoints,
        create_disposition: str,
        insert_id_fn: Callable[[Mapping[str, Any]], str | None] | None,
        batch_size: int,
        max_retries: int,
        initial_backoff_s: float,
        request_timeout_s: float,
    ) -> None:
        self._table = table
        self._bq_schema = bq_schema
        self._endpoints = endpoints
        self._create_disposition = create_disposition
        self._insert_id_fn = insert_id_fn
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._initial_backoff_s = initial_backoff_s
        self._request_timeout_s = request_timeout_s
        self._rejected = beam.metrics.Metrics.counter("bigquery_sink", "rows_rejected")
        self._inserted = beam.metrics.Metrics.counter("bigquery_sink", "rows_inserted")

    def setup(self) -> None:
        self._client = self._endpoints.bigquery_client()
        self._retry = self._endpoints.bigquery_retry
        project, rest = self._table.split(":", 1)
        self._table_id = f"{project}.{rest}"
        self._table_ready = False
        self._buffer: list[_Pending] = []
        self._buffer_bytes = 0

    def start_bundle(self) -> None:
        self._buffer = []
        self._buffer_bytes = 0
        # Unique per bundle attempt: rows without Kafka coordinates only dedupe within a retry.
        self._bundle_prefix = uuid.uuid4().hex
        self._bundle_count = 0

    def process(self, element: Element, window_value=beam.DoFn.WindowedValueParam):  # noqa: ANN001
        record, row = _split(element)
        if record is not None:
            insert_id = insert_id_for(record)
        else:
            insert_id = self._insert_id_fn(row) if self._insert_id_fn is not None else None
        if insert_id is None:
            insert_id = f"{self._bundle_prefix}-{self._bundle_count}"
            self._bundle_count += 1
        json_row = _json_row(row)
        size = len(json.dumps(json_row, default=str))
        if size > _MAX_ROW_BYTES:
            self._rejected.inc()
            message = f"row of {size} bytes exceeds the {_MAX_ROW_BYTES}-byte insertAll limit"
            letter = DeadLetter.from_row(row, "bigquery", message, "RowTooLarge", record)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, window_value.with_value(letter))
            return
        if self._buffer and self._buffer_bytes + size > _MAX_REQUEST_BYTES:
            yield from self._flush()
        self._buffer.append(_Pending(record, row, json_row, insert_id, window_value))
        self._buffer_bytes += size
        if len(self._buffer) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):  # noqa: ANN201 - Beam hook
        yield from self._flush()

    def _ensure_table(self) -> None:
        if self._table_ready or self._create_disposition == BigQueryDisposition.CREATE_NEVER:
            return
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        try:
            self._client.get_table(
                self._table_id, retry=self._retry, timeout=self._request_timeout_s
            )
        except NotFound:
            schema = [bigquery.SchemaField.from_api_repr(f) for f in self._bq_schema["fields"]]
            self._client.create_table(
                bigquery.Table(self._table_id, schema=schema),
                exists_ok=True,
                retry=self._retry,
                timeout=self._request_timeout_s,
            )
            _LOGGER.info("Created BigQuery table %s", self._table_id)
        self._table_ready = True

    def _flush(self):  # noqa: ANN202 - generator of tagged dead letters
        pending, self._buffer, self._buffer_bytes = self._buffer, [], 0
        if not pending:
            return
        self._ensure_table()
        for attempt in range(self._max_retries + 1):
            errors = self._client.insert_rows_json(
                self._table_id,
                [p.json_row for p in pending],
                row_ids=[p.insert_id for p in pending],
                skip_invalid_rows=True,
                retry=self._retry,
                timeout=self._request_timeout_s,
            )
            retry = []
            for entry in errors:
                item = pending[entry["index"]]
                reasons = entry.get("errors") or [{}]
                reason = str(reasons[0].get("reason", ""))
                if reason in _PERMANENT_REASONS:
                    self._rejected.inc()
                    message = "; ".join(
                        f"{e.get('location') or '-'}: {e.get('message') or e.get('reason')}"
                        for e in reasons
                    )
                    letter = DeadLetter.from_row(
                        item.row, "bigquery", message, error_type=reason, record=item.record
                    )
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTER_TAG, item.window_value.with_value(letter)
                    )
                else:
                    retry.append((item, reason))
            self._inserted.inc(len(pending) - len(errors))
            if not retry:
                return
            if attempt < self._max_retries:
                delay = self._initial_backoff_s * (2**attempt) * (0.5 + random.random())
                _LOGGER.warning(
                    "BigQuery %s: %d rows failed transiently (%s); retry %d/%d in %.1fs",
                    self._table,
                    len(retry),
                    retry[0][1],
                    attempt + 1,
                    self._max_retries,
                    delay,
                )
                time.sleep(delay)
            pending = [item for item, _ in retry]
        raise BigQueryTransientError(
            f"BigQuery {self._table}: {len(pending)} rows still failing after "
            f"{self._max_retries} retries (last reason: {retry[0][1]!r})"
        )


class WriteRowsToBigQuery(beam.PTransform):
    """Write rows (dicts, or ``(KafkaRecord, dict)`` pairs) to a BigQuery table.

    Args:
      table_spec: ``project:dataset.table`` or ``dataset.table`` (project from ``endpoints`` or
        ``--project``).
      schema: the row declaration; the table is created from it when missing.
      method: ``"STREAMING_INSERTS"`` (default) or ``"FILE_LOADS"`` (bounded input only).
      endpoints: where BigQuery is (emulator or real); None → Google Cloud, project from the
        table spec or ``--project``.
      create_disposition: ``CREATE_IF_NEEDED`` (default) or ``CREATE_NEVER``.
      write_disposition: ``WRITE_APPEND`` (default); ``FILE_LOADS`` also takes
        ``WRITE_TRUNCATE``/``WRITE_EMPTY``.
      insert_id_fn: insert id for plain-dict rows (e.g. ``lambda r: r["event_id"]``); None from
        it, or no function, gives a random id (dedupes only within one bundle attempt). Pairs
        always use their Kafka coordinates.
      batch_size: rows per ``insertAll`` request.
      max_retries: retries of rows BigQuery reports as transiently failed before the bundle
        fails (request errors are retried by the client within the endpoints' retry deadline).
      request_timeout_s: timeout of each BigQuery request.
      custom_gcs_temp_location: temp files of ``FILE_LOADS`` (default: ``--temp_location``).

    Returns:
      :class:`BigQueryWriteResult`.
    """

    def __init__(
        self,
        table_spec: str,
        schema: RowSchema,
        *,
        method: str = "STREAMING_INSERTS",
        endpoints: GcpEndpoints | None = None,
        create_disposition: str = BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition: str = BigQueryDisposition.WRITE_APPEND,
        insert_id_fn: Callable[[Mapping[str, Any]], str | None] | None = None,
        batch_size: int = 500,
        max_retries: int = 5,
        initial_backoff_s: float = 0.5,
        request_timeout_s: float = 60.0,
        custom_gcs_temp_location: str | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method == "STREAMING_INSERTS" and write_disposition != BigQueryDisposition.WRITE_APPEND:
            raise ValueError("STREAMING_INSERTS only appends: use write_disposition=WRITE_APPEND")
        if batch_size < 1 or max_retries < 0:
            raise ValueError("batch_size must be >= 1 and max_retries >= 0")
        bigquery_tools.parse_table_reference(table_spec)  # fail fast on a malformed spec
        self._table_spec = table_spec
        self._schema = schema
        self._method = method
        self._endpoints = endpoints
        self._create_disposition = BigQueryDisposition.validate_create(create_disposition)
        self._write_disposition = BigQueryDisposition.validate_write(write_disposition)
        self._insert_id_fn = insert_id_fn
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._initial_backoff_s = initial_backoff_s
        self._request_timeout_s = request_timeout_s
        self._custom_gcs_temp_location = custom_gcs_temp_location
        self._batched = False

    def batched(self) -> WriteRowsToBigQuery:
        """The same sink for batches (lists) of rows or pairs, e.g. from
        ``DecodeAndValidate(...).batched()``: ``FILE_LOADS`` writes each batch to its load file
        in one go; ``STREAMING_INSERTS`` takes the rows one by one as before."""
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def expand(self, pcoll: beam.PCollection) -> BigQueryWriteResult:
        project = (
            self._endpoints.project
            if self._endpoints is not None and self._endpoints.project
            else pcoll.pipeline.options.view_as(GoogleCloudOptions).project
        )
        reference = _table_reference(self._table_spec, project)
        table = f"{reference.projectId}:{reference.datasetId}.{reference.tableId}"
        endpoints = self._endpoints if self._endpoints is not None else GcpEndpoints(project)
        bq_schema = self._schema.to_bigquery_json()
        if self._method == "FILE_LOADS":
            if not pcoll.is_bounded:
                raise ValueError("FILE_LOADS needs bounded input; use STREAMING_INSERTS")
            temp_location = (
                self._custom_gcs_temp_location
                or pcoll.pipeline.options.view_as(GoogleCloudOptions).temp_location
            )
            if not temp_location:
                raise ValueError("FILE_LOADS needs custom_gcs_temp_location or --temp_location")
            batches = (
                pcoll
                if self._batched
                else pcoll | "Batch" >> beam.BatchElements(min_batch_size=500, max_batch_size=5000)
            )
            jobs = batches | "LoadJobs" >> LoadBatchesToBigQuery(
                f"{reference.projectId}.{reference.datasetId}.{reference.tableId}",
                bq_schema,
                endpoints=endpoints,
                temp_location=temp_location,
                create_disposition=self._create_disposition,
                write_disposition=self._write_disposition,
            )
            empty = pcoll.pipeline | "NoRowDeadLetters" >> beam.Create([])
            return BigQueryWriteResult(empty, jobs)
        if self._batched:
            pcoll = pcoll | "Unbatch" >> beam.FlatMap(lambda batch: batch)
        outputs = pcoll | "StreamingInserts" >> beam.ParDo(
            _StreamingInsertFn(
                table,
                bq_schema,
                endpoints=endpoints,
                create_disposition=self._create_disposition,
                insert_id_fn=self._insert_id_fn,
                batch_size=self._batch_size,
                max_retries=self._max_retries,
                initial_backoff_s=self._initial_backoff_s,
                request_timeout_s=self._request_timeout_s,
            )
        ).with_outputs(DEAD_LETTER_TAG, main="inserted")
        return BigQueryWriteResult(outputs[DEAD_LETTER_TAG], None)


class _RaiseRejectedDeadLetter(beam.DoFn):
    """The dead-letter table itself rejected a row: a schema mismatch only a human can fix."""

    def process(self, letter: DeadLetter):  # noqa: ANN201
        raise ValueError(
            f"the dead-letter table rejected a dead letter ({letter.error_type}: "
            f"{letter.error_message}); check its schema against transforms.dead_letter"
        )


class WriteDeadLettersToBigQuery(beam.PTransform):
    """Append :class:`DeadLetter` records to a :data:`BIGQUERY_SCHEMA` table (streaming inserts).

    Insert ids come from the letter's stage and Kafka coordinates, so replays dedupe. Payloads
    are cut to ``max_payload_bytes`` and to what fits a row (:data:`ROW_LIMIT`), so a letter is
    never refused for its size. A letter the table rejects otherwise fails the pipeline: there
    is no further place to put it.

    Args:
      table_spec: ``[project:]dataset.table``.
      endpoints: as for :class:`WriteRowsToBigQuery`.
      max_payload_bytes: the most payload a letter keeps (``--deadLetterMaxPayloadBytes``);
        None: only the row limit applies.
    """

    def __init__(
        self,
        table_spec: str,
        *,
        endpoints: GcpEndpoints | None = None,
        max_payload_bytes: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        self._fit = FitDeadLetters(
            max_payload_bytes or _MAX_ROW_BYTES,
            limit=ROW_LIMIT,
            record_bytes=_dead_letter_row_bytes,
        )
        self._write = WriteRowsToBigQuery(
            table_spec,
            RowSchema.from_bigquery_json(BIGQUERY_SCHEMA),
            endpoints=endpoints,
            insert_id_fn=_dead_letter_insert_id,
            **kwargs,
        )

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        result = (
            letters
            | "FitToRows" >> self._fit
            | "ToRows" >> beam.Map(lambda letter: letter.to_bigquery_row())
            | "Insert" >> self._write
        )
        return result.dead_letters | "FailOnRejected" >> beam.ParDo(_RaiseRejectedDeadLetter())


def _dead_letter_row_bytes(letter: DeadLetter) -> int:
    """A letter's size as :class:`_StreamingInsertFn` measures its row."""
    return len(json.dumps(letter.to_bigquery_row(), default=str))


def _dead_letter_insert_id(row: Mapping[str, Any]) -> str | None:
    """Deterministic for letters with Kafka coordinates (stage as salt); random otherwise."""
    if row.get("topic") is None or row.get("offset") is None:
        return None
    record = KafkaRecord(row["topic"], row["partition"] or 0, row["offset"], None, None, 0)
    return insert_id_for(record, salt=row["stage"])
