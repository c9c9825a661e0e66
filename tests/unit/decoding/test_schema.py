"""RowSchema: reading BigQuery/Avro declarations, the bundled schemas, and serialising back."""

from __future__ import annotations

import json
import pickle

import fastavro
import pytest

from transforms.decoding.schema import Field, RowSchema, bundled_schema, bundled_schema_path

CAR_SENSOR_FLOATS = (
    "speed_kmh",
    "engine_rpm",
    "engine_temp_c",
    "oil_pressure_kpa",
    "battery_voltage",
    "tire_pressure_kpa",
)


def test_creditcard_schema_matches_the_contract():
    schema = bundled_schema("creditcard")
    expected = ("event_id", "card_id", "Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class")
    assert schema.names == expected
    assert schema.field("event_id").mode == "REQUIRED"
    assert schema.field("card_id").mode == "NULLABLE"
    assert all(schema.field(n).type == "FLOAT" and schema.field(n).required for n in expected[2:32])
    assert (schema.field("Class").type, schema.field("Class").mode) == ("INTEGER", "NULLABLE")
    assert schema.categorical_names == ("event_id", "card_id")
    assert schema.drop("Class").numeric_names == expected[2:32]


def test_car_sensor_schema_matches_the_contract():
    schema = bundled_schema("car_sensor")
    assert schema.names == (
        "event_id",
        "car_id",
        "event_time",
        *CAR_SENSOR_FLOATS,
        "latitude",
        "longitude",
        "is_anomaly",
    )
    assert [schema.field(n).mode for n in ("event_id", "car_id", "event_time")] == ["REQUIRED"] * 3
    assert schema.field("event_time").type == "TIMESTAMP"
    assert all(
        schema.field(n).type == "FLOAT" and schema.field(n).required for n in CAR_SENSOR_FLOATS
    )
    assert schema.field("latitude").mode == schema.field("longitude").mode == "NULLABLE"
    assert (schema.field("is_anomaly").type, schema.field("is_anomaly").mode) == (
        "INTEGER",
        "NULLABLE",
    )
    assert schema.drop("event_id", "car_id", "is_anomaly").numeric_names == (
        *CAR_SENSOR_FLOATS,
        "latitude",
        "longitude",
    )


@pytest.mark.parametrize("name", ["creditcard", "car_sensor"])
def test_bundled_avro_schema_is_the_same_declaration(name):
    avsc = RowSchema.load(bundled_schema_path(name, "avsc"))
    assert avsc == bundled_schema(name)
    fastavro.parse_schema(json.loads(open(bundled_schema_path(name, "avsc")).read()))


@pytest.mark.parametrize("name", ["creditcard", "car_sensor"])
def test_bigquery_json_round_trip_and_load_by_content(name, tmp_path):
    schema = bundled_schema(name)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema.to_bigquery_json()))
    assert RowSchema.load(str(path)) == schema
    assert RowSchema.from_bigquery_json(str(path)) == schema
    assert pickle.loads(pickle.dumps(schema)) == schema


def test_bigquery_list_form_aliases_and_records():
    schema = RowSchema.from_bigquery_json(
        [
            {"name": "id", "type": "INT64", "mode": "required"},
            {"name": "ok", "type": "BOOL"},
            {"name": "xs", "type": "FLOAT64", "mode": "REPEATED"},
            {
                "name": "pos",
                "type": "STRUCT",
                "fields": [{"name": "lat", "type": "FLOAT"}, {"name": "lon", "type": "FLOAT"}],
            },
        ]
    )
    assert [(f.name, f.type, f.mode) for f in schema] == [
        ("id", "INTEGER", "REQUIRED"),
        ("ok", "BOOLEAN", "NULLABLE"),
        ("xs", "FLOAT", "REPEATED"),
        ("pos", "RECORD", "NULLABLE"),
    ]
    assert schema.field("pos").fields == (Field("lat", "FLOAT"), Field("lon", "FLOAT"))
    assert schema.numeric_names == ("id",)
    assert schema.categorical_names == ("ok",)
    assert RowSchema.from_avro(schema.to_avro()) == schema


def test_from_avro_maps_types_and_modes():
    schema = RowSchema.from_avro(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "a", "type": "int"},
                {"name": "b", "type": ["null", "double"], "doc": "why"},
                {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9}},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "raw", "type": {"type": "fixed", "name": "F", "size": 4}},
            ],
        }
    )
    assert [(f.name, f.type, f.mode) for f in schema] == [
        ("a", "INTEGER", "REQUIRED"),
        ("b", "FLOAT", "NULLABLE"),
        ("t", "TIMESTAMP", "REQUIRED"),
        ("d", "NUMERIC", "REQUIRED"),
        ("e", "STRING", "REQUIRED"),
        ("tags", "STRING", "REPEATED"),
        ("raw", "BYTES", "REQUIRED"),
    ]
    assert schema.field("b").description == "why"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ([{"name": "x", "type": "GEOGRAPHY"}], "type 'GEOGRAPHY'"),
        ([{"name": "x", "type": "STRING", "mode": "SOMETIMES"}], "mode 'SOMETIMES'"),
        ([{"name": "x", "type": "STRING"}, {"name": "x", "type": "FLOAT"}], "duplicate"),
        ([{"name": "x"}], "needs 'name' and 'type'"),
        ([{"name": "r", "type": "RECORD"}], "RECORD needs sub-fields"),
        ([], "at least one field"),
        ({"type": "record"}, "list of fields"),
    ],
)
def test_bad_bigquery_schemas_are_rejected_clearly(source, message):
    with pytest.raises(ValueError, match=message):
        RowSchema.from_bigquery_json(source)


@pytest.mark.parametrize(
    ("avro", "message"),
    [
        ({"type": "enum", "name": "E", "symbols": ["A"]}, "must be a record"),
        (
            {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["int", "string"]}]},
            "only unions with null",
        ),
        (
            {"type": "record", "name": "R", "fields": [{"name": "m", "type": {"type": "map"}}]},
            "unsupported type",
        ),
    ],
)
def test_bad_avro_schemas_are_rejected_clearly(avro, message):
    with pytest.raises(ValueError, match=message):
        RowSchema.from_avro(avro)


def test_load_rejects_unknown_documents(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="neither a BigQuery JSON schema nor an Avro record"):
        RowSchema.load(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RowSchema.load(str(path))


def test_select_drop_and_lookup_errors():
    schema = bundled_schema("car_sensor")
    assert schema.select("speed_kmh", "car_id").names == ("speed_kmh", "car_id")
    assert "car_id" in schema and "nope" not in schema
    with pytest.raises(KeyError, match="no field 'nope'"):
        schema.drop("nope")
    with pytest.raises(ValueError, match="no bundled schema"):
        bundled_schema("nope")
