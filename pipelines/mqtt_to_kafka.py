"""MQTT into Kafka: a topic filter's messages → a Kafka topic, acked to the broker when durable.

``mqttTopicFilter`` (QoS 1, persistent session ``mqttClientId``) →
:class:`~transforms.mqtt.keying.MqttToKafkaMessages` (key from ``messageKey``: the MQTT topic,
one of its levels or a payload field; the MQTT topic in the ``mqtt_topic`` header; payloads
optionally validated against ``schemaPath``) → ``outputTopic``. Payloads that give no key, fail
the schema or are too big for the topic go to ``deadLetterTopic`` as ``DeadLetter.to_json()``
records with the reason and the raw payload. The broker's acknowledgement of each message is
sent only after its Kafka write was acknowledged (bundle finalization): a crash or ``kill -9``
loses nothing published with QoS 1, messages published while the bridge is down wait in its
session, and some may reach Kafka twice (at-least-once).

Run locally (streaming on the FnApiRunner; ``scripts/stack.sh env`` has the broker URLs)::

    python -m pipelines.mqtt_to_kafka --runner=FnApiRunner --streaming \\
        --mqttBroker=mqtt://127.0.0.1:1883 --mqttTopicFilter='cars/+/sensors' \\
        --mqttClientId=cars-bridge --bootstrapServers=127.0.0.1:9092 \\
        --outputTopic=car-sensors --messageKey=topic:1 --deadLetterTopic=mqtt-dead-letters

Without ``--streaming`` it bridges ``--maxMessages`` messages and ends (captures, tests).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common.options import (
    KAFKA_CONNECTION,
    MQTT_CONNECTION,
    Option,
    OptionError,
    options_class,
    parse_and_validate,
    validate,
)
from pipelines.common.row_source import ROW_SOURCE, load_schema
from pipelines.common.supervisor import run_pipeline
from pipelines.common.watchdog import watchdog_from_options
from transforms.dead_letter import DeadLetter
from transforms.kafka.config import KafkaConfig, KafkaConfigError, redact_option_values
from transforms.kafka.limits import TopicRecordLimit
from transforms.kafka.writer import WriteToKafka
from transforms.mqtt.config import MqttConfig, MqttConfigError
from transforms.mqtt.keying import BridgeResult, KeySpec, MqttToKafkaMessages
from transforms.mqtt.reader import ReadFromMqtt
from transforms.size_limits import FitDeadLetters, kafka_dead_letter_bytes

__all__ = ["OPTIONS", "MqttToKafkaOptions", "build_pipeline", "run"]

_LOGGER = logging.getLogger(__name__)

_TOPIC = r"[A-Za-z0-9._\-]{1,249}"
_FROM_ROW_SOURCE = {option.name: option for option in ROW_SOURCE}

OPTIONS: tuple[Option, ...] = (
    *KAFKA_CONNECTION,
    dataclasses.replace(MQTT_CONNECTION[0], required=True),
    Option(
        "mqttTopicFilter",
        "MQTT topic filters",
        "Comma-separated MQTT topic filters to subscribe to with QoS 1, e.g. cars/+/sensors.",
        required=True,
        regexes=(r"[^,\x00]+(,[^,\x00]+)*",),
        example="cars/+/sensors",
    ),
    Option(
        "mqttClientId",
        "MQTT client id",
        "Client id of the bridge's persistent session: messages published while the bridge is "
        "down are kept for it. One running bridge per id.",
        required=True,
        regexes=(r"[A-Za-z0-9._\-]{1,128}",),
        example="cars-bridge",
    ),
    *MQTT_CONNECTION[1:],
    Option(
        "mqttSessionExpirySeconds",
        "MQTT session expiry",
        "MQTT 5: seconds the broker keeps the session and queues messages while the bridge is "
        "disconnected (> 0).",
        type=int,
        default=7 * 24 * 3600,
        regexes=(r"[1-9][0-9]{0,9}",),
        example="604800",
    ),
    Option(
        "outputTopic",
        "Output Kafka topic",
        "Kafka topic the MQTT messages are written to (the payload unchanged, the MQTT topic in "
        "the mqtt_topic header).",
        required=True,
        regexes=(_TOPIC,),
        example="car-sensors",
        param_type="KAFKA_TOPIC",
    ),
    Option(
        "messageKey",
        "Kafka message key",
        "Where each Kafka key comes from: topic (the MQTT topic), topic:N (its level N, 0-based: "
        "topic:1 of cars/c7/sensors is c7), field:NAME (a JSON payload field; a.b for a nested "
        "one) or none.",
        default="topic",
        regexes=(r"topic|none|topic:[0-9]{1,3}|field:[A-Za-z_][A-Za-z0-9_.]*",),
        example="field:car_id",
    ),
    Option(
        "deadLetterTopic",
        "Dead-letter topic",
        "Kafka topic for messages that give no key, fail --schemaPath or are too big for the "
        "output topic, as JSON dead-letter records with the reason and the raw payload. Unset: "
        "they are counted and logged (without payload).",
        regexes=(_TOPIC,),
        example="mqtt-dead-letters",
        param_type="KAFKA_TOPIC",
    ),
    dataclasses.replace(
        _FROM_ROW_SOURCE["schemaPath"],
        required=False,
        help="Optional: payloads must be JSON rows valid against this BigQuery JSON or Avro "
        "schema (local or gs://); others are dead-lettered. The payload is forwarded unchanged.",
    ),
    _FROM_ROW_SOURCE["deadLetterMaxPayloadBytes"],
    Option(
        "maxMessages",
        "Maximum messages",
        "Batch runs only: stop after bridging this many messages.",
        type=int,
        regexes=(r"[0-9]{1,12}",),
        example="100000",
    ),
    _FROM_ROW_SOURCE["progressSeconds"],
)

MqttToKafkaOptions = options_class("MqttToKafkaOptions", OPTIONS)

#: Bundles end at least this often: the broker's acks (and so its memory) wait for them.
_BUNDLE_S = 0.25


def _log_dead_letter(letter: DeadLetter) -> None:
    _LOGGER.warning(
        "dead letter (no --deadLetterTopic): %s %s from MQTT topic %s: %s",
        letter.stage,
        letter.error_type,
        letter.topic,
        letter.error_message,
    )


def build_pipeline(p: beam.Pipeline, opts: PipelineOptions) -> BridgeResult:
    """Add the bridge to ``p``; returns the Kafka messages and dead letters (for tests)."""
    values = validate(opts, OPTIONS)
    streaming = bool(opts.view_as(StandardOptions).streaming)
    if not streaming and not values["maxMessages"]:
        raise OptionError("without --streaming, --maxMessages must say when the bridge ends")
    try:
        kafka = KafkaConfig.from_options(values)
        mqtt = MqttConfig.from_options(
            values,
            client_id=values["mqttClientId"],
            session_expiry_s=values["mqttSessionExpirySeconds"],
        )
        key_spec = KeySpec.parse(values["messageKey"])
        reader = ReadFromMqtt(
            mqtt,
            [f.strip() for f in values["mqttTopicFilter"].split(",")],
            max_records=None if streaming else values["maxMessages"],
            max_process_s=_BUNDLE_S,
        ).batched()
    except (KafkaConfigError, MqttConfigError, ValueError) as err:
        raise OptionError(str(err)) from err
    schema = load_schema(values["schemaPath"])[0] if values["schemaPath"] else None
    output = values["outputTopic"]
    bridged = (
        p
        | "ReadFromMqtt" >> reader
        | "ToKafkaMessages"
        >> MqttToKafkaMessages(
            key_spec, schema=schema, limit=TopicRecordLimit(kafka, output)
        ).batched()
    )
    _ = bridged.messages | "WriteToKafka" >> WriteToKafka(kafka, output).batched()
    dead_letter_topic = values["deadLetterTopic"]
    if dead_letter_topic:
        fit = FitDeadLetters(
            values["deadLetterMaxPayloadBytes"],
            limit=TopicRecordLimit(kafka, dead_letter_topic),
            record_bytes=kafka_dead_letter_bytes,
        )
        _ = (
            bridged.dead_letters
            | "FitDeadLetters" >> fit
            | "WriteDeadLetters"
            >> WriteToKafka(
                kafka,
                dead_letter_topic,
                key_fn=lambda letter: letter.topic,
                value_fn=DeadLetter.to_json,
            )
        )
    else:
        _ = bridged.dead_letters | "LogDeadLetters" >> beam.Map(_log_dead_letter)
    return bridged


def run(argv: Sequence[str] | None = None) -> None:
    """Parse and validate the flags, then bridge until cancelled (or ``--maxMessages``)."""
    opts = parse_and_validate(argv, MqttToKafkaOptions, OPTIONS)
    values = validate(opts, OPTIONS)
    _LOGGER.info("mqtt_to_kafka options: %s", redact_option_values(values, OPTIONS))
    run_pipeline(
        lambda p: build_pipeline(p, opts),
        opts,
        name="mqtt_to_kafka",
        watchdog=watchdog_from_options({**values, "stallTimeoutSeconds": 0}),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
