"""Kafka → decode/validate → sharded TFRecord files of tf.Example on GCS (or a local directory).

Training input for the trainer. Layout of ``--outputDirectory``::

    part-SSSSS-of-NNNNN.tfrecord   tf.Example shards, one feature per schema field
    schema.json                     the row schema (BigQuery JSON), written after the shards
    transform/                      tf.Transform artifact (with --analyzeTransform)
    transform.json                  pointer to it
    deadletter/dead_letters-*.jsonl every rejected message as a JSON line (DeadLetter.to_json)

Batch by default (end offsets at launch); ``--streaming`` writes windowed shards every
``--windowSeconds``. Offsets are committed when the reader's bundle finishes, which is after its
rows were written to the sink's temporary files; see ``docs/export_pipelines.md``.

Run locally (stack from ``scripts/stack.sh up``)::

    python -m pipelines.kafka_to_gcs --bootstrapServers 127.0.0.1:9092 --kafkaConfig \\
        "$KAFKA_CONFIG" --inputTopic transactions --startOffset earliest \\
        --schemaPath transforms/decoding/schemas/creditcard.json \\
        --outputDirectory gs://exports/cc \\
        --project kafka-beam-ml-local --storageEndpoint http://127.0.0.1:9023
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common.metrics_server import metrics_server_from_options
from pipelines.common.model_source import MODEL_SOURCE, SCORE_COLUMN
from pipelines.common.options import Option, OptionError, options_class
from pipelines.common.row_source import ROW_SOURCE, RowSource, group_lease
from pipelines.common.supervisor import run_pipeline
from pipelines.common.watchdog import watchdog_from_options
from transforms.sinks.tfrecord import WriteTFRecords
from transforms.size_limits import FitDeadLetters

__all__ = [
    "OPTIONS",
    "KafkaToGcsOptions",
    "KafkaToGcsOutputs",
    "prepare",
    "preflight",
    "build_pipeline",
    "run",
    "SHARD_PREFIX",
    "DEAD_LETTER_DIR",
    "TRANSFORM_DIR",
]

_LOGGER = logging.getLogger(__name__)

#: Shard file prefix inside ``--outputDirectory``.
SHARD_PREFIX = "part"
#: Folder of dead-letter JSON lines inside ``--outputDirectory``.
DEAD_LETTER_DIR = "deadletter"
#: Folder of the tf.Transform artifact inside ``--outputDirectory``.
TRANSFORM_DIR = "transform"

_SUFFIXES = {"NONE": ".tfrecord", "GZIP": ".tfrecord.gz"}

OPTIONS: tuple[Option, ...] = (
    *ROW_SOURCE,
    Option(
        "outputDirectory",
        "Output directory",
        "Directory (gs:// or local) for the TFRecord shards, schema.json, the dead-letter folder "
        "and the optional tf.Transform artifact. Use one directory per export.",
        required=True,
        regexes=(r"(gs://[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9](/\S*)?|/\S*)",),
        example="gs://my-bucket/exports/creditcard",
        param_type="GCS_WRITE_FOLDER",
    ),
    Option(
        "numShards",
        "Number of shards",
        "TFRecord files to write; 0 lets the runner choose.",
        type=int,
        default=0,
        regexes=(r"[0-9]{1,5}",),
        example="8",
    ),
    Option(
        "compression",
        "Compression",
        "NONE or GZIP (read with TFRecordDataset(compression_type='GZIP')).",
        default="NONE",
        choices=tuple(_SUFFIXES),
        example="GZIP",
    ),
    Option(
        "windowSeconds",
        "File window (streaming)",
        "With --streaming: seconds of data per set of shard files.",
        type=int,
        default=300,
        regexes=(r"[1-9][0-9]{0,6}",),
        example="300",
    ),
    Option(
        "analyzeTransform",
        "Analyze with tf.Transform",
        "Batch only: also analyze the exported rows with tf.Transform and save the transform_fn "
        "under <outputDirectory>/transform for the trainer and scorer.",
        type=bool,
        default=False,
        choices=("true", "false", "True", "False"),
        example="true",
    ),
    Option(
        "labelField",
        "Label field",
        "Label column passed through tf.Transform untransformed (e.g. Class).",
        regexes=(r"[A-Za-z_][A-Za-z0-9_]*",),
        example="Class",
    ),
    *MODEL_SOURCE,  # for ANOMALY()/IS_ANOMALY() in --filter and --anomalyScoreColumn
    *SCORE_COLUMN,
)

KafkaToGcsOptions = options_class("KafkaToGcsOptions", OPTIONS)


class KafkaToGcsOutputs(NamedTuple):
    """PCollections of a built pipeline, for tests; ``rows`` are batches (lists) of rows."""

    rows: beam.PCollection
    files: beam.PCollection
    dead_letters: beam.PCollection


def prepare(options: PipelineOptions) -> RowSource:
    """Check every option (incl. cross-option rules) before any work; OptionError names the flag."""
    source = RowSource.from_options(options, OPTIONS)
    values = source.values
    if values["analyzeTransform"] and source.streaming:
        raise OptionError("--analyzeTransform needs a bounded read: drop --streaming")
    label = values.get("labelField")
    if label is not None and label not in source.schema:
        raise OptionError(f"--labelField={label!r} is not a field of --schemaPath")
    return source


def preflight(source: RowSource) -> None:
    """Fail at launch, naming the flag, when the output bucket is missing or GCS unreachable.

    Without it a dead endpoint surfaces only when the shards are finalized, after the whole
    read, and after Beam's 120 s retry.
    """
    from google.api_core.exceptions import GoogleAPIError
    from google.cloud.storage.retry import DEFAULT_RETRY

    directory = source.values["outputDirectory"]
    if not directory.startswith("gs://"):
        return
    bucket = directory[len("gs://") :].split("/", 1)[0]
    retry = DEFAULT_RETRY.with_deadline(30) if source.endpoints.storage_emulated else DEFAULT_RETRY
    try:
        exists = source.endpoints.storage_client().bucket(bucket).exists(timeout=30, retry=retry)
    except (GoogleAPIError, OSError) as err:
        where = source.endpoints.storage_endpoint or "Google Cloud Storage"
        raise OptionError(
            f"--outputDirectory={directory!r}: {where} is not reachable: {err}"
        ) from err
    if not exists:
        raise OptionError(f"--outputDirectory={directory!r}: bucket {bucket} does not exist")


def build_pipeline(
    p: beam.Pipeline, options: PipelineOptions, source: RowSource | None = None
) -> KafkaToGcsOutputs:
    """Add the export to ``p``; ``source`` comes from :func:`prepare` (called if omitted)."""
    source = source or prepare(options)
    values = source.values
    directory = values["outputDirectory"].rstrip("/")
    frequency = values["windowSeconds"] if source.streaming else None
    transform_dir = None
    # Lists of rows from the reader to the shard files: Beam's per-element cost between steps
    # was most of the export's time (docs/benchmarks.md). Rows scored for ANOMALY() come one by
    # one.
    batched = source.model is None
    decoded = source.read_and_decode(p, batched=batched, columnar=batched)
    if values["analyzeTransform"]:
        from transforms.preprocessing.tft import AnalyzeAndWriteTransform  # TF Transform is heavy

        transform_dir = FileSystems.join(directory, TRANSFORM_DIR)
        rows = decoded.rows
        if batched:  # tf.Transform analyzes single rows
            rows = rows | "Unbatch" >> beam.FlatMap(lambda batch: batch)
        _ = rows | "AnalyzeTransform" >> AnalyzeAndWriteTransform(
            source.output_schema,
            transform_dir,
            label=values.get("labelField"),
        )
    sink = WriteTFRecords(
        FileSystems.join(directory, SHARD_PREFIX),
        source.output_schema,
        num_shards=values["numShards"],
        file_name_suffix=_SUFFIXES[values["compression"]],
        transform_dir=transform_dir,
        triggering_frequency=frequency,
    )
    written = decoded.rows | "WriteTFRecords" >> (sink.batched() if batched else sink)
    dead_letters = (
        decoded.dead_letters,
        written.dead_letters,
    ) | "AllDeadLetters" >> beam.Flatten()
    _ = (
        dead_letters
        # Files have no record limit: only --deadLetterMaxPayloadBytes cuts payloads.
        | "FitDeadLetters" >> FitDeadLetters(values["deadLetterMaxPayloadBytes"])
        | "DeadLetterJson" >> beam.Map(lambda letter: letter.to_json().decode("utf-8"))
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            FileSystems.join(directory, DEAD_LETTER_DIR, "dead_letters"),
            file_name_suffix=".jsonl",
            triggering_frequency=frequency,
        )
    )
    return KafkaToGcsOutputs(decoded.rows, written.files, dead_letters)


def run(argv: Sequence[str] | None = None) -> None:
    """Parse and check the options (errors name the flag), then run until done."""
    options = KafkaToGcsOptions(list(argv) if argv is not None else None)
    source = prepare(options)
    preflight(source)
    run_pipeline(
        lambda p: build_pipeline(p, options, source),
        options,
        name="kafka_to_gcs",
        watchdog=watchdog_from_options(source.values),
        metrics=metrics_server_from_options(source.values),
        lease=group_lease(source.values),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
