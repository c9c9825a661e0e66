"""What the two export pipelines share: the Kafka → decode half, its options and launch checks.

``kafka_to_bigquery`` and ``kafka_to_gcs`` read a topic, decode and validate each message against
a declared schema and write the rows to a sink. The source half, its options (declared once here)
and the checks that must fail before any work starts live in this module; each pipeline adds its
sink options and sink.

Batch by default: the read is bounded by the end offsets at launch (``stop="end_at_launch"``).
With ``--streaming`` it is unbounded.

Usage (inside a pipeline module)::

    OPTIONS = (*ROW_SOURCE, Option("outputTableSpec", ...))
    source = RowSource.from_options(options, OPTIONS)      # OptionError before any work
    decoded = source.read_and_decode(p)                        # DecodedRows
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common import dofn_specs
from pipelines.common.model_source import ModelChoice, model_from_options
from pipelines.common.options import GCP_ENDPOINTS, KAFKA_SOURCE, Option, OptionError, validate
from transforms.decoding.decode import MESSAGE_FORMATS, DecodeAndValidate
from transforms.decoding.schema import Field, RowSchema
from transforms.inference.scoring import AttachVerdicts, without_verdicts
from transforms.kafka.config import KafkaConfig, KafkaConfigError
from transforms.kafka.group_lease import GroupLease
from transforms.kafka.reader import ReadFromKafka
from transforms.preprocessing.expressions import FUNCTIONS, MODEL_FUNCTIONS, SCORE_FIELD, Expr
from transforms.preprocessing.filter_project import Filter
from transforms.sinks.gcp_endpoints import GcpEndpoints

__all__ = [
    "ROW_SOURCE",
    "RowSource",
    "DecodedRows",
    "TABLE_SPEC_REGEX",
    "DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES",
    "BATCH_BUNDLE_S",
    "group_lease",
    "load_schema",
]

_LOGGER = logging.getLogger(__name__)

#: ``[project:]dataset.table`` (the project may contain ``.``/``-`` as in ``example.com:proj``).
TABLE_SPEC_REGEX = r"([a-z][a-z0-9.\-]*[a-z0-9]:)?[A-Za-z0-9_]{1,1024}\.[A-Za-z0-9_\-$]{1,1024}"

#: ``--deadLetterMaxPayloadBytes`` default: 512 KiB is ~683 KiB in base64, so a dead letter with
#: its metadata fits a default 1 MB Kafka record.
DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES = 512 * 1024

#: Longest reader bundle of a batch read (the reader's 0.5 s default suits streams). A bundle end
#: costs a file of its own (exports), a wait for the producer's acks (the scorer) and, locally,
#: Beam's state sampler: a 200k-event FILE_LOADS export ran as two bundles, the second ~0.45 s.
BATCH_BUNDLE_S = 5.0

#: Options of the source half: Kafka, GCP endpoints, message format and schema.
ROW_SOURCE: tuple[Option, ...] = (
    *KAFKA_SOURCE,
    *GCP_ENDPOINTS,
    Option(
        "messageFormat",
        "Message format",
        "How Kafka message values are encoded: JSON, AVRO (schemaless Avro records written with "
        "the schema in --schemaPath) or AVRO_CONFLUENT_WIRE_FORMAT (Confluent framing; writer "
        "schemas from --schemaRegistryUrl).",
        default="JSON",
        choices=MESSAGE_FORMATS,
        example="AVRO_CONFLUENT_WIRE_FORMAT",
    ),
    Option(
        "schemaPath",
        "Row schema file",
        "BigQuery JSON schema or Avro schema (.avsc) of the rows, local or gs://. Rows are "
        "validated against it and the output table/TFRecord features follow it.",
        required=True,
        regexes=(r"\S+\.(json|avsc)",),
        example="gs://my-bucket/schemas/creditcard.json",
        param_type="GCS_READ_FILE",
    ),
    Option(
        "schemaRegistryUrl",
        "Schema registry URL",
        "Confluent schema registry for AVRO_CONFLUENT_WIRE_FORMAT, e.g. http://registry:8081.",
        regexes=(r"https?://[A-Za-z0-9_.\-\[\]:]+(:[0-9]{1,5})?(/\S*)?",),
        example="http://schema-registry:8081",
    ),
    Option(
        "unknownFields",
        "Unknown fields policy",
        "What to do with message fields the schema does not declare: reject (dead letter) or "
        "ignore (dropped from the row).",
        default="reject",
        choices=("reject", "ignore"),
        example="ignore",
    ),
    Option(
        "filter",
        "Row filter",
        "Keep only rows matching this expression (KSQL-style WHERE over the schema's fields, "
        "see transforms.preprocessing.expressions), e.g. Amount > 0 and Time >= 3600. "
        "ANOMALY() (the model's score) and IS_ANOMALY() (its verdict) score rows with the "
        "model of --modelPath/--modelServerUrl, in batches, where the pipeline takes one: "
        "IS_ANOMALY() exports only anomalous rows. Rows the expression fails on (e.g. a "
        "comparison with null) or the model cannot read become dead letters.",
        regexes=(r"[^;]{1,2000}",),
        example="Amount > 0 and Time >= 3600",
    ),
    Option(
        "maxMessageBytes",
        "Maximum message size",
        "Messages with longer values are dead-lettered before decoding (bytes).",
        type=int,
        default=1_000_000,
        regexes=(r"[1-9][0-9]{0,9}",),
        example="1000000",
    ),
    Option(
        "deadLetterMaxPayloadBytes",
        "Dead-letter payload limit",
        "Dead letters keep at most this many bytes of the rejected message (bytes, > 0); a cut "
        "letter records the full length, its SHA-256 and payload_truncated. The dead-letter "
        "sink's own limit can cut further. The default fits Kafka's 1 MB after base64.",
        type=int,
        default=DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES,
        regexes=(r"[1-9][0-9]{0,9}",),
        example="524288",
    ),
)


def _start(values: Mapping[str, Any]) -> dict[str, Any]:
    """``--startOffset`` / ``--consumerGroupId`` → ReadFromKafka ``start`` arguments.

    With a group its committed offsets win and earliest/latest is the fallback for partitions
    without one; an RFC 3339 time always starts there (a replay). Without a group earliest/latest
    are positions and ``committed`` is an error.
    """
    start = values["startOffset"] or "committed"
    group = values.get("consumerGroupId")
    if start not in ("earliest", "latest", "committed"):
        moment = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
        return {"start": moment}
    if group is None:
        if start == "committed":
            raise OptionError(
                "--startOffset=committed needs --consumerGroupId (or use earliest, latest or a "
                "time)"
            )
        return {"start": start}
    return {"start": "committed", "start_fallback": "earliest" if start == "committed" else start}


def group_lease(values: Mapping[str, Any]) -> GroupLease | None:
    """The lease on ``--consumerGroupId`` a run holds (None without a group): a second copy of
    a pipeline with the same group is refused instead of reading every partition again."""
    group = values.get("consumerGroupId")
    if group is None:
        return None
    return GroupLease(
        KafkaConfig.from_options(values),
        [values["inputTopic"]],
        group,
        topics_option="--inputTopic",
    )


def _row_filter(text: str | None, schema: RowSchema) -> Expr | None:
    """``--filter`` compiled, with every field it names checked against the schema."""
    if text is None:
        return None
    try:
        expr = Expr(text)
    except ValueError as err:
        raise OptionError(f"--filter={text!r}: {err}") from err
    names = {
        n.id for n in ast.walk(ast.parse(text.strip(), mode="eval")) if isinstance(n, ast.Name)
    }
    known = {*schema.names, *FUNCTIONS, *MODEL_FUNCTIONS, "True", "False", "None"}
    unknown = sorted(names - known)
    if unknown:
        raise OptionError(f"--filter={text!r} names fields not in --schemaPath: {unknown}")
    return expr


class _OnRow:
    """Apply a row predicate to plain rows and to ``(KafkaRecord, row)`` pairs alike."""

    def __init__(self, predicate: Expr) -> None:
        self._predicate = predicate

    def __call__(self, element: Any) -> Any:
        row = element[1] if isinstance(element, tuple) else element
        return self._predicate(row)


class DecodedRows(NamedTuple):
    """Decoded (and filtered) rows plus every dead letter of the source half."""

    rows: beam.PCollection
    dead_letters: beam.PCollection


def load_schema(path: str) -> tuple[RowSchema, dict[str, Any] | None]:
    """The row schema, plus the Avro document when the file is Avro (the exact writer schema)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(path) as handle:
            document = json.loads(handle.read().decode("utf-8"))
        if isinstance(document, Mapping) and document.get("type") == "record":
            return RowSchema.from_avro(document), dict(document)
        return RowSchema.from_bigquery_json(document), None
    except Exception as err:  # noqa: BLE001 - any failure here is a bad --schemaPath
        raise OptionError(f"--schemaPath={path!r} cannot be used: {err}") from err


