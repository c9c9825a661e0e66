"""FILE_LOADS' load files: one per bundle, named to the load step only when the bundle ends;
the run's folder, files of failed bundles too, is deleted after the load."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import bundled_schema
from transforms.sinks.arrow_tables import ArrowTables
from transforms.sinks.bigquery_loads import PARQUET, _LoadFilesFn, _WriteLoadFilesFn
from transforms.sinks.gcp_endpoints import GcpEndpoints

SCHEMA = bundled_schema("creditcard")


def _event(i: int) -> dict:
    row = {"event_id": f"e-{i}", "card_id": f"card-{i % 7}", "Time": float(i), "Class": i % 2}
    row.update({f"V{k}": i / (k + 1) for k in range(1, 29)})
    return {**row, "Amount": i * 1.5}


def _batches(count: int, size: int) -> list:
    """Batches as the decoder gives them: column-wise (structs) and row dicts alternating."""
    validator = RowValidator(SCHEMA)
    batches = []
    for start in range(0, count, size):
        payloads = [json.dumps(_event(i)).encode() for i in range(start, start + size)]
        if start // size % 2:
            batches.append([validator.decode_json_fast(p) for p in payloads])
        else:
            batches.append(validator.decode_json_columns(payloads))
    return batches


@pytest.mark.parametrize("form", ["parquet", "json"])
def test_every_row_is_in_the_files_the_bundles_name(tmp_path, form) -> None:
    tables = ArrowTables(SCHEMA) if form == "parquet" else None
    folder = str(tmp_path / "loads")

    def check(names: list[str]) -> None:
        assert sorted(names) == sorted(str(p) for p in (tmp_path / "loads").iterdir())
        ids = []
        for name in names:
            if form == "parquet":
                assert name.endswith(".parquet")
                table = pq.read_table(name)
                assert table.schema.equals(tables.schema)
                ids += table.column("event_id").to_pylist()
            else:
                assert name.endswith(".json")
                with open(name, "rb") as handle:
                    ids += [json.loads(line)["event_id"] for line in handle]
        assert sorted(ids) == sorted(f"e-{i}" for i in range(300))

    with TestPipeline() as p:
        names = (
            p
            | beam.Create(_batches(300, 50), reshuffle=False)
            | beam.ParDo(_WriteLoadFilesFn(folder, tables))
        )
        assert_that(names, check)


def test_a_failed_bundle_names_no_file_and_its_file_goes_with_the_folder(tmp_path) -> None:
    folder = str(tmp_path / "loads")
    fn = _WriteLoadFilesFn(folder, ArrowTables(SCHEMA))
    batches = _batches(200, 50)
    fn.start_bundle()
    fn.process(batches[0])
    fn.process(batches[1])  # ... and the bundle fails: finish_bundle never runs
    fn.start_bundle()  # its retry
    for batch in batches:
        fn.process(batch)
    (committed,) = list(fn.finish_bundle())
    assert len(os.listdir(folder)) == 2  # the failed bundle's file is there, unnamed
    assert pq.read_table(committed.value).num_rows == 200

    load = _LoadFilesFn(
        "p.d.t",
        SCHEMA.to_bigquery_json(),
        endpoints=GcpEndpoints(project="p"),
        create_disposition="CREATE_IF_NEEDED",
        write_disposition="WRITE_APPEND",
        job_prefix="test",
        timeout_s=1.0,
        source_format=PARQUET,
        folder=folder,
    )
    load._delete([committed.value])
    assert os.listdir(folder) == []
    load._delete([committed.value])  # a retried load step: already gone, no error


def test_a_bundle_without_rows_writes_no_file(tmp_path) -> None:
    fn = _WriteLoadFilesFn(str(tmp_path / "loads"), None)
    fn.start_bundle()
    assert list(fn.finish_bundle() or []) == []
    assert not (tmp_path / "loads").exists()
