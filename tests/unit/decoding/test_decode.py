"""DecodeAndValidate: JSON/Avro/Confluent decoding, every dead-letter reason, counts and metrics."""

from __future__ import annotations

import base64
import datetime
import io
import json
import random
import struct

import apache_beam as beam
import fastavro
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_metrics import committed_counters
from local_schema_registry import FAILING_ID, LocalSchemaRegistry

from transforms.dead_letter import DEAD_LETTER_TAG
from transforms.decoding.avro import AvroDecoder, ConfluentAvroDecoder
from transforms.decoding.decode import METRICS_NAMESPACE, DecodeAndValidate, _DecodeFn
from transforms.decoding.rejection import Reason, Rejected
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import RowSchema, bundled_schema, bundled_schema_path
from transforms.kafka.record import KafkaRecord

CAR = bundled_schema("car_sensor")
GOOD = {
    "event_id": "e-1",
    "car_id": "car-7",
    "event_time": "2026-11-22T01:02:03.456Z",
    "speed_kmh": 88.5,
    "engine_rpm": 2400,
    "engine_temp_c": 91.0,
    "oil_pressure_kpa": 310.0,
    "battery_voltage": 12.6,
    "tire_pressure_kpa": 230.0,
    "latitude": 48.1,
}
GOOD_ROW = {
    **GOOD,
    "event_time": "2026-11-22T01:02:03.456000Z",
    "engine_rpm": 2400.0,
    "longitude": None,
    "is_anomaly": None,
}


def record(value: bytes | None, offset: int = 0, key: bytes | None = b"car-7") -> KafkaRecord:
    return KafkaRecord("cars", 1, offset, key, value, 1_700_000_000_000)


def js(obj) -> bytes:
    return json.dumps(obj).encode()


def run_fn(fn: _DecodeFn, rec: KafkaRecord):
    """Drive the DoFn directly (pure logic; the pipeline tests below cover the wiring)."""
    fn.setup()
    return list(fn.process(rec))


def json_fn(**kwargs) -> _DecodeFn:
    args = dict(
        schema=CAR,
        message_format="JSON",
        avro_schema=None,
        registry_url=None,
        registry_config=None,
        unknown_fields="reject",
        max_message_bytes=10_000,
        with_records=False,
    )
    args.update(kwargs)
    return _DecodeFn(**args)


# -- JSON: each dead-letter case on its own ----------------------------------------------------

