"""BigQuery ``FILE_LOADS``: batches of rows → Parquet (or newline-JSON) files → load jobs.

Why not Beam's ``WriteToBigQuery(method=FILE_LOADS)``: it writes, partitions and routes every
row as a Beam element (a JSON encode, a file write and several per-element hops per row), which
made the load path as slow as the TFRecord export once was. Here a batch of rows becomes one
Parquet table (:mod:`transforms.sinks.arrow_tables`, written in large row groups by
:mod:`transforms.sinks.parquet_files`; a flat schema without BYTES) or one newline-delimited
JSON chunk (msgspec ``encode_lines``, BYTES as base64 as BigQuery's JSON wants; schemas with
RECORD, REPEATED or BYTES fields) in its bundle's file; then one load job per up to 10,000
files (BigQuery's limit of source URIs per job) loads them into the table. Parquet
files are ~9× smaller than the JSON and load ~5× faster (docs/benchmarks.md).

Durability and retries:

* each bundle writes its own load file and names it to the load step only when the bundle ends,
  so only files of bundles the runner committed are loaded: a failed bundle's file (partial or
  whole) is never loaded, and its retry writes another (as Beam's own BigQuery file loads do;
  no rename step, which cost ~0.1 s of a 2 s export on the GCS emulator);
* load jobs get ids derived from a prefix fixed when the pipeline is built: a retried load step
  finds its job already created (409) and waits for it instead of loading the files twice;
* once every job succeeded, the run's load folder is deleted, files of failed bundles too; a
  failed job fails the pipeline with BigQuery's error messages (BigQuery rejects a whole job,
  not single rows) and leaves the files;
* the Kafka offsets are committed when the reader's bundle finishes, i.e. after its rows are in
  the load files but before the load job ran (``docs/export_pipelines.md``).

With more than 10,000 files, jobs after the first one append: only the first one applies a
``WRITE_TRUNCATE``/``WRITE_EMPTY`` disposition, so such a load is not atomic.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import msgspec
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms.decoding.columnar import StructRows
from transforms.decoding.schema import RowSchema
from transforms.kafka.record import KafkaRecord
from transforms.sinks.arrow_tables import ArrowTables, arrow_schema
from transforms.sinks.gcp_endpoints import GcpEndpoints
from transforms.sinks.parquet_files import ParquetBatchWriter

__all__ = ["LoadBatchesToBigQuery", "MAX_FILES_PER_JOB", "PARQUET", "JSON_LINES"]

_LOGGER = logging.getLogger(__name__)

#: Load file formats (BigQuery's sourceFormat names).
PARQUET, JSON_LINES = "PARQUET", "NEWLINE_DELIMITED_JSON"
#: BigQuery's limit of source URIs per load job.
MAX_FILES_PER_JOB = 10_000

_ENCODER = msgspec.json.Encoder()


def _json_lines(rows: Sequence[Any]) -> bytes:
    """Rows, or ``(KafkaRecord, row)`` pairs, as newline-delimited JSON (BYTES base64).

    Rows kept column-wise are encoded from the decoder's structs, which msgspec writes as the
    row dicts (the same field names and order) without building them.
    """
    if type(rows) is StructRows:
        return _ENCODER.encode_lines(rows.structs)
    if rows and isinstance(rows[0], tuple) and isinstance(rows[0][0], KafkaRecord):
        rows = [row for _, row in rows]
    return _ENCODER.encode_lines(rows)


class _JsonLinesFile:
    """A new load file of newline-delimited JSON in ``folder``: a chunk per batch."""

    def __init__(self, folder: str) -> None:
        self.path = FileSystems.join(folder, f"{uuid.uuid4().hex}.json")
        self._handle = FileSystems.create(self.path, mime_type="application/json")

    def add(self, rows: Sequence[Any]) -> None:
        if rows:
            self._handle.write(_json_lines(rows))

    def close(self) -> None:
        self._handle.close()

    def abort(self) -> None:
        """Nothing to stop: the incomplete file is left to the folder's deletion."""


