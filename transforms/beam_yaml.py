"""Our Kafka, decoding and scoring transforms as Beam YAML transforms (no JVM).

Beam YAML's own ``ReadFromKafka``/``WriteToKafka`` expand to Java transforms. Declared in a
pipeline file's ``providers:`` block (a ``python`` provider: these callables, imported from this
installed package), the transforms below read Kafka, decode and validate events, score them
with our model handler and write the results back::

    providers:
      - type: python
        config: {}
        transforms:
          ReadKafkaEvents: transforms.beam_yaml.read_kafka
          DecodeEvents: transforms.beam_yaml.decode_events
          ScoreEvents: transforms.beam_yaml.score_events
          WriteKafka: transforms.beam_yaml.write_kafka
          WriteDeadLetters: transforms.beam_yaml.write_dead_letters

A full pipeline is ``pipelines/yaml/score_events.yaml`` (docs/beam_yaml.md). Between these
steps the elements are our own types (:class:`~transforms.kafka.record.KafkaRecord`, decoded
``(record, row)`` pairs, :class:`~transforms.inference.scoring.Prediction`,
:class:`~transforms.dead_letter.DeadLetter`). ``DecodeEvents`` and ``ScoreEvents`` follow Beam
YAML's error-handling convention: their dead letters are the output named in ``error_handling``,
which Beam YAML requires the pipeline to consume, so no rejected event goes unnoticed.
"""

from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from transforms.dead_letter import DeadLetter
from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.schema import RowSchema
from transforms.inference.model_handler import SavedModelHandler
from transforms.inference.model_store import latest_version, read_model_info
from transforms.inference.scoring import Prediction, ScoreEvents
from transforms.kafka.config import KafkaConfig
from transforms.kafka.limits import TopicRecordLimit
from transforms.kafka.reader import ReadFromKafka
from transforms.kafka.writer import WriteToKafka
from transforms.size_limits import FitDeadLetters, kafka_dead_letter_bytes

__all__ = ["read_kafka", "decode_events", "score_events", "write_kafka", "write_dead_letters"]

_DEFAULT_ID_FIELD = "event_id"
#: A dead letter's payload is cut to this by default: 512 KiB is ~683 KiB in base64, so a
#: letter with its metadata fits a default 1 MB Kafka record.
_DEAD_LETTER_MAX_PAYLOAD_BYTES = 512 * 1024


def _kafka_config(bootstrap_servers: str, kafka_config: Mapping[str, str] | None) -> KafkaConfig:
    return KafkaConfig.from_librdkafka_dict(
        {**(kafka_config or {}), "bootstrap.servers": bootstrap_servers}
    )


def _dead_letter_output(error_handling: Mapping[str, str] | None, transform: str) -> str:
    """The output name for dead letters; without one the transform refuses to build."""
    output = (error_handling or {}).get("output")
    if not output:
        raise ValueError(
            f"{transform} needs error_handling: {{output: <name>}}: its dead letters (events "
            "that cannot be decoded or scored, with the raw payload) must go somewhere, e.g. "
            "a WriteKafka to a dead-letter topic"
        )
    return output


def read_kafka(
    bootstrap_servers: str,
    topic: str,
    group_id: str | None = None,
    start: str = "committed",
    stop: str = "unbounded",
    max_records: int | None = None,
    kafka_config: Mapping[str, str] | None = None,
) -> beam.PTransform:
    """Read a Kafka topic as KafkaRecords (event time = the Kafka timestamp).

    Offsets are committed to the group once the records' outputs are durably written.

    Args:
        bootstrap_servers: host:port list of the brokers.
        topic: the topic read.
        group_id: consumer group resumed from and committed to.
        start: committed, earliest or latest.
        stop: unbounded (a stream; run with --streaming) or end_at_launch (the backlog, then
            the pipeline ends).
        max_records: stop after this many records.
        kafka_config: further librdkafka settings (secrets as env:VAR or file:/path).
    """
    if start == "committed" and group_id is None:
        start = "earliest"  # nothing to resume from without a group
    return ReadFromKafka(
        _kafka_config(bootstrap_servers, kafka_config),
        topic,
        group_id=group_id,
        start=start,
        stop=stop,
        max_records=max_records,
        topics_option="topic",
    )


class _DecodeEvents(beam.PTransform):
    def __init__(self, decode: DecodeAndValidate, dead_letters: str) -> None:
        super().__init__()
        self._decode = decode
        self._dead_letters = dead_letters

    def expand(self, records: beam.PCollection) -> dict[str, beam.PCollection]:
        result = records | "Decode" >> self._decode
        return {"events": result.rows, self._dead_letters: result.dead_letters}


