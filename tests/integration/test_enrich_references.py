"""EnrichWithSideInput references on the emulators: a BigQuery table/query and gs:// files."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from google.cloud import bigquery

from transforms.decoding.schema import RowSchema
from transforms.preprocessing.enrich import BigQueryReference, EnrichWithSideInput, FileReference

pytestmark = pytest.mark.integration

CARDS = [
    {"card_id": "c1", "home_country": "DE", "risk": 1},
    {"card_id": "c2", "home_country": "FR", "risk": 3},
]
TXS = [{"card_id": "c1", "Amount": 10.0}, {"card_id": "c2", "Amount": 20.0}, {"card_id": "c3"}]


@pytest.fixture
def cards_table(gcp_endpoints, bq_client, bq_dataset) -> str:
    table_id = f"{gcp_endpoints.project}.{bq_dataset}.cards"
    schema = [
        bigquery.SchemaField("card_id", "STRING", mode="REQUIRED"),
        bigquery.SchemaField("home_country", "STRING"),
        bigquery.SchemaField("risk", "INTEGER"),
    ]
    bq_client.create_table(
        bigquery.Table(table_id, schema=schema), retry=gcp_endpoints.bigquery_retry
    )
    assert bq_client.insert_rows_json(table_id, CARDS, retry=gcp_endpoints.bigquery_retry) == []
    return table_id


def test_bigquery_table_reference_joins_in_a_pipeline(gcp_endpoints, cards_table):
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(TXS)
            | EnrichWithSideInput(
                BigQueryReference(table=cards_table, endpoints=gcp_endpoints),
                key="card_id",
                fields={"country": "home_country", "risk": "risk"},
                how="inner",
            )
        )
        assert_that(
            out,
            equal_to(
                [
                    {**TXS[0], "country": "DE", "risk": 1},
                    {**TXS[1], "country": "FR", "risk": 3},
                ]
            ),
        )


def test_bigquery_query_reference_resolves_endpoints_from_the_environment(cards_table):
    # stack_env exported BIGQUERY_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT: no endpoints passed.
    rows = BigQueryReference(
        query=f"SELECT card_id, risk FROM `{cards_table}` WHERE risk > 2"
    ).load()
    assert rows == [{"card_id": "c2", "risk": 3}]


def test_gs_reference_file_and_schema(gcp_endpoints, gcs_bucket):
    gcp_endpoints.configure_process()
    FileSystems.set_options(PipelineOptions([]))
    schema = {
        "fields": [
            {"name": "card_id", "type": "STRING", "mode": "REQUIRED"},
            {"name": "home_country", "type": "STRING"},
            {"name": "risk", "type": "INTEGER"},
        ]
    }
    with FileSystems.create(f"{gcs_bucket}/ref/cards.schema.json") as out:
        out.write(json.dumps(schema).encode())
    with FileSystems.create(f"{gcs_bucket}/ref/cards-1.csv") as out:
        out.write(b"card_id,home_country,risk\nc1,DE,1\n")
    with FileSystems.create(f"{gcs_bucket}/ref/cards-2.csv") as out:
        out.write(b"card_id,home_country,risk\nc2,FR,3\n")

    loaded = RowSchema.load(f"{gcs_bucket}/ref/cards.schema.json")
    assert loaded.names == ("card_id", "home_country", "risk")
    reference = FileReference(f"{gcs_bucket}/ref/cards-*.csv", schema=loaded)
    assert reference.load() == CARDS
    with TestPipeline() as p:
        out = p | beam.Create(TXS) | EnrichWithSideInput(reference, key="card_id", fields=["risk"])
        assert_that(
            out,
            equal_to([{**TXS[0], "risk": 1}, {**TXS[1], "risk": 3}, {**TXS[2], "risk": None}]),
        )
