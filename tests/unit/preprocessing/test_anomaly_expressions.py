"""ANOMALY() and IS_ANOMALY() in expressions: batched scoring (AttachVerdicts) then --filter."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from pipelines.common.options import OptionError, parse_and_validate
from pipelines.common.row_source import ROW_SOURCE, RowSource
from pipelines.kafka_to_bigquery import OPTIONS, KafkaToBigQueryOptions
from transforms.decoding.schema import bundled_schema_path
from transforms.inference.model_handler import SavedModelHandler
from transforms.inference.scoring import AttachVerdicts, without_verdicts
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing import Filter, Project
from transforms.preprocessing.expressions import SCORE_FIELD, VERDICT_FIELD, Expr

THRESHOLD = 1.5


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("models"))
    write_model(root, 3, threshold=THRESHOLD)
    return root


def _pair(offset: int, value: float | str) -> tuple[KafkaRecord, dict]:
    row = {"event_id": f"ev-{offset}", **dict.fromkeys(CREDITCARD_FEATURES, value)}
    record = KafkaRecord("tx", 0, offset, b"k", json.dumps(row).encode(), 1_790_000_000_000)
    return record, row


def test_model_functions_read_the_scored_fields() -> None:
    expr = Expr("IS_ANOMALY() and Amount > 2 or ANOMALY() >= 5")
    assert expr.uses_model and not Expr("Amount > 2").uses_model
    assert expr({"Amount": 3, SCORE_FIELD: 0.1, VERDICT_FIELD: True}) is True
    assert expr({"Amount": 1, SCORE_FIELD: 5.0, VERDICT_FIELD: True}) is True
    assert expr({"Amount": 1, SCORE_FIELD: 4.0, VERDICT_FIELD: True}) is False
    with pytest.raises(ValueError, match="calls the model but the row was not scored"):
        expr({"Amount": 3})
    with pytest.raises(ValueError, match=r"ANOMALY\(\) takes no arguments"):
        Expr("ANOMALY(sensor_input) > 1")
    with pytest.raises(ValueError, match="__is_anomaly__ is reserved"):
        Expr("__is_anomaly__")


def test_attach_verdicts_scores_in_batches_and_dead_letters_unreadable_rows(
    model_root: str,
) -> None:
    pairs = [_pair(i, i * 0.25) for i in range(12)] + [_pair(99, "x")]
    expected = [
        (row["event_id"], round(expected_score(row), 6), expected_score(row) > THRESHOLD)
        for _, row in pairs[:-1]
    ]
    with TestPipeline() as p:
        scored = (
            p
            | beam.Create(pairs)
            | AttachVerdicts(SavedModelHandler(model_root), max_batch_size=5, max_batch_wait_s=None)
        )
        verdicts = scored.pairs | "V" >> beam.Map(
            lambda pair: (
                pair[1]["event_id"],
                round(pair[1][SCORE_FIELD], 6),
                pair[1][VERDICT_FIELD],
            )
        )
        letters = scored.dead_letters | "D" >> beam.Map(lambda d: (d.offset, d.stage, d.error_type))
        assert_that(verdicts, equal_to(expected), label="verdicts")
        assert_that(letters, equal_to([(99, "score", "FeatureError")]), label="letters")


def test_filter_and_projection_on_the_model_export_only_anomalous_rows_with_their_score(
    model_root: str,
) -> None:
    pairs = [_pair(i, i * 0.25) for i in range(12)]
    anomalous = [row for _, row in pairs if expected_score(row) > THRESHOLD]
    assert 0 < len(anomalous) < len(pairs)
    with TestPipeline() as p:
        rows = (
            p | beam.Create(pairs) | AttachVerdicts(SavedModelHandler(model_root))
        ).pairs | "Rows" >> beam.Map(lambda pair: pair[1])
        kept = rows | Filter("IS_ANOMALY()")
        exported = kept | "Strip" >> beam.Map(without_verdicts)
        scores = kept | Project("event_id", score=Expr("round(ANOMALY(), 4)"))
        assert_that(exported, equal_to(anomalous), label="rows")
        assert_that(
            scores,
            equal_to(
                [
                    {"event_id": r["event_id"], "score": round(expected_score(r), 4)}
                    for r in anomalous
                ]
            ),
            label="scores",
        )


def _kafka_to_bigquery_args(*extra: str) -> list[str]:
    return [
        "--bootstrapServers=127.0.0.1:9",
        "--inputTopic=tx",
        "--startOffset=earliest",
        "--outputTableSpec=proj:d.t",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        *extra,
    ]


def test_a_filter_calling_the_model_needs_a_model_that_fits_the_schema(model_root: str) -> None:
    def source(*extra: str) -> RowSource:
        opts = parse_and_validate(_kafka_to_bigquery_args(*extra), KafkaToBigQueryOptions, OPTIONS)
        return RowSource.from_options(opts, OPTIONS)

    assert source("--filter=Amount > 0").model is None
    with pytest.raises(OptionError, match="exactly one of --modelPath"):
        source("--filter=IS_ANOMALY()")
    chosen = source("--filter=IS_ANOMALY() and Amount > 0", f"--modelPath={model_root}").model
    assert isinstance(chosen.handler, SavedModelHandler)
    assert chosen.features == CREDITCARD_FEATURES
    with pytest.raises(OptionError, match="names fields not in --schemaPath: \\['speed'\\]"):
        source("--filter=ANOMALY() > speed", f"--modelPath={model_root}")
    scored = source("--anomalyScoreColumn=anomaly_score", f"--modelPath={model_root}")
    assert scored.model is not None and scored.row_filter is None
    assert scored.output_schema.names == (*scored.schema.names, "anomaly_score")
    assert scored.output_schema.fields[-1].type == "FLOAT"
    with pytest.raises(OptionError, match="'Amount' is already a schema field"):
        source("--anomalyScoreColumn=Amount", f"--modelPath={model_root}")
    with pytest.raises(OptionError, match="exactly one of --modelPath"):
        source("--anomalyScoreColumn=anomaly_score")


def test_a_pipeline_without_model_options_refuses_a_filter_calling_the_model() -> None:
    from pipelines.common.options import options_class

    cls = options_class("RowSourceOnly", ROW_SOURCE)
    opts = parse_and_validate(
        ["--bootstrapServers=127.0.0.1:9", "--inputTopic=tx", "--startOffset=earliest",
         f"--schemaPath={bundled_schema_path('creditcard')}", "--filter=IS_ANOMALY()"],
        cls,
        ROW_SOURCE,
    )  # fmt: skip
    with pytest.raises(OptionError, match="calls the model, which this pipeline does not take"):
        RowSource.from_options(opts, ROW_SOURCE)