def decode_events(
    schema_path: str,
    format: str = "JSON",  # noqa: A002 - Beam YAML's name for it (ReadFromKafka's `format`)
    unknown_fields: str = "reject",
    max_message_bytes: int = 1_000_000,
    error_handling: Mapping[str, str] | None = None,
) -> beam.PTransform:
    """Decode and validate KafkaRecords against a declared schema.

    Outputs ``events`` (``(record, row)`` pairs for ScoreEvents) and, under the name given in
    ``error_handling.output``, a DeadLetter for each message that does not decode or validate.

    Args:
        schema_path: the row schema (JSON), e.g. transforms/decoding/schemas/creditcard.json.
        format: JSON or AVRO (schemaless records written with the schema).
        unknown_fields: reject (dead letter) or ignore.
        max_message_bytes: longer messages are dead-lettered before decoding.
        error_handling: {output: <name>} for the dead letters (required).
    """
    decode = DecodeAndValidate(
        RowSchema.load(schema_path),
        format,
        unknown_fields=unknown_fields,
        max_message_bytes=max_message_bytes,
    ).with_records()
    return _DecodeEvents(decode, _dead_letter_output(error_handling, "DecodeEvents"))


class _ScoreEvents(beam.PTransform):
    def __init__(self, score: ScoreEvents, dead_letters: str) -> None:
        super().__init__()
        self._score = score
        self._dead_letters = dead_letters

    def expand(self, pairs: beam.PCollection) -> dict[str, beam.PCollection]:
        result = pairs | "Score" >> self._score
        return {
            "predictions": result.predictions,
            "alerts": result.alerts,
            self._dead_letters: result.dead_letters,
        }


def score_events(
    model_path: str,
    threshold: float | None = None,
    poll_seconds: float = 30.0,
    max_batch_wait_s: float = 0.05,
    error_handling: Mapping[str, str] | None = None,
) -> beam.PTransform:
    """Score decoded events with the newest model under model_path (newer versions are picked up
    while running).

    Outputs ``predictions`` (one per event), ``alerts`` (the anomalies among them) and, under
    the name given in ``error_handling.output``, a DeadLetter per event that cannot be scored.

    Args:
        model_path: directory of versioned SavedModels (local or gs://).
        threshold: overrides the model's anomaly threshold.
        poll_seconds: how often model_path is checked for a new version.
        max_batch_wait_s: longest an event waits for its batch (latency of a stream).
        error_handling: {output: <name>} for the dead letters (required).
    """
    info = read_model_info(latest_version(model_path).path)  # fails fast on a bad path
    handler = SavedModelHandler(model_path, threshold=threshold, poll_seconds=poll_seconds)
    score = ScoreEvents(
        handler,
        id_field=info.id_field or _DEFAULT_ID_FIELD,
        max_batch_wait_s=max_batch_wait_s,
    )
    return _ScoreEvents(score, _dead_letter_output(error_handling, "ScoreEvents"))


def _key(element: Any) -> bytes | None:
    return getattr(element, "key", None)


def _value(element: Any) -> bytes | str | None:
    """A Prediction as its JSON; a record or row with a value field as that value."""
    if isinstance(element, Prediction):
        return element.to_json()
    if isinstance(element, DeadLetter) or not hasattr(element, "value"):
        raise TypeError(
            "WriteKafka writes Predictions, or records/rows with key and value fields (dead "
            f"letters go to WriteDeadLetters); got {type(element).__name__}"
        )
    return element.value


def write_kafka(
    bootstrap_servers: str,
    topic: str,
    kafka_config: Mapping[str, str] | None = None,
) -> beam.PTransform:
    """Write to a Kafka topic: Predictions as JSON (keyed by the input event's key), records or
    rows with key and value fields as they are.

    A bundle succeeds only once Kafka acknowledged all of its messages (at-least-once).

    Args:
        bootstrap_servers: host:port list of the brokers.
        topic: the topic written.
        kafka_config: further librdkafka settings (secrets as env:VAR or file:/path).
    """
    return WriteToKafka(
        _kafka_config(bootstrap_servers, kafka_config), topic, key_fn=_key, value_fn=_value
    )


class _WriteDeadLetters(beam.PTransform):
    def __init__(self, fit: FitDeadLetters, write: WriteToKafka) -> None:
        super().__init__()
        self._fit = fit
        self._write = write

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | "Fit" >> self._fit | "Write" >> self._write


def write_dead_letters(
    bootstrap_servers: str,
    topic: str,
    max_payload_bytes: int = _DEAD_LETTER_MAX_PAYLOAD_BYTES,
    kafka_config: Mapping[str, str] | None = None,
) -> beam.PTransform:
    """Write DeadLetters to a Kafka topic as JSON (raw payload in base64, keyed like the input
    event), each cut to fit the topic's record limit so no letter can fail the write.

    Args:
        bootstrap_servers: host:port list of the brokers.
        topic: the dead-letter topic.
        max_payload_bytes: the most payload a letter keeps.
        kafka_config: further librdkafka settings (secrets as env:VAR or file:/path).
    """
    config = _kafka_config(bootstrap_servers, kafka_config)
    fit = FitDeadLetters(
        max_payload_bytes,
        limit=TopicRecordLimit(config, topic),
        record_bytes=kafka_dead_letter_bytes,
    )
    return _WriteDeadLetters(
        fit, WriteToKafka(config, topic, key_fn=_key, value_fn=DeadLetter.to_json)
    )