DEAD_LETTER_CASES = [
    pytest.param(b'{"event_id": "e-1",', "decode", Reason.INVALID_JSON, id="invalid-json"),
    pytest.param(b"\xff\xfe{}", "decode", Reason.NOT_UTF8, id="not-utf8"),
    pytest.param(js(GOOD).decode().encode("utf-16"), "decode", Reason.NOT_UTF8, id="utf16"),
    pytest.param(b"[1, 2]", "decode", Reason.NOT_AN_OBJECT, id="array"),
    pytest.param(b'"hello"', "decode", Reason.NOT_AN_OBJECT, id="string"),
    pytest.param(b"null", "decode", Reason.NOT_AN_OBJECT, id="json-null"),
    pytest.param(None, "decode", Reason.EMPTY_PAYLOAD, id="tombstone"),
    pytest.param(b"", "decode", Reason.INVALID_JSON, id="empty-bytes"),
    pytest.param(
        js(GOOD)[:-1] + b', "pad": "' + b"x" * 10_000 + b'"}',
        "decode",
        Reason.OVERSIZE,
        id="oversize",
    ),
    pytest.param(js(GOOD).replace(b"88.5", b"NaN"), "decode", Reason.NON_FINITE, id="nan-literal"),
    pytest.param(
        js(GOOD).replace(b"88.5", b"-Infinity"), "decode", Reason.NON_FINITE, id="inf-literal"
    ),
    pytest.param(
        js(GOOD).replace(b"88.5", b"1e400"), "validate", Reason.NON_FINITE, id="overflow-to-inf"
    ),
    pytest.param(js({**GOOD, "speed_kmh": "88.5"}), "validate", Reason.WRONG_TYPE, id="str-float"),
    pytest.param(js({**GOOD, "is_anomaly": "1"}), "validate", Reason.WRONG_TYPE, id="str-int"),
    pytest.param(js({**GOOD, "is_anomaly": True}), "validate", Reason.WRONG_TYPE, id="bool-int"),
    pytest.param(js({**GOOD, "is_anomaly": 1.0}), "validate", Reason.WRONG_TYPE, id="float-int"),
    pytest.param(js({**GOOD, "speed_kmh": False}), "validate", Reason.WRONG_TYPE, id="bool-float"),
    pytest.param(js({**GOOD, "car_id": 7}), "validate", Reason.WRONG_TYPE, id="int-string"),
    pytest.param(js({**GOOD, "is_anomaly": 2**63}), "validate", Reason.OUT_OF_RANGE, id="int64"),
    pytest.param(js({**GOOD, "is_anomaly": 2**64}), "validate", Reason.OUT_OF_RANGE, id="uint64"),
    pytest.param(
        js({**GOOD, "is_anomaly": -(2**63) - 1}), "validate", Reason.OUT_OF_RANGE, id="i64-"
    ),
    pytest.param(js({**GOOD, "is_anomaly": 10**30}), "validate", Reason.OUT_OF_RANGE, id="bigint"),
    pytest.param(
        js({**GOOD, "event_time": "2026-11-22T01:02:03"}),
        "validate",
        Reason.WRONG_TYPE,
        id="timestamp-no-offset",
    ),
    pytest.param(
        js({**GOOD, "event_time": "yesterday"}), "validate", Reason.WRONG_TYPE, id="timestamp-text"
    ),
    pytest.param(
        js({**GOOD, "event_time": "2026-13-40T01:02:03Z"}),
        "validate",
        Reason.WRONG_TYPE,
        id="timestamp-bad-date",
    ),
    pytest.param(
        js({**GOOD, "event_time": 1e20}), "validate", Reason.OUT_OF_RANGE, id="timestamp-epoch"
    ),
    pytest.param(
        js({k: v for k, v in GOOD.items() if k != "car_id"}),
        "validate",
        Reason.MISSING_FIELD,
        id="missing-required",
    ),
    pytest.param(js({**GOOD, "car_id": None}), "validate", Reason.NULL_IN_REQUIRED, id="null-req"),
    pytest.param(js({**GOOD, "colour": "red"}), "validate", Reason.UNKNOWN_FIELD, id="unknown"),
    pytest.param(
        b'{"event_id": "\\ud800"' + js(GOOD)[js(GOOD).index(b",") :],
        "validate",
        Reason.WRONG_TYPE,
        id="lone-surrogate",
    ),
]


@pytest.mark.parametrize(("payload", "stage", "reason"), DEAD_LETTER_CASES)
def test_each_bad_json_message_becomes_a_dead_letter(payload, stage, reason):
    out = run_fn(json_fn(), record(payload, offset=42))
    assert len(out) == 1
    assert out[0].tag == DEAD_LETTER_TAG
    letter = out[0].value
    assert (letter.stage, letter.error_type) == (stage, reason), letter.error_message
    assert letter.error_message
    assert (letter.payload, letter.key) == (payload, b"car-7")
    assert (letter.topic, letter.partition, letter.offset) == ("cars", 1, 42)
    failed_at = datetime.datetime.fromisoformat(letter.failed_at)
    assert abs(datetime.datetime.now(datetime.UTC) - failed_at).total_seconds() < 60


def test_a_dead_letter_names_every_bad_field():
    bad = {**GOOD, "speed_kmh": "fast", "car_id": None, "colour": "red"}
    (out,) = run_fn(json_fn(), record(js(bad)))
    message = out.value.error_message
    assert "speed_kmh: expected FLOAT, got str 'fast'" in message
    assert "car_id: REQUIRED field is null" in message
    assert "colour: not in the schema" in message


def test_good_json_is_normalised_to_a_full_row():
    assert run_fn(json_fn(), record(js(GOOD))) == [GOOD_ROW]


