"""transforms.beam_yaml without a broker: the checks made when a YAML pipeline is built."""

from __future__ import annotations

import apache_beam as beam
import pytest
from tiny_anomaly_model import write_model

from transforms import beam_yaml
from transforms.dead_letter import DeadLetter
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.record import KafkaRecord


def test_decode_and_score_need_an_error_output_for_their_dead_letters(tmp_path):
    with pytest.raises(ValueError, match=r"DecodeEvents needs error_handling: \{output: <name>\}"):
        beam_yaml.decode_events(bundled_schema_path("creditcard"))
    write_model(str(tmp_path), 1)
    with pytest.raises(ValueError, match="ScoreEvents needs error_handling"):
        beam_yaml.score_events(str(tmp_path), error_handling={})
    assert beam_yaml.score_events(str(tmp_path), error_handling={"output": "bad"}) is not None


def test_score_events_fails_at_build_time_on_a_model_path_without_models(tmp_path):
    with pytest.raises(Exception, match=str(tmp_path)):
        beam_yaml.score_events(str(tmp_path), error_handling={"output": "bad"})


def test_read_without_a_group_starts_at_the_earliest_offset():
    read = beam_yaml.read_kafka("127.0.0.1:1", "events")
    assert read._plan_kwargs["start"] == "earliest"
    assert beam_yaml.read_kafka("127.0.0.1:1", "e", group_id="g")._plan_kwargs["start"] == (
        "committed"
    )


def test_write_values():
    record = KafkaRecord("t", 0, 1, b"k", b"v", 0)
    assert beam_yaml._value(record) == b"v" and beam_yaml._key(record) == b"k"
    assert beam_yaml._value(beam.Row(key=None, value="text")) == "text"
    letter = DeadLetter(stage="decode", error_type="E", error_message="m", payload=b"x")
    with pytest.raises(TypeError, match="dead letters go to WriteDeadLetters"):
        beam_yaml._value(letter)
    with pytest.raises(TypeError, match="got dict"):
        beam_yaml._value({"value": 1})
