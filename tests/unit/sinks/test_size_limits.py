"""Dead-letter truncation and the output size guard (transforms.size_limits) on in-memory input."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid

import apache_beam as beam
import pytest
from apache_beam.io.gcp.bigquery import BigQueryDisposition
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_metrics import committed_counters

from transforms.batch import Batch
from transforms.dead_letter import BIGQUERY_SCHEMA, DeadLetter
from transforms.inference.scoring import Prediction
from transforms.sinks.bigquery import ROW_LIMIT, WriteDeadLettersToBigQuery
from transforms.size_limits import (
    KEY,
    METRICS_NAMESPACE,
    VALUE,
    EncodeWithinLimit,
    FitDeadLetters,
    FixedSizeLimit,
    fit_dead_letter,
    kafka_dead_letter_bytes,
)

FAILED_AT = "2026-12-01T00:00:00.000000+00:00"


def _letter(payload: bytes | None, key: bytes | None = b"card-1", **fields) -> DeadLetter:
    return DeadLetter(
        stage=fields.pop("stage", "decode"),
        error_type=fields.pop("error_type", "Oversize"),
        error_message=fields.pop("error_message", "value too long"),
        payload=payload,
        key=key,
        topic="tx",
        partition=2,
        offset=fields.pop("offset", 41),
        failed_at=FAILED_AT,
        **fields,
    )


def _prediction(offset: int, event_id: str, key: bytes | None = b"card-1") -> Prediction:
    return Prediction(
        key, event_id, 0.5, False, 1.5, 3, "2026-12-01T00:00:00.000Z",
        "2026-12-01T00:00:01.000Z", "tx", 0, offset,
    )  # fmt: skip


# ---- DeadLetter.truncated and its fields --------------------------------------------------------


def test_a_truncated_letter_keeps_the_full_length_and_hash():
    payload = bytes(range(256)) * 10
    letter = _letter(payload).truncated(100)
    assert letter.payload == payload[:100]
    assert letter.payload_truncated is True
    assert letter.payload_length == 2560
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    # cutting again keeps what describes the original payload
    again = letter.truncated(10)
    assert (again.payload, again.payload_length, again.payload_sha256) == (
        payload[:10],
        2560,
        letter.payload_sha256,
    )


def test_a_payload_that_fits_is_left_alone():
    letter = _letter(b"x" * 100)
    assert letter.truncated(100) is letter
    assert _letter(None).truncated(0).payload is None
    with pytest.raises(ValueError, match="max_payload_bytes"):
        letter.truncated(-1)


def test_json_has_every_field_and_bigquery_rows_only_fill_truncation_columns_when_cut():
    plain = _letter(b"abc")
    assert json.loads(plain.to_json())["payload_truncated"] is False
    assert json.loads(plain.to_json())["payload_sha256"] is None
    assert "payload_truncated" not in plain.to_bigquery_row()  # old tables keep working
    cut = plain.truncated(1)
    row = cut.to_bigquery_row()
    assert (row["payload"], row["payload_truncated"], row["payload_length"]) == ("YQ==", True, 3)
    assert row["payload_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert json.loads(cut.to_json()) == row
    columns = {field["name"]: field for field in BIGQUERY_SCHEMA["fields"]}
    for name, kind in (
        ("payload_truncated", "BOOLEAN"),
        ("payload_length", "INTEGER"),
        ("payload_sha256", "STRING"),
    ):
        assert (columns[name]["type"], columns[name]["mode"]) == (kind, "NULLABLE")


# ---- fit_dead_letter ----------------------------------------------------------------------------


def test_the_cap_applies_without_a_sink_limit():
    letter = fit_dead_letter(_letter(b"x" * 1000), 300)
    assert (len(letter.payload), letter.payload_truncated, letter.payload_length) == (
        300,
        True,
        1000,
    )


def test_the_sink_limit_cuts_below_the_cap_and_the_record_fits_exactly():
    letter = _letter(b"y" * 10_000)
    base = kafka_dead_letter_bytes(letter.truncated(0))
    limit = base + 2_400  # room for 2400 base64 characters = 1800 payload bytes
    fitted = fit_dead_letter(letter, 5_000, limit, kafka_dead_letter_bytes)
    assert len(fitted.payload) == 1_800
    assert kafka_dead_letter_bytes(fitted) == limit  # exact fit at the boundary
    one_less = fit_dead_letter(letter, 5_000, limit - 1, kafka_dead_letter_bytes)
    assert one_less.payload == b"y" * 1_797  # whole base64 quanta only
    # the cap wins when it is the smaller
    assert len(fit_dead_letter(letter, 100, limit, kafka_dead_letter_bytes).payload) == 100


def test_a_letter_that_fits_exactly_is_not_cut():
    letter = _letter(b"z" * 3_000)
    size = kafka_dead_letter_bytes(letter)
    assert fit_dead_letter(letter, 3_000, size, kafka_dead_letter_bytes) is letter
    cut = fit_dead_letter(letter, 3_000, size - 1, kafka_dead_letter_bytes)
    assert cut.payload_truncated and kafka_dead_letter_bytes(cut) <= size - 1


def test_a_1mb_message_dead_letter_fits_the_default_kafka_limit_with_the_default_cap():
    payload = b"{" * 1_048_516  # the largest value the local broker accepts
    fitted = fit_dead_letter(_letter(payload), 512 * 1024, 999_488, kafka_dead_letter_bytes)
    assert len(fitted.payload) == 512 * 1024
    assert kafka_dead_letter_bytes(fitted) < 999_488
    assert base64.b64decode(json.loads(fitted.to_json())["payload"]) == payload[: 512 * 1024]


def test_a_huge_error_message_is_shortened_and_hopeless_letters_give_none():
    letter = _letter(b"p" * 500, error_message="e" * 50_000)
    fitted = fit_dead_letter(letter, 1_000, 3_000, kafka_dead_letter_bytes)
    assert (
        fitted.error_message.startswith("e" * 1024) and "(50000 characters)" in fitted.error_message
    )
    assert fitted.payload and kafka_dead_letter_bytes(fitted) <= 3_000
    assert fit_dead_letter(_letter(b"p", key=b"k" * 5_000), 1_000, 3_000) is None


# ---- FitDeadLetters -----------------------------------------------------------------------------


def test_fit_dead_letters_cuts_to_the_smaller_of_cap_and_sink_and_counts():
    letters = [_letter(b"a" * 100, offset=1), _letter(b"b" * 5_000, offset=2), _letter(None)]
    limit = kafka_dead_letter_bytes(letters[1].truncated(0)) + 4 * 1_000  # 3000 payload bytes
    with TestPipeline() as p:
        fitted = (
            p
            | beam.Create(letters)
            | FitDeadLetters(
                4_000, limit=FixedSizeLimit(limit), record_bytes=kafka_dead_letter_bytes
            )
        )
        assert_that(
            fitted | beam.Map(lambda d: (d.offset, len(d.payload or b""), d.payload_length)),
            equal_to([(1, 100, None), (2, 3_000, 5_000), (41, 0, None)]),
        )
    result = p.result
    assert committed_counters(result, METRICS_NAMESPACE) == {"dead_letters_truncated": 1}


def test_fit_dead_letters_validates_the_cap():
    for bad in (0, -5, 1.5, None):
        with pytest.raises(ValueError, match="max_payload_bytes"):
            FitDeadLetters(bad)


# ---- EncodeWithinLimit --------------------------------------------------------------------------


def test_an_oversize_prediction_becomes_a_size_dead_letter():
    small = _prediction(1, "ev-1")
    big = _prediction(2, "x" * 2_000)
    limit = len(small.key) + len(small.to_json()) + 100
    with TestPipeline() as p:
        sized = (
            p
            | beam.Create([small, big])
            | EncodeWithinLimit(
                FixedSizeLimit(limit, "Kafka topic 'out'"),
                key_fn=lambda e: e.key,
                value_fn=Prediction.to_json,
            )
        )
        assert_that(sized.records, equal_to([(b"card-1", small.to_json())]), label="records")
        assert_that(
            sized.dead_letters
            | beam.Map(
                lambda d: (d.stage, d.error_type, d.key, d.topic, d.partition, d.offset, d.payload)
            ),
            equal_to([("size", "RecordTooLarge", b"card-1", "tx", 0, 2, big.to_json())]),
            label="letters",
        )
        assert_that(
            sized.dead_letters | beam.Map(lambda d: d.error_message),
            equal_to(
                [
                    f"Prediction record of {len(big.to_json()) + 6} bytes (key + value) exceeds "
                    f"the {limit}-byte record limit of Kafka topic 'out'"
                ]
            ),
            label="message",
        )


def test_batched_lists_stay_lists_and_the_record_at_the_limit_fits():
    at_limit = _prediction(3, "y" * 500)
    limit = len(at_limit.key) + len(at_limit.to_json())
    over = _prediction(4, "y" * 501)
    batches = [
        Batch([_prediction(1, "a"), _prediction(2, "b")]),  # all fit: the fast path
        Batch([at_limit, over, _prediction(5, "c", key=None)]),
        Batch([_prediction(6, "z" * 900)]),  # nothing fits: no empty list
    ]
    with TestPipeline() as p:
        sized = (
            p
            | beam.Create(batches)
            | EncodeWithinLimit(
                FixedSizeLimit(limit), key_fn=lambda e: e.key, value_fn=Prediction.to_json
            ).batched()
        )
        assert_that(
            sized.records
            | beam.Map(
                lambda batch: (type(batch).__name__, [json.loads(v)["offset"] for _, v in batch])
            ),
            equal_to([("Batch", [1, 2]), ("Batch", [3, 5])]),
            label="records",
        )
        assert_that(
            sized.dead_letters | beam.Map(lambda d: d.offset), equal_to([4, 6]), label="letters"
        )
    assert committed_counters(p.result, METRICS_NAMESPACE) == {"records_oversize": 2}


def test_alerts_already_dead_lettered_as_predictions_are_not_dead_lettered_twice():
    small = _prediction(1, "a")
    medium = _prediction(2, "m" * 300)  # fits the prediction topic, not the alert topic
    huge = _prediction(3, "h" * 3_000)  # fits neither: its prediction is the dead letter
    size = len(small.key) + len(medium.to_json())
    with TestPipeline() as p:
        sized = (
            p
            | beam.Create([small, medium, huge])
            | EncodeWithinLimit(
                FixedSizeLimit(size - 1),
                key_fn=KEY_OF,
                value_fn=Prediction.to_json,
                covered_above=FixedSizeLimit(size),
            )
        )
        assert_that(sized.dead_letters | beam.Map(lambda d: d.offset), equal_to([2]))
    counters = committed_counters(p.result, METRICS_NAMESPACE)
    assert counters == {"records_oversize": 1, "records_oversize_covered": 1}


def KEY_OF(prediction: Prediction) -> bytes | None:  # noqa: N802 - reads like the constants
    return prediction.key


def test_key_and_value_getters_match_the_records():
    assert (KEY((b"k", b"v")), VALUE((b"k", b"v"))) == (b"k", b"v")
    with pytest.raises(TypeError, match="value_fn"):
        EncodeWithinLimit(FixedSizeLimit(10), key_fn=KEY_OF, value_fn=None)
    with pytest.raises(ValueError, match="max_bytes"):
        FixedSizeLimit(0)


# ---- the BigQuery dead-letter sink --------------------------------------------------------------

_ROWS: dict[str, list[dict]] = {}
_LOCK = threading.Lock()


class _RecordingClient:
    """insertAll that records rows and refuses any above the streaming-insert row limit."""

    def __init__(self) -> None:
        self.name = uuid.uuid4().hex
        _ROWS[self.name] = []

    def insert_rows_json(self, table, json_rows, row_ids, **kwargs):  # noqa: ANN001, ANN201
        for row in json_rows:
            assert len(json.dumps(row)) <= ROW_LIMIT.max_bytes
        with _LOCK:
            _ROWS[self.name].extend(json_rows)
        return []


class _Endpoints:
    project = "test-project"
    bigquery_retry = None

    def __init__(self, client: _RecordingClient) -> None:
        self.client = client

    def bigquery_client(self) -> _RecordingClient:
        return self.client


def test_bigquery_dead_letters_are_cut_to_the_option_and_to_the_row_limit():
    client = _RecordingClient()
    letters = [
        _letter(b"q" * 2_000, offset=1),
        _letter(b"r" * 8_000_000, offset=2),  # ~10.7 MB in base64: over the row limit
    ]
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create(letters)
            | "Capped"
            >> WriteDeadLettersToBigQuery(
                "ds.dead",
                endpoints=_Endpoints(client),
                create_disposition=BigQueryDisposition.CREATE_NEVER,
                max_payload_bytes=1_000,
            )
        )
        _ = (
            p
            | "Big" >> beam.Create([letters[1]])
            | "RowLimitOnly"
            >> WriteDeadLettersToBigQuery(
                "ds.dead",
                endpoints=_Endpoints(client),
                create_disposition=BigQueryDisposition.CREATE_NEVER,
            )
        )
    rows = _ROWS.pop(client.name)
    capped = sorted((r for r in rows if len(r["payload"]) < 2_000), key=lambda r: r["offset"])
    assert [(r["offset"], len(base64.b64decode(r["payload"]))) for r in capped] == [
        (1, 1_000),
        (2, 1_000),
    ]
    assert capped[0]["payload_length"] == 2_000
    (cut,) = [r for r in rows if len(r["payload"]) >= 2_000]
    assert cut["payload_truncated"] and cut["payload_length"] == 8_000_000
    assert ROW_LIMIT.max_bytes - 4 < len(json.dumps(cut)) <= ROW_LIMIT.max_bytes