@pytest.mark.parametrize(("payload", "stage", "reason"), DEAD_LETTER_CASES)
def test_the_fast_path_gives_up_on_every_bad_message(payload, stage, reason):
    """decode_json_fast never accepts what the exact path rejects (which then explains it)."""
    if payload is not None:
        assert RowValidator(CAR).decode_json_fast(payload) is None


def test_the_fast_path_returns_the_exact_paths_rows():
    validator = RowValidator(CAR)
    for obj in (GOOD, {**GOOD, "longitude": 2, "is_anomaly": 1, "event_time": 1.5e9}):
        fast = validator.decode_json_fast(js(obj))
        exact = validator.validate(json.loads(js(obj)))
        assert fast == exact
        assert list(fast) == list(exact)
        assert [type(v) for v in fast.values()] == [type(v) for v in exact.values()]
    nested = RowSchema.from_bigquery_json(
        [{"name": "pos", "type": "RECORD", "fields": [{"name": "lat", "type": "FLOAT"}]}]
    )
    assert RowValidator(nested).decode_json_fast(b'{"pos": {"lat": 1.0}}') is None  # exact only


@pytest.mark.parametrize(
    "payload",
    [
        b'{"x": 1e400}',  # overflows a double: the exact path says NON_FINITE
        b'{"x": true}',  # a bool is not a FLOAT
        b'{"i": 9223372036854775808}',  # beyond int64
        b'{"i": 1.0}',  # a float is not an INTEGER
        b'{"s": "\\ud800"}',  # lone surrogate
        b'{"s": "\xff"}',  # invalid UTF-8
        b'{"s": 5}',
        b'{"t": "2026-11-22 01:02:03"}',  # TIMESTAMP without an offset
        b'{"t": null, "x": 1}',  # null in REQUIRED (converted type)
        b'{"x": NaN}',
        b'\xef\xbb\xbf{"x": 1}',  # UTF-8 BOM, which json.loads refuses too
        b'{"x": 1} x',
        b"[1]",
        b"",
    ],
)
def test_the_fast_path_leaves_unusual_values_to_the_exact_path(payload):
    schema = RowSchema.from_bigquery_json(
        [
            {"name": "x", "type": "FLOAT"},
            {"name": "i", "type": "INTEGER"},
            {"name": "s", "type": "STRING"},
            {"name": "t", "type": "TIMESTAMP", "mode": "REQUIRED"},
        ]
    )
    validator = RowValidator(schema)
    if b'"t"' not in payload and payload.startswith(b"{"):
        payload = payload[:-1] + b', "t": 0}'
    assert validator.decode_json_fast(payload) is None


def test_the_batch_fast_path_gives_each_payloads_row_or_leaves_the_whole_batch():
    """decode_json_fast_all: the rows decode_json_fast gives one by one, in order, or None as
    soon as one payload needs the exact path (the caller then decodes one by one)."""
    validator = RowValidator(CAR)
    good = [js({**GOOD, "event_id": f"e-{i}", "speed_kmh": i / 3}) for i in range(50)]
    rows = validator.decode_json_fast_all(good)
    assert rows == [validator.decode_json_fast(payload) for payload in good]
    assert rows[7] == {**GOOD_ROW, "event_id": "e-7", "speed_kmh": 7 / 3}
    assert validator.decode_json_fast_all([]) == []
    for case in DEAD_LETTER_CASES:
        payload = case.values[0]
        if payload is not None:
            assert validator.decode_json_fast_all([*good[:3], payload, *good[3:6]]) is None
    # A converted type (TIMESTAMP) that fails its converter fails the batch too.
    bad_time = js({**GOOD, "event_time": "2026-11-22 01:02:03"})
    assert validator.decode_json_fast(bad_time) is None
    assert validator.decode_json_fast_all([good[0], bad_time]) is None


