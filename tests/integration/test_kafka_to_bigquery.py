"""Kafka → BigQuery emulator through ``pipelines.kafka_to_bigquery`` and the BigQuery sink."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from export_events import committed_total, creditcard_event, invalid_messages, produce
from google.api_core.exceptions import NotFound

from pipelines import kafka_to_bigquery
from pipelines.common.options import OptionError
from transforms.decoding.schema import RowSchema, bundled_schema, bundled_schema_path
from transforms.kafka.record import KafkaRecord
from transforms.sinks.bigquery import WriteRowsToBigQuery

pytestmark = pytest.mark.integration

SCHEMA = bundled_schema("creditcard")


def pipeline_argv(stack_env, topic: str, group: str, dataset: str, *extra: str) -> list[str]:
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    return [
        f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
        f"--inputTopic={topic}",
        f"--consumerGroupId={group}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        f"--outputTableSpec={project}:{dataset}.transactions",
        f"--project={project}",
        f"--bigqueryEndpoint={stack_env['BIGQUERY_EMULATOR_HOST']}",
        *extra,
    ]


def table_rows(bq_client, gcp_endpoints, table: str) -> list[dict]:
    rows = bq_client.list_rows(table, retry=gcp_endpoints.bigquery_retry)
    return [dict(row.items()) for row in rows]


def test_valid_rows_reach_the_table_and_invalid_ones_the_dead_letter_table(
    stack_env, kafka_config, topic_factory, group_id, bq_client, bq_dataset, gcp_endpoints
):
    topic = topic_factory(partitions=3)
    valid = [creditcard_event(i) for i in range(30)]
    invalid = invalid_messages()
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid] + invalid)

    argv = pipeline_argv(stack_env, topic, group_id, bq_dataset, "--insertBatchSize=7")
    kafka_to_bigquery.run(argv)

    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    rows = table_rows(bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions")
    assert sorted(rows, key=lambda r: r["event_id"]) == valid
    letters = table_rows(
        bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions_error_records"
    )
    assert sorted(letter["payload"] for letter in letters) == sorted(invalid)
    assert {letter["topic"] for letter in letters} == {topic}
    assert all(
        letter["stage"] in ("decode", "validate") and letter["error_message"] for letter in letters
    )
    # Offsets are committed after the rows are in BigQuery: a second run finds nothing new.
    assert committed_total(kafka_config, topic, group_id, 3) == len(valid) + len(invalid)
    kafka_to_bigquery.run(argv)
    assert len(table_rows(bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions")) == 30


def test_rows_bigquery_rejects_become_dead_letters_with_their_kafka_coordinates(
    stack_env, bq_client, bq_dataset, gcp_endpoints
):
    # The declared schema says FLOAT; a row that slipped through with text is BigQuery's to reject.
    good = creditcard_event(1)
    bad = {**creditcard_event(2), "Amount": "a lot"}
    record = KafkaRecord("payments", 2, 41, b"card-2", b"raw bytes of event 2", 0)
    table = f"{bq_dataset}.sink_test"
    with TestPipeline() as p:
        result = (
            p
            | beam.Create([good, (record, bad)])
            | WriteRowsToBigQuery(table, SCHEMA, endpoints=gcp_endpoints)
        )
        assert_that(
            result.dead_letters
            | beam.Map(lambda d: (d.stage, d.error_type, d.payload, d.partition, d.offset)),
            equal_to([("bigquery", "invalid", b"raw bytes of event 2", 2, 41)]),
        )
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    assert table_rows(bq_client, gcp_endpoints, f"{project}.{table}") == [good]


def test_file_loads_write_the_same_rows(
    stack_env,
    kafka_config,
    topic_factory,
    group_id,
    bq_client,
    bq_dataset,
    gcp_endpoints,
    gcs_bucket,
):
    topic = topic_factory(partitions=2)
    valid = [creditcard_event(i) for i in range(12)]
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid] + [b"[1, 2]"])
    kafka_to_bigquery.run(
        pipeline_argv(
            stack_env,
            topic,
            group_id,
            bq_dataset,
            "--writeMethod=FILE_LOADS",
            f"--temp_location={gcs_bucket}/tmp",
        )
    )
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    rows = table_rows(bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions")
    assert sorted(rows, key=lambda r: r["event_id"]) == valid
    letters = table_rows(
        bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions_error_records"
    )
    assert [letter["payload"] for letter in letters] == [b"[1, 2]"]
    bucket = gcp_endpoints.storage_client().bucket(gcs_bucket[len("gs://") :])
    assert [blob.name for blob in bucket.list_blobs(prefix="tmp/bigquery_loads/")] == []


def test_unreachable_bigquery_or_missing_dataset_fail_at_launch_naming_the_flag(
    stack_env, topic_factory, group_id, bq_dataset
):
    topic = topic_factory(partitions=1)
    with pytest.raises(OptionError, match="--outputTableSpec.*dataset .*no_such_dataset"):
        kafka_to_bigquery.run(pipeline_argv(stack_env, topic, group_id, "no_such_dataset"))
    started = time.monotonic()
    with pytest.raises(OptionError, match="--outputTableSpec.*not reachable"):
        kafka_to_bigquery.run(
            pipeline_argv(
                stack_env, topic, group_id, bq_dataset, "--bigqueryEndpoint=http://127.0.0.1:9"
            )
        )
    assert time.monotonic() - started < 45


def test_streaming_export_inserts_rows_while_running_and_commits_after_them(
    stack_env, kafka_config, topic_factory, group_id, bq_client, bq_dataset, gcp_endpoints, tmp_path
):
    topic = topic_factory(partitions=2)
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    table = f"{project}.{bq_dataset}.transactions"
    argv = pipeline_argv(stack_env, topic, group_id, bq_dataset, "--streaming")
    log = tmp_path / "pipeline.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.kafka_to_bigquery", *argv],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        valid = [creditcard_event(i) for i in range(6)]
        produce(kafka_config, topic, [json.dumps(r).encode() for r in valid])
        deadline = time.monotonic() + 90
        rows: list[dict] = []
        while time.monotonic() < deadline and len(rows) < len(valid):
            assert process.poll() is None, log.read_text(errors="replace")[-2000:]
            try:
                rows = table_rows(bq_client, gcp_endpoints, table)
            except NotFound:  # the sink creates the table with the first rows
                rows = []
            time.sleep(0.5)
        assert sorted(rows, key=lambda r: r["event_id"]) == valid
        while time.monotonic() < deadline:
            if committed_total(kafka_config, topic, group_id, 2) == len(valid):
                break
            time.sleep(0.5)
        assert committed_total(kafka_config, topic, group_id, 2) == len(valid)
        assert process.poll() is None  # still streaming
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_replay_dedupes_on_kafka_coordinate_insert_ids(
    stack_env, kafka_config, topic_factory, bq_client, bq_dataset, gcp_endpoints
):
    topic = topic_factory(partitions=2)
    valid = [creditcard_event(i) for i in range(8)]
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid])
    # No consumer group: each run reads the topic from the start, as a crash-replay would.
    argv = [
        a
        for a in pipeline_argv(stack_env, topic, "unused", bq_dataset)
        if not a.startswith("--consumerGroupId")
    ]
    kafka_to_bigquery.run(argv)
    kafka_to_bigquery.run(argv)
    project = stack_env["GOOGLE_CLOUD_PROJECT"]
    rows = table_rows(bq_client, gcp_endpoints, f"{project}.{bq_dataset}.transactions")
    assert sorted(rows, key=lambda r: r["event_id"]) == valid


def _load_step(gcp_endpoints, table: str, schema: RowSchema, source_format: str, folder: str):
    """The pipelines' load step, set up as a worker would, with its own job ids; it deletes
    ``folder`` after loading."""
    from transforms.sinks.bigquery_loads import _LoadFilesFn

    load = _LoadFilesFn(
        table,
        schema.to_bigquery_json(),
        endpoints=gcp_endpoints,
        create_disposition="CREATE_IF_NEEDED",
        write_disposition="WRITE_APPEND",
        job_prefix=f"test_{uuid.uuid4().hex}",
        timeout_s=120,
        source_format=source_format,
        folder=folder,
    )
    load.setup()
    return load


def test_a_retried_load_step_waits_for_its_job_instead_of_loading_twice(
    stack_env, bq_client, bq_dataset, gcp_endpoints, gcs_bucket
):
    from transforms.sinks.bigquery_loads import JSON_LINES, _json_lines

    rows = [creditcard_event(i) for i in range(5)]
    bucket = gcs_bucket[len("gs://") :]
    gcp_endpoints.storage_client().bucket(bucket).blob("load/rows.json").upload_from_string(
        _json_lines(rows)
    )
    table = f"{stack_env['GOOGLE_CLOUD_PROJECT']}.{bq_dataset}.loaded"
    load = _load_step(
        gcp_endpoints, table, bundled_schema("creditcard"), JSON_LINES, f"{gcs_bucket}/load"
    )
    first = list(load.process(None, [f"{gcs_bucket}/load/rows.json"]))
    # The runner retries the step (say it died after the job ran): same job id, files gone.
    again = list(load.process(None, [f"{gcs_bucket}/load/rows.json"]))
    assert first == again and len(first) == 1
    loaded = table_rows(bq_client, gcp_endpoints, table)
    assert sorted(loaded, key=lambda r: r["event_id"]) == rows


EVERY_TYPE = RowSchema.from_bigquery_json(
    [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "f", "type": "FLOAT", "mode": "NULLABLE"},
        {"name": "i", "type": "INTEGER", "mode": "NULLABLE"},
        {"name": "b", "type": "BOOLEAN", "mode": "NULLABLE"},
        {"name": "t", "type": "TIMESTAMP", "mode": "NULLABLE"},
        {"name": "n", "type": "NUMERIC", "mode": "NULLABLE"},
    ]
)


def test_parquet_load_files_hold_what_json_load_files_hold(
    stack_env, bq_client, bq_dataset, gcp_endpoints, gcs_bucket
):
    """Every type of a flat schema, nulls, row-path and column-wise batches: loaded from Parquet
    the table reads as when loaded from JSON lines."""
    import io

    import pyarrow.parquet as pq

    from transforms.decoding.row_validation import RowValidator
    from transforms.sinks.arrow_tables import ArrowTables
    from transforms.sinks.bigquery_loads import JSON_LINES, PARQUET, _json_lines

    events = [
        {"id": "a", "f": 1.5, "i": -(2**63), "b": True, "t": "2026-12-05T01:02:03.5+01:00",
         "n": "-12.000000001"},
        {"id": "b", "f": None, "i": 2**63 - 1, "b": False, "t": "0001-01-01T00:00:00Z",
         "n": 1234567.25},
        {"id": "c", "t": "9999-12-31T23:59:59.999999Z",
         "n": "99999999999999999999999999999.999999999"},
    ]  # fmt: skip
    validator = RowValidator(EVERY_TYPE)
    payloads = [json.dumps(event).encode() for event in events]
    columns = validator.decode_json_columns(payloads)
    rows = [validator.decode_json_fast(payload) for payload in payloads]
    assert columns is not None and all(rows)
    bucket = gcp_endpoints.storage_client().bucket(gcs_bucket[len("gs://") :])
    files = {PARQUET: [], JSON_LINES: []}
    tables = ArrowTables(EVERY_TYPE)
    for number, batch in enumerate((columns[:2], rows[2:])):
        buffer = io.BytesIO()
        pq.write_table(tables(batch), buffer)
        bucket.blob(f"parquet/{number}.parquet").upload_from_string(buffer.getvalue())
        files[PARQUET].append(f"{gcs_bucket}/parquet/{number}.parquet")
    bucket.blob("json/rows.json").upload_from_string(_json_lines(rows))
    files[JSON_LINES].append(f"{gcs_bucket}/json/rows.json")
    loaded = {}
    for source_format, uris in files.items():
        table = f"{stack_env['GOOGLE_CLOUD_PROJECT']}.{bq_dataset}.{source_format.lower()}"
        folder = uris[0].rsplit("/", 1)[0]
        load = _load_step(gcp_endpoints, table, EVERY_TYPE, source_format, folder)
        assert len(list(load.process(None, uris))) == 1
        loaded[source_format] = sorted(
            table_rows(bq_client, gcp_endpoints, table), key=lambda r: r["id"]
        )
    assert loaded[PARQUET] == loaded[JSON_LINES]
    assert [row["id"] for row in loaded[PARQUET]] == ["a", "b", "c"]
    assert loaded[PARQUET][1]["f"] is None and str(loaded[PARQUET][0]["n"]) == "-12.000000001"
