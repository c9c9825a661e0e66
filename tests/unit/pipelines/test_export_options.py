"""Options of the export pipelines: complete declarations, and bad values fail before any work."""

from __future__ import annotations

import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import kafka_to_bigquery, kafka_to_gcs
from pipelines.common.options import OptionError
from pipelines.common.row_source import _OnRow
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing.filter_project import Filter

SCHEMA = bundled_schema_path("creditcard")
# Port 1 on loopback: nothing listens there, so any attempt to reach Kafka would fail or hang.
COMMON = [
    "--bootstrapServers=127.0.0.1:1",
    "--inputTopic=transactions",
    "--consumerGroupId=export",
    f"--schemaPath={SCHEMA}",
    "--project=kafka-beam-ml-local",
]
BQ = [*COMMON, "--outputTableSpec=kafka-beam-ml-local:fraud.transactions"]
GCS = [*COMMON, "--outputDirectory=gs://exports/creditcard"]


def _bq(*extra: str):
    return kafka_to_bigquery.prepare(kafka_to_bigquery.KafkaToBigQueryOptions([*BQ, *extra]))


def _gcs(*extra: str):
    return kafka_to_gcs.prepare(kafka_to_gcs.KafkaToGcsOptions([*GCS, *extra]))


@pytest.mark.parametrize("module", [kafka_to_bigquery, kafka_to_gcs])
def test_every_option_is_complete_and_its_example_is_valid(module):
    names = [o.name for o in module.OPTIONS]
    assert len(names) == len(set(names))
    for option in module.OPTIONS:
        assert option.label and option.help.endswith((".", ")")), option.name
        assert option.example is not None, option.name
        option.check(option.example)  # raises OptionError if the example does not fit
        assert option.regexes or option.choices or option.name in _FREE_TEXT, option.name
    for required in (
        "bootstrapServers",
        "inputTopic",
        "messageFormat",
        "schemaPath",
        "schemaRegistryUrl",
        "consumerGroupId",
        "startOffset",
        "saslPassword",
    ):
        assert required in names


_FREE_TEXT = {"saslUsername", "saslPassword", "sslCaLocation"}


def test_valid_options_resolve_defaults():
    source = _bq()
    assert source.values["messageFormat"] == "JSON"
    assert source.values["writeMethod"] == "STREAMING_INSERTS"
    assert source.streaming is False
    assert source.schema.names[0] == "event_id"
    assert _gcs("--streaming").streaming is True
    assert _gcs("--filter=Amount > 0 and coalesce(Class, 0) == 0").row_filter(
        {"Amount": 1.0, "Class": None}
    )


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--bootstrapServers=not a host"], "--bootstrapServers"),
        (["--inputTopic=bad topic!"], "--inputTopic"),
        (["--messageFormat=XML"], "--messageFormat"),
        (["--outputTableSpec=just_a_table"], "--outputTableSpec"),
        (["--outputDeadletterTable=ds"], "--outputDeadletterTable"),
        (["--writeMethod=STORAGE_WRITE_API"], "--writeMethod"),
        (["--startOffset=yesterday"], "--startOffset"),
        (["--schemaPath=/nonexistent/schema.json"], "--schemaPath"),
        (["--schemaPath=schema.txt"], "--schemaPath"),
        (["--messageFormat=AVRO_CONFLUENT_WIRE_FORMAT"], "--schemaRegistryUrl"),
        (["--bigqueryEndpoint=ftp://x"], "--bigqueryEndpoint"),
        (
            [
                "--securityProtocol=SASL_SSL",
                "--saslMechanism=PLAIN",
                "--saslUsername=u",
                "--saslPassword=env:SURELY_UNSET_KBML_VAR",
            ],
            "--saslPassword",
        ),
        (["--writeMethod=FILE_LOADS", "--streaming"], "--writeMethod"),
        (["--writeMethod=FILE_LOADS"], "--temp_location"),
        (["--insertBatchSize=0"], "--insertBatchSize"),
        (["--filter=Amount >"], "--filter"),
        (["--filter=__import__('os')"], "--filter"),
        (["--filter=amount > 0"], "--filter.*not in --schemaPath.*amount"),
    ],
)
def test_bad_bigquery_options_name_the_flag(extra, flag):
    with pytest.raises(OptionError, match=flag):
        _bq(*extra)