def test_batched_decode_of_a_clean_batch_equals_the_record_by_record_path():
    records = [record(js({**GOOD, "event_id": f"e-{i}"}), offset=i) for i in range(20)]
    oversize = [*records[:2], record(js({**GOOD, "event_id": "x" * 200}), offset=20)]
    with TestPipeline() as pipeline:
        batches = pipeline | beam.Create([records, oversize])
        decode = DecodeAndValidate(CAR, max_message_bytes=300).with_records()
        batched = batches | "Batched" >> decode.batched()
        single = batches | beam.FlatMap(lambda batch: batch) | "Single" >> decode
        assert_that(
            batched.rows | "Flat" >> beam.FlatMap(lambda batch: batch),
            equal_to(
                [(r, {**GOOD_ROW, "event_id": f"e-{i}"}) for i, r in enumerate(records)]
                + [(r, {**GOOD_ROW, "event_id": f"e-{i}"}) for i, r in enumerate(records[:2])]
            ),
            label="BatchedRows",
        )
        assert_that(
            single.rows | "Keys" >> beam.Map(lambda pair: pair[0].offset),
            equal_to([*range(20), 0, 1]),
            label="SingleRows",
        )
        assert_that(
            batched.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
            equal_to([(20, Reason.OVERSIZE)]),
            label="Oversize",
        )


def test_the_fast_path_parses_floats_and_odd_names_like_the_json_module():
    schema = RowSchema.from_bigquery_json(
        [{"name": "class", "type": "FLOAT"}, {"name": "my-field", "type": "STRING"}]
    )
    validator = RowValidator(schema)
    rng = random.Random(5)
    values = [rng.uniform(-1e6, 1e6) for _ in range(200)] + [5e-324, 2.2250738585072014e-308, 1e308]
    texts = [repr(v) for v in values] + ["0.1", "1E5", "-0", "123456789012345678901234567890"]
    for text in texts:
        payload = f'{{"class": {text}, "my-field": "é"}}'.encode()
        fast = validator.decode_json_fast(payload)
        exact = validator.validate(json.loads(payload))
        assert fast == exact and type(fast["class"]) is float, text


def test_json_numbers_beyond_64_bits_and_duplicate_keys_decode_like_the_json_module():
    schema = RowSchema.from_bigquery_json(
        [{"name": "n", "type": "NUMERIC"}, {"name": "f", "type": "FLOAT"}]
    )
    fn = json_fn(schema=schema)
    big = b'{"n": 99999999999999999999, "f": 123456789012345678901234567890}'
    assert run_fn(fn, record(big)) == [{"n": "99999999999999999999", "f": 1.2345678901234568e29}]
    assert run_fn(fn, record(b'{"n": 1, "f": 2.5, "f": -0.5}')) == [{"n": "1", "f": -0.5}]


def test_unknown_fields_ignore_drops_them():
    out = run_fn(json_fn(unknown_fields="ignore"), record(js({**GOOD, "colour": "red"})))
    assert out == [GOOD_ROW]


def test_with_records_pairs_the_row_with_its_record():
    rec = record(js(GOOD), offset=5)
    assert run_fn(json_fn(with_records=True), rec) == [(rec, GOOD_ROW)]


# -- coercion rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T01:02:03Z", "2026-11-22T01:02:03.000000Z"),
        ("2026-11-22 03:02:03.5+02:00", "2026-11-22T01:02:03.500000Z"),
        ("2026-11-22t01:02:03.123456789z", "2026-11-22T01:02:03.123456Z"),
        (1_795_309_323, "2026-11-22T01:02:03.000000Z"),
        (1_795_309_323.25, "2026-11-22T01:02:03.250000Z"),
    ],
)
def test_timestamp_accepts_rfc3339_and_epoch_seconds(value, expected):
    row = RowValidator(CAR).validate({**GOOD, "event_time": value})
    assert row["event_time"] == expected


