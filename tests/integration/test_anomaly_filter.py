"""ANOMALY() on the real stack: kafka_to_bigquery exports only the rows the model flags, with
their score as a column (--anomalyScoreColumn)."""

from __future__ import annotations

import json

import pytest
from export_events import creditcard_event, invalid_messages, produce
from tiny_anomaly_model import expected_score, write_model

from pipelines import kafka_to_bigquery
from transforms.decoding.schema import bundled_schema_path

pytestmark = pytest.mark.integration

FEATURES = ("V1", "V2", "V3")  # creditcard_event's V values lie in [-1, 1.43]
THRESHOLD = 0.4


def test_is_anomaly_filter_exports_only_anomalous_rows_to_bigquery(
    stack_env, kafka_config, topic_factory, group_id, bq_client, bq_dataset, gcp_endpoints, tmp_path
):
    write_model(str(tmp_path / "models"), 1, threshold=THRESHOLD, features=FEATURES)
    topic = topic_factory(partitions=3)
    valid = [creditcard_event(i) for i in range(60)]
    anomalous = [r for r in valid if expected_score(r, features=FEATURES) > THRESHOLD]
    slightly = [r for r in anomalous if expected_score(r, features=FEATURES) < 2 * THRESHOLD]
    assert 0 < len(anomalous) < len(valid) and slightly
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid] + invalid_messages())

    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    kafka_to_bigquery.run(
        [
            f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
            f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
            f"--inputTopic={topic}",
            f"--consumerGroupId={group_id}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--outputTableSpec={project}:{bq_dataset}.anomalies",
            f"--project={project}",
            f"--bigqueryEndpoint={stack_env['BIGQUERY_EMULATOR_HOST']}",
            f"--modelPath={tmp_path / 'models'}",
            f"--filter=IS_ANOMALY() and ANOMALY() < {2 * THRESHOLD} or Amount < 0",
            "--anomalyScoreColumn=anomaly_score",
        ]
    )

    def rows(table: str) -> list[dict]:
        found = bq_client.list_rows(table, retry=gcp_endpoints.bigquery_retry)
        return [dict(row.items()) for row in found]

    exported = sorted(rows(f"{project}.{bq_dataset}.anomalies"), key=lambda r: r["event_id"])
    scores = [row.pop("anomaly_score") for row in exported]
    assert exported == slightly  # and no other column
    expected = [expected_score(r, features=FEATURES) for r in slightly]
    assert max(abs(a - b) for a, b in zip(scores, expected, strict=True)) <= 1e-5
    letters = rows(f"{project}.{bq_dataset}.anomalies_error_records")
    assert sorted(letter["payload"] for letter in letters) == sorted(invalid_messages())