def test_missing_required_options_are_all_reported():
    options = kafka_to_bigquery.KafkaToBigQueryOptions(["--bootstrapServers=127.0.0.1:9092"])
    with pytest.raises(OptionError) as info:
        kafka_to_bigquery.prepare(options)
    for flag in ("--inputTopic", "--schemaPath", "--outputTableSpec"):
        assert flag in str(info.value)


def test_committed_start_needs_a_group():
    argv = [a for a in BQ if not a.startswith("--consumerGroupId")]
    options = kafka_to_bigquery.KafkaToBigQueryOptions(argv)
    with pytest.raises(OptionError, match="--consumerGroupId"):
        kafka_to_bigquery.prepare(options)
    ok = kafka_to_bigquery.KafkaToBigQueryOptions([*argv, "--startOffset=earliest"])
    assert kafka_to_bigquery.prepare(ok).values["startOffset"] == "earliest"


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--outputDirectory=relative/dir"], "--outputDirectory"),
        (["--numShards=-1"], "--numShards"),
        (["--compression=ZIP"], "--compression"),
        (["--windowSeconds=0"], "--windowSeconds"),
        (["--analyzeTransform=true", "--streaming"], "--analyzeTransform"),
        (["--labelField=NoSuchColumn"], "--labelField"),
        (["--unknownFields=keep"], "--unknownFields"),
    ],
)
def test_bad_gcs_options_name_the_flag(extra, flag):
    with pytest.raises(OptionError, match=flag):
        _gcs(*extra)


@pytest.mark.parametrize(
    "module, argv",
    [(kafka_to_bigquery, [*BQ, "--messageFormat=XML"]), (kafka_to_gcs, [*GCS, "--numShards=x"])],
)
def test_run_fails_before_touching_kafka(module, argv):
    started = time.monotonic()
    with pytest.raises((OptionError, SystemExit)):
        module.run(argv)
    assert time.monotonic() - started < 5


def test_options_classes_expose_the_declared_flags_only():
    options = PipelineOptions([*BQ]).view_as(kafka_to_bigquery.KafkaToBigQueryOptions)
    assert options.outputTableSpec == "kafka-beam-ml-local:fraud.transactions"
    assert options.maxMessageBytes == 1_000_000


def test_filter_failures_on_record_pairs_dead_letter_the_kafka_bytes():
    source = _bq("--filter=Class >= 1")
    pairs = [
        (KafkaRecord("t", 0, offset, b"k", raw, 0), {"Class": label})
        for offset, (raw, label) in enumerate([(b"one", 1), (b"zero", 0), (b"null", None)])
    ]
    with TestPipeline() as p:
        kept = p | beam.Create(pairs) | Filter(_OnRow(source.row_filter)).with_dead_letters()
        assert_that(kept.rows | beam.Map(lambda pair: pair[0].offset), equal_to([0]), label="rows")
        assert_that(
            kept.dead_letters | beam.Map(lambda d: (d.stage, d.error_type, d.payload, d.offset)),
            equal_to([("filter", "TypeError", b"null", 2)]),
            label="dead letters",
        )


@pytest.mark.parametrize("prepare", [_bq, _gcs])
def test_a_batch_read_runs_in_long_bundles_and_a_stream_in_short_ones(prepare):
    """A bundle end costs a file and a commit: a bounded export reads in bundles of up to
    BATCH_BUNDLE_S, a stream keeps the reader's short default (its rows flow a bundle late)."""
    from pipelines.common.row_source import BATCH_BUNDLE_S

    batch = prepare().reader()
    assert batch._read_kwargs["max_process_s"] == BATCH_BUNDLE_S
    assert prepare().reader(max_process_s=0.2)._read_kwargs["max_process_s"] == 0.2
    stream = prepare("--streaming").reader()
    assert stream._read_kwargs["max_process_s"] < BATCH_BUNDLE_S