def test_other_types_numeric_bytes_boolean_repeated_record():
    schema = RowSchema.from_bigquery_json(
        [
            {"name": "n", "type": "NUMERIC"},
            {"name": "b", "type": "BYTES"},
            {"name": "ok", "type": "BOOLEAN"},
            {"name": "xs", "type": "FLOAT", "mode": "REPEATED"},
            {"name": "pos", "type": "RECORD", "fields": [{"name": "lat", "type": "FLOAT"}]},
        ]
    )
    validator = RowValidator(schema)
    raw = base64.b64encode(b"\x00\x01").decode()
    assert validator.validate(
        {"n": "12.50", "b": raw, "ok": False, "xs": [1, 2.5], "pos": {"lat": 1}}
    ) == {"n": "12.50", "b": b"\x00\x01", "ok": False, "xs": [1.0, 2.5], "pos": {"lat": 1.0}}
    assert validator.validate({}) == {"n": None, "b": None, "ok": None, "xs": [], "pos": None}
    for bad, reason in [
        ({"n": "1e-12"}, Reason.OUT_OF_RANGE),
        ({"n": "abc"}, Reason.WRONG_TYPE),
        ({"b": "not base64!"}, Reason.WRONG_TYPE),
        ({"ok": 1}, Reason.WRONG_TYPE),
        ({"xs": [1, None]}, Reason.WRONG_TYPE),
        ({"xs": 1.0}, Reason.WRONG_TYPE),
        ({"pos": {"lat": 1, "extra": 2}}, Reason.UNKNOWN_FIELD),
        ({"pos": [1]}, Reason.WRONG_TYPE),
    ]:
        with pytest.raises(Rejected) as caught:
            validator.validate(bad)
        assert caught.value.reason == reason, bad


# -- Avro with a schema file ------------------------------------------------------------------


def avro_bytes(schema: dict, obj: dict) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), obj)
    return buffer.getvalue()


AVRO_GOOD = {
    **GOOD,
    "event_time": datetime.datetime(2026, 11, 22, 1, 2, 3, 456000, tzinfo=datetime.UTC),
    "engine_rpm": 2400.0,
    "longitude": None,
    "is_anomaly": None,
}


def test_avro_with_the_schema_derived_writer_schema():
    payload = avro_bytes(CAR.to_avro(), AVRO_GOOD)
    assert run_fn(json_fn(message_format="AVRO"), record(payload)) == [GOOD_ROW]


def test_avro_with_an_explicit_writer_schema_and_nan():
    writer = json.loads(open(bundled_schema_path("car_sensor", "avsc")).read())
    fn = json_fn(message_format="AVRO", avro_schema=writer)
    (out,) = run_fn(fn, record(avro_bytes(writer, {**AVRO_GOOD, "speed_kmh": float("nan")})))
    assert (out.value.stage, out.value.error_type) == ("validate", Reason.NON_FINITE)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x02", id="truncated"),
        pytest.param(avro_bytes(CAR.to_avro(), AVRO_GOOD) + b"\x00", id="trailing-bytes"),
        pytest.param(js(GOOD), id="json-not-avro"),
    ],
)
def test_corrupt_avro_is_a_dead_letter(payload):
    (out,) = run_fn(json_fn(message_format="AVRO"), record(payload))
    assert (out.value.stage, out.value.error_type) == ("decode", Reason.INVALID_AVRO)
    assert out.value.payload == payload


# -- Confluent wire format against a real HTTP registry on 127.0.0.1 ---------------------------

CAR_ID, PROTO_ID = 1, 2  # the ids the fixture's registrations get


@pytest.fixture
def registry():
    with LocalSchemaRegistry() as server:
        assert server.register(CAR.to_avro()) == CAR_ID
        assert server.register('syntax = "proto3";', "PROTOBUF") == PROTO_ID
        yield server


def framed(schema_id: int, obj: dict) -> bytes:
    return struct.pack(">bI", 0, schema_id) + avro_bytes(CAR.to_avro(), obj)


def registry_fn(url: str, **kwargs) -> _DecodeFn:
    return json_fn(
        message_format="AVRO_CONFLUENT_WIRE_FORMAT",
        registry_url=url,
        registry_config={"max.retries": 0},
        **kwargs,
    )