@dataclasses.dataclass(frozen=True)
class RowSource:
    """The checked source half of an export pipeline; build it with :meth:`from_options`."""

    values: Mapping[str, Any]
    streaming: bool
    kafka: KafkaConfig
    endpoints: GcpEndpoints
    schema: RowSchema
    avro_schema: dict[str, Any] | None
    row_filter: Expr | None
    #: The model ANOMALY() in ``--filter`` or ``--anomalyScoreColumn`` scores with (else None).
    model: ModelChoice | None = None
    #: The column the exported rows get the model's score in (``--anomalyScoreColumn``).
    score_column: str | None = None

    @property
    def output_schema(self) -> RowSchema:
        """The schema of the rows :meth:`read_and_decode` returns (with the score column)."""
        if self.score_column is None:
            return self.schema
        column = Field(self.score_column, "FLOAT", "NULLABLE", description="ANOMALY()")
        return RowSchema((*self.schema.fields, column))

    @classmethod
    def from_options(cls, options: PipelineOptions, declarations: Sequence[Option]) -> RowSource:
        """Validate every option, resolve endpoints and load the schema; raise OptionError early.

        Also points this process's ``gs://`` filesystem at a storage emulator when one is set, so
        ``--schemaPath gs://…`` works locally, and memoizes Beam's DoFn introspection
        (:mod:`pipelines.common.dofn_specs`).
        """
        dofn_specs.install()
        values = validate(options, declarations)
        streaming = bool(options.view_as(StandardOptions).streaming)
        read_args = _start(values)
        if values["messageFormat"] == "AVRO_CONFLUENT_WIRE_FORMAT" and not values.get(
            "schemaRegistryUrl"
        ):
            raise OptionError(
                "--messageFormat=AVRO_CONFLUENT_WIRE_FORMAT needs --schemaRegistryUrl"
            )
        try:
            kafka = KafkaConfig.from_options(values)
        except KafkaConfigError as err:
            raise OptionError(str(err)) from err
        endpoints = GcpEndpoints.from_options(options)
        endpoints.configure_process()
        schema, avro = load_schema(values["schemaPath"])
        row_filter = _row_filter(values.get("filter"), schema)
        model = None
        score_column = values.get("anomalyScoreColumn")
        if score_column is not None and score_column in schema:
            raise OptionError(f"--anomalyScoreColumn={score_column!r} is already a schema field")
        if score_column is not None or (row_filter is not None and row_filter.uses_model):
            if "modelServerUrl" not in values:
                raise OptionError(
                    f"--filter={values.get('filter')!r} calls the model, which this pipeline "
                    "does not take (no --modelPath/--modelServerUrl)"
                )
            model = model_from_options(values, schema.names)
        source = cls(
            values, streaming, kafka, endpoints, schema, avro, row_filter, model, score_column
        )
        source.reader(read_args)  # ReadFromKafka checks its arguments at construction
        _LOGGER.info(
            "Export source: topic %s, %s, %s mode, Kafka %s",
            values["inputTopic"],
            values["messageFormat"],
            "streaming" if streaming else "batch (end offsets at launch)",
            kafka,
        )
        return source

    def reader(self, read_args: Mapping[str, Any] | None = None, **options: Any) -> ReadFromKafka:
        """The Kafka read: bounded by the end offsets at launch unless streaming.

        ``options`` are further ``ReadFromKafka`` arguments, e.g. ``max_process_s`` (the scorer
        shortens bundles for latency). A batch read defaults to long bundles
        (:data:`BATCH_BUNDLE_S`).
        """
        if not self.streaming:
            options = {"max_process_s": BATCH_BUNDLE_S, **options}
        try:
            return ReadFromKafka(
                self.kafka,
                self.values["inputTopic"],
                group_id=self.values.get("consumerGroupId"),
                stop="unbounded" if self.streaming else "end_at_launch",
                topics_option="--inputTopic",  # a missing topic's error names the flag
                max_unit_records=self.values["workUnitRecords"],
                outage_replay_s=self.values["outageReplaySeconds"],
                **(read_args if read_args is not None else _start(self.values)),
                **options,
            )
        except ValueError as err:
            raise OptionError(f"invalid Kafka source options: {err}") from err

    def decoder(self) -> DecodeAndValidate:
        return DecodeAndValidate(
            self.schema,
            self.values["messageFormat"],
            avro_schema=self.avro_schema,
            schema_registry_url=self.values.get("schemaRegistryUrl"),
            unknown_fields=self.values["unknownFields"],
            max_message_bytes=self.values["maxMessageBytes"],
        )

    def read_and_decode(
        self,
        p: beam.Pipeline,
        *,
        with_records: bool = False,
        batched: bool = False,
        columnar: bool = False,
        **reader_options: Any,
    ) -> DecodedRows:
        """Kafka → DecodeAndValidate → ``--filter``; ``with_records`` keeps
        ``(KafkaRecord, row)`` pairs; ``batched`` makes ``rows`` lists, one per polled batch
        that kept any row (no per-element Beam cost; not for rows scored for ``ANOMALY()``,
        which are scored and filtered row by row). ``columnar`` (batched): a batch that decodes
        whole is a :class:`~transforms.decoding.columnar.StructRows`, filtered and passed on
        column-wise, or with records (and no ``--filter``) a
        :class:`~transforms.decoding.columnar.ColumnarPairs`, for steps reading a few columns."""
        if self.model is not None:
            if batched:
                raise ValueError("rows scored for ANOMALY() are read unbatched")
            return self._read_score_and_filter(p, with_records, reader_options)
        reader = self.reader(**reader_options)
        decoder = self.decoder().with_records() if with_records else self.decoder()
        if batched:
            reader, decoder = reader.batched(), decoder.batched()
            if columnar and not (with_records and self.row_filter is not None):
                decoder = decoder.columnar()
        decoded = p | "ReadFromKafka" >> reader | "DecodeAndValidate" >> decoder
        if self.row_filter is None:
            return DecodedRows(decoded.rows, decoded.dead_letters)
        predicate = _OnRow(self.row_filter) if with_records else self.row_filter
        row_filter = Filter(predicate).with_dead_letters()
        kept = decoded.rows | "Filter" >> (row_filter.batched() if batched else row_filter)
        dead_letters = (decoded.dead_letters, kept.dead_letters) | "SourceDeadLetters" >> (
            beam.Flatten()
        )
        return DecodedRows(kept.rows, dead_letters)

    def _read_score_and_filter(
        self, p: beam.Pipeline, with_records: bool, reader_options: Mapping[str, Any]
    ) -> DecodedRows:
        """Kafka → DecodeAndValidate → the model's verdicts in each row (batched RunInference)
        → ``--filter`` (may call ``ANOMALY()``) → rows without the verdict fields, with the
        score in ``--anomalyScoreColumn`` if set."""
        decoded = (
            p
            | "ReadFromKafka" >> self.reader(**reader_options)
            | "DecodeAndValidate" >> self.decoder().with_records()
        )
        scored = decoded.rows | "AttachVerdicts" >> AttachVerdicts(
            self.model.handler, max_batch_wait_s=0.05 if self.streaming else None
        )
        pairs, letters = scored.pairs, [decoded.dead_letters, scored.dead_letters]
        if self.row_filter is not None:
            kept = pairs | "Filter" >> Filter(_OnRow(self.row_filter)).with_dead_letters()
            pairs = kept.rows
            letters.append(kept.dead_letters)
        rows = pairs | "WithoutVerdicts" >> beam.Map(_FinishRow(self.score_column, with_records))
        dead_letters = tuple(letters) | "SourceDeadLetters" >> beam.Flatten()
        return DecodedRows(rows, dead_letters)


class _FinishRow:
    """A scored pair → the row (or pair) without the verdict fields, the score in ``column``."""

    def __init__(self, column: str | None, with_records: bool) -> None:
        self._column = column
        self._with_records = with_records

    def __call__(self, pair: tuple[Any, Mapping[str, Any]]) -> Any:
        record, scored = pair
        row = without_verdicts(scored)
        if self._column is not None:
            row[self._column] = scored[SCORE_FIELD]
        return (record, row) if self._with_records else row
