"""Pipeline options declared once: argparse flags, validation and template metadata come from here.

Each pipeline module lists its :class:`Option` declarations (composing the shared groups below)
and builds its ``PipelineOptions`` class with :func:`options_class`. The Flex Template
``metadata.json`` files are generated from the same lists, so the two cannot drift.

Usage::

    OPTIONS = (*KAFKA_SOURCE, Option("outputTableSpec", "Output table", "…", required=True))
    KafkaToBigQueryOptions = options_class("KafkaToBigQueryOptions", OPTIONS)
    opts = parse_and_validate(argv, KafkaToBigQueryOptions, OPTIONS)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.kafka.config import redact_option_values

__all__ = [
    "Option",
    "OptionError",
    "options_class",
    "validate",
    "parse_and_validate",
    "KAFKA_CONNECTION",
    "KAFKA_SOURCE",
    "GCP_ENDPOINTS",
    "MQTT_CONNECTION",
]


class OptionError(ValueError):
    """A bad option value; the message names the flag so users can fix it before any work starts."""


@dataclasses.dataclass(frozen=True)
class Option:
    """One pipeline option: the flag ``--name`` and its template parameter ``name``.

    ``regexes`` must fully match the value (Dataflow semantics); ``example`` must satisfy them
    (checked by tests). ``param_type`` is the Dataflow ``ParameterType`` name where one applies
    (``"BIGQUERY_TABLE"``, ``"GCS_WRITE_FOLDER"``, ``"KAFKA_TOPIC"`` …). ``secret`` options are
    redacted wherever options are shown.
    """

    name: str
    label: str
    help: str
    type: type = str
    required: bool = False
    default: Any = None
    regexes: tuple[str, ...] = ()
    example: str | None = None
    choices: tuple[str, ...] | None = None
    param_type: str | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def check(self, value: Any) -> None:
        """Raise :class:`OptionError` naming the flag when ``value`` is not acceptable."""
        if value is None:
            if self.required:
                raise OptionError(f"{self.flag} is required: {self.help}")
            return
        text = str(value)
        if self.choices is not None and text not in self.choices:
            raise OptionError(
                f"{self.flag}={text!r} is not one of {', '.join(self.choices)}: {self.help}"
            )
        for pattern in self.regexes:
            if not re.fullmatch(pattern, text):
                shown = "***" if self.secret else repr(text)
                raise OptionError(f"{self.flag}={shown} does not match {pattern!r}: {self.help}")


def _str2bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def options_class(name: str, declarations: Sequence[Option]) -> type[PipelineOptions]:
    """Build a ``PipelineOptions`` subclass whose flags are exactly ``declarations``."""
    decls = tuple(declarations)
    names = [d.name for d in decls]
    if len(names) != len(set(names)):
        raise ValueError(f"{name}: duplicate option names in {names}")

    @classmethod
    def _add_argparse_args(cls, parser):  # noqa: ANN001 - Beam's hook signature
        for decl in decls:
            kind = _str2bool if decl.type is bool else decl.type
            try:
                parser.add_argument(decl.flag, type=kind, default=decl.default, help=decl.help)
            except argparse.ArgumentError:
                # Beam parses with the flags of every PipelineOptions subclass imported, so
                # pipelines sharing a group (KAFKA_SOURCE …) would collide: the first one wins.
                continue

    def display_data(self):  # noqa: ANN001, ANN202 - Beam's hook signature
        # Runners show this (Dataflow's "Pipeline options" panel): literal secrets become ***.
        return redact_option_values(PipelineOptions.display_data(self), decls)

    return type(
        name,
        (PipelineOptions,),
        {
            "_add_argparse_args": _add_argparse_args,
            "display_data": display_data,
            "DECLARATIONS": decls,
        },
    )


def validate(options: PipelineOptions, declarations: Iterable[Option]) -> dict[str, Any]:
    """Check every declared option; return their values by name. Raises :class:`OptionError`."""
    values = options.get_all_options(drop_default=False, retain_unknown_options=True)
    errors = []
    result = {}
    for decl in declarations:
        value = values.get(decl.name)
        try:
            decl.check(value)
        except OptionError as err:
            errors.append(str(err))
        result[decl.name] = value
    if errors:
        raise OptionError("invalid pipeline options:\n  " + "\n  ".join(errors))
    return result


def parse_and_validate(
    argv: Sequence[str] | None, cls: type[PipelineOptions], declarations: Sequence[Option]
) -> PipelineOptions:
    """Parse ``argv`` into ``cls`` and validate it before any pipeline work starts."""
    options = cls(list(argv) if argv is not None else None)
    validate(options, declarations)
    return options


_HOST_PORT = r"[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}"
_TOPIC = r"[A-Za-z0-9._\-]{1,249}"

#: Connection and authentication to a Kafka cluster, shared by every pipeline.
KAFKA_CONNECTION: tuple[Option, ...] = (
    Option(
        "bootstrapServers",
        "Kafka bootstrap servers",
        "Comma-separated host:port list of Kafka brokers, e.g. broker-1:9092,broker-2:9092.",
        required=True,
        regexes=(rf"{_HOST_PORT}(,{_HOST_PORT})*",),
        example="127.0.0.1:9092",
        param_type="TEXT",
    ),
    Option(
        "securityProtocol",
        "Kafka security protocol",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        default="PLAINTEXT",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        example="SASL_SSL",
    ),
    Option(
        "saslMechanism",
        "SASL mechanism",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL security protocol).",
        choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        example="SCRAM-SHA-512",
    ),
    Option("saslUsername", "SASL username", "Username for SASL authentication.", example="svc"),
    Option(
        "saslPassword",
        "SASL password",
        "SASL password given as env:VARIABLE or file:/path (a literal value is accepted but "
        "then lives in the job's options). Never logged.",
        example="env:KAFKA_PASSWORD",
        secret=True,
    ),
    Option(
        "sslCaLocation",
        "CA certificate file",
        "Path of the CA certificate (PEM) that signs the brokers' certificates.",
        example="/etc/ssl/certs/kafka-ca.pem",
    ),
    Option(
        "kafkaConfig",
        "Extra client settings",
        "Additional librdkafka settings as key=value pairs separated by ';', "
        "e.g. receive.message.max.bytes=2147483647;fetch.queue.backoff.ms=100.",
        regexes=(r"[A-Za-z0-9_.\-]+=[^;]*(;[A-Za-z0-9_.\-]+=[^;]*)*",),
        example="client.id=fraud-scorer;fetch.queue.backoff.ms=100",
    ),
)

#: Reading a topic: connection, topic, group, start position, progress log and stall watchdog.
KAFKA_SOURCE: tuple[Option, ...] = (
    *KAFKA_CONNECTION,
    Option(
        "inputTopic",
        "Input Kafka topic",
        "Kafka topic to read events from.",
        required=True,
        regexes=(_TOPIC,),
        example="transactions",
        param_type="KAFKA_TOPIC",
    ),
    Option(
        "consumerGroupId",
        "Consumer group id",
        "Consumer group whose committed offsets are resumed from and committed to after output "
        "is durably written.",
        regexes=(r"[A-Za-z0-9._\-]{1,255}",),
        example="fraud-export",
    ),
    Option(
        "startOffset",
        "Start position",
        "Where to start when the group has no committed offset: earliest, latest, committed, or "
        "an RFC 3339 time such as 2026-11-01T00:00:00Z.",
        default="committed",
        regexes=(
            r"earliest|latest|committed|"
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
        ),
        example="2026-11-01T00:00:00Z",
    ),
    Option(
        "workUnitRecords",
        "Offsets per work unit (batch)",
        "A batch read on a distributed runner (Dataflow, Flink, Spark, Dask) is planned at "
        "launch and cut into work units of at most this many offsets, read in parallel (several "
        "per partition). Ignored by streaming reads and by the local runner.",
        type=int,
        default=100_000,
        regexes=(r"[1-9][0-9]{0,9}",),
        example="100000",
    ),
    Option(
        "outageReplaySeconds",
        "Replay after a broker outage",
        "After a Kafka broker outage the read restarts from the last commit made this many "
        "seconds before the outage was noticed: a broker that persists by snapshot (the local "
        "stack's) can come back without outputs it had acknowledged. 0 on a cluster whose "
        "acknowledged writes survive restarts (acks=all, replicated).",
        type=int,
        default=60,
        regexes=(r"0|[1-9][0-9]{0,5}",),
        example="60",
    ),
    Option(
        "progressSeconds",
        "Progress log interval",
        "Seconds between progress log lines (records consumed, written and dead-lettered, lag "
        "and committed offset per partition). 0 turns them off.",
        type=int,
        default=60,
        regexes=(r"0|[1-9][0-9]{0,5}",),
        example="60",
    ),
    Option(
        "stallTimeoutSeconds",
        "Stall timeout",
        "When partitions have lag but no record was consumed or written and no offset moved for "
        "this many seconds, log why and exit with status 3 so a supervisor restarts the "
        "pipeline. Watches the workers running in the launching process (local runners). 0 "
        "turns it off.",
        type=int,
        default=300,
        regexes=(r"0|[1-9][0-9]{0,5}",),
        example="300",
    ),
    Option(
        "metricsPort",
        "Prometheus metrics port",
        "Serve the progress counters (records consumed, written, dead-lettered, predictions, "
        "alerts) and the lag per partition for Prometheus on this port at /metrics while a "
        "local pipeline runs. Unset or 0: off. On Dataflow they are Beam metrics instead.",
        type=int,
        regexes=(r"0|[1-9][0-9]{0,4}",),
        example="9464",
    ),
    Option(
        "metricsHost",
        "Prometheus metrics address",
        "Address the metrics endpoint binds (it has no authentication): 127.0.0.1 keeps it on "
        "this machine; 0.0.0.0 exposes it to the network.",
        default="127.0.0.1",
        regexes=(r"[A-Za-z0-9_.\-:]+",),
        example="127.0.0.1",
    ),
)

#: Where BigQuery and Cloud Storage are (``transforms.sinks.gcp_endpoints.GcpEndpoints``). The
#: project is
#: Beam's own ``--project``. Unset: Google Cloud, or the *_EMULATOR_HOST env vars.
GCP_ENDPOINTS: tuple[Option, ...] = (
    Option(
        "bigqueryEndpoint",
        "BigQuery endpoint",
        "BigQuery API root. http:// means an emulator (anonymous credentials), e.g. "
        "http://127.0.0.1:9050; https:// uses Application Default Credentials. Default: "
        "BIGQUERY_EMULATOR_HOST if set, else Google's endpoint.",
        regexes=(r"https?://[A-Za-z0-9_.\-\[\]:]+(:[0-9]{1,5})?/?",),
        example="http://127.0.0.1:9050",
    ),
    Option(
        "storageEndpoint",
        "Cloud Storage emulator endpoint",
        "Cloud Storage emulator for local runs, e.g. http://127.0.0.1:9023 (Beam's gs:// "
        "filesystem can only be redirected to an emulator). Default: STORAGE_EMULATOR_HOST if "
        "set, else Google Cloud Storage.",
        regexes=(r"http://[A-Za-z0-9_.\-\[\]:]+(:[0-9]{1,5})?/?",),
        example="http://127.0.0.1:9023",
    ),
)

#: An MQTT broker and the credentials to connect (``transforms.mqtt.config.MqttConfig``).
MQTT_CONNECTION: tuple[Option, ...] = (
    Option(
        "mqttBroker",
        "MQTT broker URL",
        "mqtt://host:port (plain TCP) or mqtts://host:port (TLS) of the MQTT broker.",
        regexes=(r"(mqtts?|tcp|ssl)://[A-Za-z0-9_.\-\[\]:]+(:[0-9]{1,5})?",),
        example="mqtt://127.0.0.1:1883",
    ),
    Option("mqttUsername", "MQTT username", "User name for the MQTT broker.", example="bridge"),
    Option(
        "mqttPassword",
        "MQTT password",
        "MQTT password given as env:VARIABLE or file:/path (a literal value is accepted but "
        "then lives in the job's options). Never logged.",
        example="env:MQTT_PASSWORD",
        secret=True,
    ),
    Option(
        "mqttCaCertificate",
        "MQTT CA certificate file",
        "PEM file of the CA that signs the broker's certificate (mqtts://); default: the "
        "system's trust store.",
        example="/etc/ssl/certs/mqtt-ca.pem",
    ),
    Option(
        "mqttProtocol",
        "MQTT protocol version",
        "5 (persistent session with a session expiry and a large receive window) or 3.1.1 "
        "(clean_session=false; the broker's settings bound the session and the window).",
        default="5",
        choices=("5", "3.1.1"),
        example="3.1.1",
    ),
)