def test_confluent_wire_format_fetches_each_schema_id_once(registry):
    fn = registry_fn(registry.url)
    fn.setup()
    for offset in range(3):
        assert list(fn.process(record(framed(CAR_ID, AVRO_GOOD), offset))) == [GOOD_ROW]
    assert registry.requests == [f"/schemas/ids/{CAR_ID}"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(framed(99, AVRO_GOOD), Reason.UNKNOWN_SCHEMA_ID, id="unknown-id"),
        pytest.param(framed(PROTO_ID, AVRO_GOOD), Reason.UNSUPPORTED_SCHEMA, id="protobuf-id"),
        pytest.param(b"\x00\x00\x00", Reason.BAD_WIRE_FORMAT, id="short"),
        pytest.param(b"\x01" + framed(CAR_ID, AVRO_GOOD)[1:], Reason.BAD_WIRE_FORMAT, id="magic"),
        pytest.param(framed(CAR_ID, AVRO_GOOD)[:12], Reason.INVALID_AVRO, id="truncated-body"),
    ],
)
def test_confluent_wire_format_failures_are_dead_letters(registry, payload, reason):
    (out,) = run_fn(registry_fn(registry.url), record(payload))
    assert (out.tag, out.value.stage, out.value.error_type) == (DEAD_LETTER_TAG, "decode", reason)
    assert out.value.payload == payload


def test_unknown_schema_id_is_remembered_not_refetched(registry):
    decoder = ConfluentAvroDecoder(registry.url, registry_config={"max.retries": 0})
    for _ in range(3):
        with pytest.raises(Rejected, match="schema id 99 not found"):
            decoder(framed(99, AVRO_GOOD))
    assert registry.requests == ["/schemas/ids/99"]


def test_registry_errors_that_are_not_the_messages_fault_raise_for_retry(registry):
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    decoder = ConfluentAvroDecoder(registry.url, registry_config={"max.retries": 0})
    with pytest.raises(SchemaRegistryError):
        decoder(framed(FAILING_ID, AVRO_GOOD))


def test_confluent_reader_schema_resolves_an_older_writer(registry):
    old = {
        "type": "record",
        "name": "Row",
        "fields": [{"name": "event_id", "type": "string"}, {"name": "speed", "type": "float"}],
    }
    old_id = registry.register(old)
    reader = {**old, "fields": [*old["fields"], {"name": "note", "type": "string", "default": ""}]}
    decoder = ConfluentAvroDecoder(registry.url, reader_schema=reader)
    payload = struct.pack(">bI", 0, old_id) + avro_bytes(old, {"event_id": "e", "speed": 1.5})
    assert decoder(payload) == {"event_id": "e", "speed": 1.5, "note": ""}


def test_a_reader_schema_with_another_record_name_still_resolves(registry):
    """The pipeline's .avsc (CarSensorReading) reads records registered as to_avro()'s "Row"."""
    reader = json.loads(open(bundled_schema_path("car_sensor", "avsc")).read())
    fn = registry_fn(registry.url, avro_schema=reader)
    assert run_fn(fn, record(framed(CAR_ID, AVRO_GOOD))) == [GOOD_ROW]


def test_an_incompatible_reader_schema_gives_short_invalid_avro_letters(registry):
    reader = {
        "type": "record",
        "name": "Row",
        "namespace": "kafka_beam_ml",
        "fields": [{"name": "car_id", "type": "long"}],  # string in the writer: not resolvable
    }
    (out,) = run_fn(
        registry_fn(registry.url, avro_schema=reader), record(framed(CAR_ID, AVRO_GOOD))
    )
    assert out.value.error_type == Reason.INVALID_AVRO
    assert len(out.value.error_message) < 400