class _ParquetFile:
    """A new Parquet load file in ``folder``: each batch as an Arrow table, written in large
    row groups."""

    def __init__(self, folder: str, tables: ArrowTables) -> None:
        self.path = FileSystems.join(folder, f"{uuid.uuid4().hex}.parquet")
        handle = FileSystems.create(self.path, mime_type="application/octet-stream")
        self._tables = tables
        self._writer = ParquetBatchWriter(handle, tables.schema)

    def add(self, rows: Sequence[Any]) -> None:
        self._writer.add(self._tables(rows))

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


class _WriteLoadFilesFn(beam.DoFn):
    """A bundle's batches → one load file, whose name is output when the bundle ends.

    A bundle that fails never outputs its file's name, so the load step sees only the files of
    committed bundles; the folder's deletion after the load removes the others.
    """

    def __init__(self, folder: str, tables: ArrowTables | None) -> None:
        self._folder = folder
        self._tables = tables
        self._file: _JsonLinesFile | _ParquetFile | None = None

    def start_bundle(self) -> None:
        self._abandon()  # left open by a failed bundle

    def process(self, rows: Sequence[Any]) -> None:
        if self._file is None:
            self._file = (
                _JsonLinesFile(self._folder)
                if self._tables is None
                else _ParquetFile(self._folder, self._tables)
            )
        self._file.add(rows)

    def finish_bundle(self):  # noqa: ANN201
        if self._file is None:
            return
        file, self._file = self._file, None
        file.close()
        yield GlobalWindows.windowed_value(file.path)

    def teardown(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.abort()


class BigQueryLoadError(RuntimeError):
    """A load job failed; the message carries BigQuery's errors."""


class _LoadFilesFn(beam.DoFn):
    """All the written files → load jobs (deterministic ids), then the load folder deleted."""

    def __init__(
        self,
        table_id: str,
        bq_schema: Mapping[str, Any],
        *,
        endpoints: GcpEndpoints,
        create_disposition: str,
        write_disposition: str,
        job_prefix: str,
        timeout_s: float,
        source_format: str,
        folder: str,
    ) -> None:
        self._table_id = table_id
        self._folder = folder
        self._source_format = source_format
        self._bq_schema = bq_schema
        self._endpoints = endpoints
        self._create_disposition = create_disposition
        self._write_disposition = write_disposition
        self._job_prefix = job_prefix
        self._timeout_s = timeout_s

    def setup(self) -> None:
        self._client = self._endpoints.bigquery_client()
        self._retry = self._endpoints.bigquery_retry

    def process(self, _: Any, files: list[str]):  # noqa: ANN201
        from google.cloud import bigquery

        schema = [bigquery.SchemaField.from_api_repr(f) for f in self._bq_schema["fields"]]
        files = sorted(files)
        if not files:
            if self._create_disposition == "CREATE_IF_NEEDED":
                self._client.create_table(
                    bigquery.Table(self._table_id, schema=schema), exists_ok=True, retry=self._retry
                )
            _LOGGER.info("No rows for %s: no load job", self._table_id)
            return
        for number, start in enumerate(range(0, len(files), MAX_FILES_PER_JOB)):
            config = bigquery.LoadJobConfig(
                source_format=self._source_format,
                schema=schema,
                create_disposition=self._create_disposition,
                write_disposition=self._write_disposition if number == 0 else "WRITE_APPEND",
            )
            job_id = f"{self._job_prefix}_{number}"
            yield (
                self._table_id,
                self._run(job_id, files[start : start + MAX_FILES_PER_JOB], config),
            )
        self._delete(files)
        _LOGGER.info("Loaded %d files into %s", len(files), self._table_id)

    def _delete(self, files: list[str]) -> None:
        """The loaded files and whatever else the folder holds (files of failed bundles)."""
        try:
            (found,) = FileSystems.match([FileSystems.join(self._folder, "*")])
            files = sorted({*files, *(meta.path for meta in found.metadata_list)})
        except BeamIOError as err:
            _LOGGER.warning("Could not list the load folder %s: %s", self._folder, err)
        try:
            FileSystems.delete(files)
        except BeamIOError as err:  # a retried step: deleted the first time
            _LOGGER.warning("Could not delete every load file of %s: %s", self._table_id, err)

    def _run(self, job_id: str, uris: list[str], config: Any) -> str:
        from google.api_core.exceptions import Conflict, GoogleAPICallError

        try:
            job = self._client.load_table_from_uri(
                uris, self._table_id, job_id=job_id, job_config=config, retry=self._retry
            )
        except Conflict:  # a retried step: the job exists already, wait for it
            job = self._client.get_job(job_id, retry=self._retry)
        try:
            job.result(timeout=self._timeout_s)
        except GoogleAPICallError as err:
            errors = "; ".join(str(e.get("message", e)) for e in (job.errors or [])[:5])
            raise BigQueryLoadError(
                f"load job {job_id} into {self._table_id} failed: {err}"
                + (f" ({errors})" if errors else "")
            ) from err
        _LOGGER.info("Load job %s: %s rows into %s", job_id, job.output_rows, self._table_id)
        return job_id


class LoadBatchesToBigQuery(beam.PTransform):
    """Batches (lists) of rows or ``(KafkaRecord, row)`` pairs → load jobs into one table.

    Args:
      table_id: ``project.dataset.table``.
      bq_schema: the table's BigQuery JSON schema (``RowSchema.to_bigquery_json()``).
      endpoints: where BigQuery is.
      temp_location: folder (``gs://`` for real BigQuery) for the load files.
      create_disposition / write_disposition: of the (first) load job.
      timeout_s: the longest wait for one load job.
      source_format: ``PARQUET`` (a flat schema only) or ``NEWLINE_DELIMITED_JSON``; by
        default Parquet when the schema is flat.

    Returns:
      PCollection of ``(table_id, job_id)`` per load job run.
    """

    def __init__(
        self,
        table_id: str,
        bq_schema: Mapping[str, Any],
        *,
        endpoints: GcpEndpoints,
        temp_location: str,
        create_disposition: str = "CREATE_IF_NEEDED",
        write_disposition: str = "WRITE_APPEND",
        timeout_s: float = 3600.0,
        source_format: str | None = None,
    ) -> None:
        super().__init__()
        row_schema = RowSchema.from_bigquery_json(bq_schema)
        flat = arrow_schema(row_schema) is not None
        source_format = source_format or (PARQUET if flat else JSON_LINES)
        if source_format not in (PARQUET, JSON_LINES):
            raise ValueError(
                f"source_format must be {PARQUET} or {JSON_LINES}, got {source_format!r}"
            )
        if source_format == PARQUET and not flat:
            raise ValueError("PARQUET loads need a schema without RECORD, REPEATED or BYTES fields")
        self._table_id = table_id
        self._bq_schema = bq_schema
        self._endpoints = endpoints
        self._temp_location = temp_location
        self._create_disposition = create_disposition
        self._write_disposition = write_disposition
        self._timeout_s = timeout_s
        self._source_format = source_format
        self._tables = ArrowTables(row_schema) if source_format == PARQUET else None

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        # Fixed once per built pipeline: retries of the load step reuse the job ids.
        job_prefix = f"kbml_load_{uuid.uuid4().hex}"
        folder = FileSystems.join(self._temp_location.rstrip("/"), "bigquery_loads", job_prefix)
        files = batches | "WriteLoadFiles" >> beam.ParDo(
            _WriteLoadFilesFn(folder, self._tables)
        ).with_output_types(str)
        return (
            batches.pipeline
            | "LoadTrigger" >> beam.Create([None])
            | "LoadJobs"
            >> beam.ParDo(
                _LoadFilesFn(
                    self._table_id,
                    self._bq_schema,
                    endpoints=self._endpoints,
                    create_disposition=self._create_disposition,
                    write_disposition=self._write_disposition,
                    job_prefix=job_prefix,
                    timeout_s=self._timeout_s,
                    source_format=self._source_format,
                    folder=folder,
                ),
                beam.pvalue.AsList(files),
            )
        )
