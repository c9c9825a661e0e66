"""Kafka → decode/validate → BigQuery, with every rejected message in a dead-letter table.

The Dataflow "Kafka to BigQuery" job of the design documents. Rows that fail decoding or that
BigQuery rejects land in ``--outputDeadletterTable`` (schema ``transforms.dead_letter``) with the
raw bytes and Kafka coordinates. With ``STREAMING_INSERTS`` (default) the insert runs in the
reader's bundle, so offsets are committed to ``--consumerGroupId`` only after BigQuery accepted
the rows; insert ids are the Kafka coordinates, so a replay dedupes. See
``docs/export_pipelines.md`` for ``FILE_LOADS``.

Run locally (stack from ``scripts/stack.sh up``)::

    python -m pipelines.kafka_to_bigquery --bootstrapServers 127.0.0.1:9092 \\
        --kafkaConfig "$KAFKA_CONFIG" --inputTopic transactions --consumerGroupId export \\
        --startOffset earliest --schemaPath transforms/decoding/schemas/creditcard.json \\
        --outputTableSpec kafka-beam-ml-local:fraud.transactions \\
        --project kafka-beam-ml-local --bigqueryEndpoint http://127.0.0.1:9050
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipelines.common.metrics_server import metrics_server_from_options
from pipelines.common.model_source import MODEL_SOURCE, SCORE_COLUMN
from pipelines.common.options import Option, OptionError, options_class
from pipelines.common.row_source import ROW_SOURCE, TABLE_SPEC_REGEX, RowSource, group_lease
from pipelines.common.supervisor import run_pipeline
from pipelines.common.watchdog import watchdog_from_options
from transforms.sinks.bigquery import METHODS, WriteDeadLettersToBigQuery, WriteRowsToBigQuery

__all__ = [
    "OPTIONS",
    "KafkaToBigQueryOptions",
    "KafkaToBigQueryOutputs",
    "prepare",
    "preflight",
    "build_pipeline",
    "run",
]

_LOGGER = logging.getLogger(__name__)

#: Suffix of the default dead-letter table (as in Google's Kafka to BigQuery template).
DEAD_LETTER_SUFFIX = "_error_records"

OPTIONS: tuple[Option, ...] = (
    *ROW_SOURCE,
    Option(
        "outputTableSpec",
        "Output table",
        "BigQuery table for the rows, [project:]dataset.table; created from the schema if "
        "missing (see --createDisposition).",
        required=True,
        regexes=(TABLE_SPEC_REGEX,),
        example="my-project:fraud.transactions",
        param_type="BIGQUERY_TABLE",
    ),
    Option(
        "outputDeadletterTable",
        "Dead-letter table",
        "BigQuery table for messages that failed decoding or that BigQuery rejected, "
        f"[project:]dataset.table. Default: the output table name + {DEAD_LETTER_SUFFIX}.",
        regexes=(TABLE_SPEC_REGEX,),
        example="my-project:fraud.transactions_error_records",
        param_type="BIGQUERY_TABLE",
    ),
    Option(
        "writeMethod",
        "BigQuery write method",
        "STREAMING_INSERTS (insertAll with Kafka-coordinate insert ids, batch or streaming) or "
        "FILE_LOADS (load jobs, batch only; needs --temp_location).",
        default="STREAMING_INSERTS",
        choices=METHODS,
        example="FILE_LOADS",
    ),
    Option(
        "createDisposition",
        "Create disposition",
        "CREATE_IF_NEEDED creates missing tables from the schema; CREATE_NEVER fails instead.",
        default="CREATE_IF_NEEDED",
        choices=("CREATE_IF_NEEDED", "CREATE_NEVER"),
        example="CREATE_NEVER",
    ),
    Option(
        "insertBatchSize",
        "Rows per insert request",
        "Rows per BigQuery insertAll request (STREAMING_INSERTS).",
        type=int,
        default=500,
        regexes=(r"[1-9][0-9]{0,4}",),
        example="500",
    ),
    *MODEL_SOURCE,  # for ANOMALY()/IS_ANOMALY() in --filter and --anomalyScoreColumn
    *SCORE_COLUMN,
)

KafkaToBigQueryOptions = options_class("KafkaToBigQueryOptions", OPTIONS)


class KafkaToBigQueryOutputs(NamedTuple):
    """PCollections of a built pipeline, for tests: decoded rows (``(KafkaRecord, row)`` pairs;
    with FILE_LOADS batches of rows) and all dead letters."""

    rows: beam.PCollection
    dead_letters: beam.PCollection


def prepare(options: PipelineOptions) -> RowSource:
    """Check every option (incl. cross-option rules) before any work; OptionError names the flag."""
    source = RowSource.from_options(options, OPTIONS)
    method = source.values["writeMethod"]
    if method == "FILE_LOADS":
        if source.streaming:
            raise OptionError("--writeMethod=FILE_LOADS needs a bounded read: drop --streaming")
        if not options.view_as(GoogleCloudOptions).temp_location:
            raise OptionError(
                "--writeMethod=FILE_LOADS needs --temp_location (gs://) for load files"
            )
    return source


def preflight(source: RowSource) -> None:
    """Fail at launch, naming the flag, when an output dataset is missing or BigQuery is
    unreachable (the client gives up within the endpoints' retry deadline)."""
    from google.api_core.exceptions import GoogleAPIError, NotFound

    client = source.endpoints.bigquery_client()
    for flag, spec in (
        ("--outputTableSpec", source.values["outputTableSpec"]),
        ("--outputDeadletterTable", _dead_letter_table(source.values)),
    ):
        project, _, rest = spec.rpartition(":")
        dataset = f"{project or source.endpoints.project}.{rest.split('.')[0]}"
        try:
            client.get_dataset(dataset, retry=source.endpoints.bigquery_retry, timeout=30)
        except NotFound as err:
            raise OptionError(f"{flag}={spec!r}: dataset {dataset} does not exist") from err
        except (GoogleAPIError, OSError) as err:
            raise OptionError(
                f"{flag}={spec!r}: BigQuery at {source.endpoints.bigquery_endpoint or 'Google'} "
                f"is not reachable: {err}"
            ) from err


def _dead_letter_table(values) -> str:  # noqa: ANN001 - the validated option values
    return values.get("outputDeadletterTable") or values["outputTableSpec"] + DEAD_LETTER_SUFFIX


def build_pipeline(
    p: beam.Pipeline, options: PipelineOptions, source: RowSource | None = None
) -> KafkaToBigQueryOutputs:
    """Add the export to ``p``; ``source`` comes from :func:`prepare` (called if omitted)."""
    source = source or prepare(options)
    values = source.values
    table = values["outputTableSpec"]
    dead_letter_table = _dead_letter_table(values)
    # FILE_LOADS takes lists of rows from the reader to the load files (Beam's per-element cost
    # was most of its time); streaming inserts need each row's Kafka record for its insert id.
    # Rows scored for ANOMALY() come one by one.
    file_loads = values["writeMethod"] == "FILE_LOADS"
    batched = file_loads and source.model is None
    decoded = source.read_and_decode(
        p, with_records=not file_loads, batched=batched, columnar=batched
    )
    sink = WriteRowsToBigQuery(
        table,
        source.output_schema,
        method=values["writeMethod"],
        endpoints=source.endpoints,
        create_disposition=values["createDisposition"],
        batch_size=values["insertBatchSize"],
    )
    written = decoded.rows | "WriteRows" >> (sink.batched() if batched else sink)
    dead_letters = (
        decoded.dead_letters,
        written.dead_letters,
    ) | "AllDeadLetters" >> beam.Flatten()
    _ = dead_letters | "WriteDeadLetters" >> WriteDeadLettersToBigQuery(
        dead_letter_table,
        endpoints=source.endpoints,
        max_payload_bytes=values["deadLetterMaxPayloadBytes"],
    )
    return KafkaToBigQueryOutputs(decoded.rows, dead_letters)


def run(argv: Sequence[str] | None = None) -> None:
    """Parse and check the options (errors name the flag), then run until done."""
    options = KafkaToBigQueryOptions(list(argv) if argv is not None else None)
    source = prepare(options)
    preflight(source)
    run_pipeline(
        lambda p: build_pipeline(p, options, source),
        options,
        name="kafka_to_bigquery",
        watchdog=watchdog_from_options(source.values),
        metrics=metrics_server_from_options(source.values),
        lease=group_lease(source.values),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
