"""--deadLetterMaxPayloadBytes: declared once for every pipeline, checked at launch, wired in."""

from __future__ import annotations

import apache_beam as beam
import pytest
from tiny_anomaly_model import write_model

from pipelines import kafka_to_bigquery, kafka_to_gcs, score_events
from pipelines.common.options import OptionError, parse_and_validate
from pipelines.common.row_source import DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES, ROW_SOURCE
from transforms.decoding.schema import bundled_schema_path

FLAG = "--deadLetterMaxPayloadBytes"
# Port 1 on loopback: nothing listens there; building a pipeline must not need Kafka.
COMMON = [
    "--bootstrapServers=127.0.0.1:1",
    "--inputTopic=transactions",
    "--consumerGroupId=export",
    f"--schemaPath={bundled_schema_path('creditcard')}",
    "--project=kafka-beam-ml-local",
]
BQ = [*COMMON, "--outputTableSpec=kafka-beam-ml-local:fraud.transactions"]
GCS = [*COMMON, "--outputDirectory=gs://exports/creditcard"]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("models"))
    write_model(root, 1)
    return root


def _scorer_argv(model_root: str, *extra: str) -> list[str]:
    return [
        *COMMON,
        "--outputTopic=predictions",
        "--alertTopic=alerts",
        "--deadLetterTopic=dead",
        f"--modelPath={model_root}",
        *extra,
    ]


def test_the_option_is_shared_by_every_pipeline_with_a_default_that_fits_kafka():
    (option,) = [o for o in ROW_SOURCE if o.name == "deadLetterMaxPayloadBytes"]
    assert option.default == DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES == 512 * 1024
    assert option.type is int
    # base64 of the default payload plus ~1 KB of metadata stays under Kafka's default 1 MB
    assert 4 * option.default // 3 + 1024 < 1_000_000 - 512
    for module in (score_events, kafka_to_bigquery, kafka_to_gcs):
        assert option in module.OPTIONS


@pytest.mark.parametrize("value", ["0", "-7", "00", "12345678901"])
def test_a_value_that_is_not_positive_fails_at_launch_naming_the_flag(value, model_root):
    with pytest.raises(OptionError, match=FLAG):
        kafka_to_bigquery.prepare(
            kafka_to_bigquery.KafkaToBigQueryOptions([*BQ, f"{FLAG}={value}"])
        )
    with pytest.raises(OptionError, match=FLAG):
        kafka_to_gcs.prepare(kafka_to_gcs.KafkaToGcsOptions([*GCS, f"{FLAG}={value}"]))
    with pytest.raises(OptionError, match=FLAG):
        parse_and_validate(
            _scorer_argv(model_root, f"{FLAG}={value}"),
            score_events.ScoreEventsOptions,
            score_events.OPTIONS,
        )


def test_valid_values_and_the_default_resolve():
    options = kafka_to_gcs.KafkaToGcsOptions([*GCS, f"{FLAG}=1"])
    assert kafka_to_gcs.prepare(options).values["deadLetterMaxPayloadBytes"] == 1
    options = kafka_to_bigquery.KafkaToBigQueryOptions(BQ)
    assert kafka_to_bigquery.prepare(options).values["deadLetterMaxPayloadBytes"] == 524_288


def test_the_export_pipelines_fit_their_dead_letters():
    p = beam.Pipeline()
    kafka_to_gcs.build_pipeline(p, kafka_to_gcs.KafkaToGcsOptions([*GCS, f"{FLAG}=1000"]))
    assert "FitDeadLetters" in p.applied_labels
    p = beam.Pipeline()
    options = kafka_to_bigquery.KafkaToBigQueryOptions([*BQ, f"{FLAG}=1000"])
    kafka_to_bigquery.build_pipeline(p, options)
    assert "WriteDeadLetters/FitToRows" in p.applied_labels


def test_the_scorer_guards_every_output_and_fits_every_dead_letter_stream(model_root):
    p = beam.Pipeline()
    opts = parse_and_validate(
        _scorer_argv(model_root), score_events.ScoreEventsOptions, score_events.OPTIONS
    )
    score_events.build_pipeline(p, opts)  # no broker contact: limits are read at set-up
    labels = p.applied_labels
    assert {"SizePredictions", "SizeAlerts"} <= labels
    for stream in ("Decode", "Score", "PredictionsSize", "AlertsSize"):
        assert f"Fit{stream}DeadLetters" in labels
        assert f"Write{stream}DeadLetters" in labels