def test_interoperates_with_confluent_kafkas_own_avro_serializer(registry):
    """Bytes framed by confluent-kafka's AvroSerializer (auto-registering) decode to rows."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": registry.url})
    avsc = open(bundled_schema_path("car_sensor", "avsc")).read()
    serializer = AvroSerializer(client, avsc)
    payload = serializer(AVRO_GOOD, SerializationContext("cars", MessageField.VALUE))
    assert payload[0] == 0 and any(
        p.startswith("/subjects/cars-value/versions") for p in registry.requests
    )
    assert run_fn(registry_fn(registry.url), record(payload)) == [GOOD_ROW]


def test_avro_decoder_is_usable_on_its_own():
    assert AvroDecoder(CAR.to_avro())(avro_bytes(CAR.to_avro(), AVRO_GOOD))["car_id"] == "car-7"


# -- the transform in a pipeline ----------------------------------------------------------------


def test_pipeline_routes_every_input_once_and_counts_outcomes():
    good = [record(js({**GOOD, "event_id": f"e-{i}"}), offset=i) for i in range(4)]
    bad = [record(p.values[0], offset=100 + i) for i, p in enumerate(DEAD_LETTER_CASES)]
    expected_bad = [(100 + i, p.values[2]) for i, p in enumerate(DEAD_LETTER_CASES)]
    pipeline = TestPipeline()
    decoded = (
        pipeline
        | beam.Create(good + bad)
        | DecodeAndValidate(CAR, "JSON", max_message_bytes=10_000)
    )
    assert_that(
        decoded.rows,
        equal_to([{**GOOD_ROW, "event_id": f"e-{i}"} for i in range(4)]),
        label="Rows",
    )
    assert_that(
        decoded.dead_letters | beam.Map(lambda d: (d.offset, d.error_type)),
        equal_to(expected_bad),
        label="DeadLetters",
    )
    total = (decoded.rows, decoded.dead_letters) | beam.Flatten() | beam.combiners.Count.Globally()
    assert_that(total, equal_to([len(good) + len(bad)]), label="NothingDropped")
    result = pipeline.run()
    result.wait_until_finish()

    counters = committed_counters(result, METRICS_NAMESPACE)
    assert counters["rows"] == len(good)
    assert counters["dead_letters"] == len(bad)
    assert counters[Reason.WRONG_TYPE] == sum(r == Reason.WRONG_TYPE for _, r in expected_bad)
    assert counters[Reason.OVERSIZE] == 1


def test_pipeline_with_records_keeps_the_kafka_record():
    recs = [record(js(GOOD), offset=1), record(b"{", offset=2)]
    with TestPipeline() as pipeline:
        decoded = pipeline | beam.Create(recs) | DecodeAndValidate(CAR).with_records()
        assert_that(decoded.rows, equal_to([(recs[0], GOOD_ROW)]), label="Pairs")
        assert_that(
            decoded.dead_letters | beam.Map(lambda d: d.offset), equal_to([2]), label="Dead"
        )


def test_batched_decode_keeps_batches_and_times_each_dead_letter_by_its_record():
    first = [
        record(js(GOOD), offset=1),
        record(b"{", offset=2)._replace(timestamp_ms=7),
    ]
    second = [record(None, offset=3)]  # only a dead letter: no empty batch
    with TestPipeline() as pipeline:
        decoded = (
            pipeline
            | beam.Create([first, second])
            | DecodeAndValidate(CAR).with_records().batched()
        )
        assert_that(
            decoded.rows | beam.Map(lambda b: (type(b).__name__, b)),
            equal_to([("Batch", [(first[0], GOOD_ROW)])]),
            label="Batches",
        )
        assert_that(
            decoded.dead_letters
            | beam.Map(lambda d, ts=beam.DoFn.TimestampParam: (d.offset, d.error_type, ts.micros)),
            equal_to(
                [(2, Reason.INVALID_JSON, 7000), (3, Reason.EMPTY_PAYLOAD, 1_700_000_000_000_000)]
            ),
            label="Dead",
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"message_format": "XML"}, "message_format must be one of"),
        ({"message_format": "AVRO_CONFLUENT_WIRE_FORMAT"}, "needs schema_registry_url"),
        (
            {"message_format": "AVRO_CONFLUENT_WIRE_FORMAT", "schema_registry_url": "reg:8081"},
            "http\\(s\\)://host:port",
        ),
        ({"unknown_fields": "maybe"}, "unknown_fields must be one of"),
        ({"max_message_bytes": 0}, "must be positive"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeAndValidate(CAR, **kwargs)
