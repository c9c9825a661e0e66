"""The Flex Templates we ship: one :class:`Template` per ``templates/<name>/`` folder.

The registry is the one list the metadata generator (:mod:`pipelines.flex_template.metadata`),
the image renderer (:mod:`pipelines.flex_template.image`) and the launcher
(:mod:`pipelines.flex_template.launcher`) all read, so adding a template is one entry here.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from pipelines.common.options import Option

__all__ = ["REPO_ROOT", "TEMPLATES_DIR", "Template", "TEMPLATES", "get_template"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "templates"


@dataclasses.dataclass(frozen=True)
class Template:
    """One Flex Template: ``templates/<name>/`` launching ``<module>.run()``.

    ``name`` is also the launcher's ``NAME`` and, with ``_`` → ``-``, the image name.
    """

    name: str
    module: str
    title: str
    description: str
    streaming: bool

    @property
    def directory(self) -> Path:
        return TEMPLATES_DIR / self.name

    @property
    def metadata_path(self) -> Path:
        return self.directory / "metadata.json"

    @property
    def image_name(self) -> str:
        return self.name.replace("_", "-")

    def options(self) -> tuple[Option, ...]:
        """The pipeline's declarations (imports the pipeline module)."""
        return tuple(importlib.import_module(self.module).OPTIONS)


#: Every template we ship. Add a line here when a pipeline gains a template, then ``--write``.
#: The trainer has none: it trains in the launching process and submits no Dataflow job, which a
#: Flex Template launcher requires (see docs/templates.md).
TEMPLATES: tuple[Template, ...] = (
    Template(
        name="kafka_to_bigquery",
        module="pipelines.kafka_to_bigquery",
        title="Kafka to BigQuery",
        description=(
            "Reads a Kafka topic up to its end offsets at launch, decodes and validates each "
            "message against a row schema (JSON, Avro or Confluent wire format) and writes the "
            "rows to a BigQuery table. Messages that fail decoding or that BigQuery rejects go to "
            "a dead-letter table with their raw bytes and Kafka coordinates; offsets are "
            "committed to the consumer group only after the rows were written."
        ),
        streaming=False,
    ),
    Template(
        name="kafka_to_gcs",
        module="pipelines.kafka_to_gcs",
        title="Kafka to Cloud Storage TFRecords",
        description=(
            "Reads a Kafka topic up to its end offsets at launch, decodes and validates each "
            "message against a row schema and writes sharded tf.Example TFRecord files plus the "
            "schema (and optionally a tf.Transform artifact) to a Cloud Storage directory: the "
            "trainer's input. Rejected messages are written as JSON dead letters beside them."
        ),
        streaming=False,
    ),
    Template(
        name="kafka_to_bigquery_streaming",
        module="pipelines.kafka_to_bigquery",
        title="Kafka to BigQuery (streaming)",
        description=(
            "Continuously reads a Kafka topic, decodes and validates each message against a row "
            "schema and streams the rows into a BigQuery table with insertAll (insert ids are "
            "the Kafka coordinates, so a replay dedupes). Rejected messages go to a dead-letter "
            "table; offsets are committed to the consumer group after the rows were inserted. "
            "writeMethod FILE_LOADS is batch-only and refused here."
        ),
        streaming=True,
    ),
    Template(
        name="kafka_to_gcs_streaming",
        module="pipelines.kafka_to_gcs",
        title="Kafka to Cloud Storage TFRecords (streaming)",
        description=(
            "Continuously reads a Kafka topic, decodes and validates each message against a row "
            "schema and writes windowed tf.Example TFRecord shards to a Cloud Storage directory "
            "every windowSeconds. Rejected messages are written as JSON dead letters beside them."
        ),
        streaming=True,
    ),
    Template(
        name="score_events",
        module="pipelines.score_events",
        title="Live anomaly scoring, Kafka to Kafka",
        description=(
            "Scores every Kafka event with the newest versioned TensorFlow autoencoder under a "
            "model path and writes one JSON prediction per event to an output topic, anomalies "
            "also to an alert topic and undecodable events to a dead-letter topic. Newer model "
            "versions are picked up without a restart; offsets are committed after the outputs "
            "are written (at-least-once)."
        ),
        streaming=True,
    ),
    Template(
        name="mqtt_to_kafka",
        module="pipelines.mqtt_to_kafka",
        title="MQTT to Kafka",
        description=(
            "Subscribes to MQTT topic filters with QoS 1 on a persistent session and writes every "
            "message to a Kafka topic, keyed by the MQTT topic, one of its levels or a payload "
            "field. The broker's acknowledgement is withheld until Kafka has the record, so "
            "nothing published is lost when the job restarts (at-least-once); payloads without a "
            "key, invalid against an optional schema or too large go to a dead-letter topic."
        ),
        streaming=True,
    ),
)


def get_template(name: str) -> Template:
    """The registered template called ``name``; ``KeyError`` lists the known names."""
    for template in TEMPLATES:
        if template.name == name:
            return template
    known = ", ".join(t.name for t in TEMPLATES) or "none"
    raise KeyError(f"unknown template {name!r} (known: {known})")
