"""The demo's two use cases: what differs between card transactions and connected-car sensors.

``cards`` produces credit-card transactions straight into Kafka; ``cars`` has the simulated cars
publish sensor readings over MQTT (``<root>/cars/<car_id>/sensors``), bridged into Kafka by
``pipelines.mqtt_to_kafka`` — the ingestion path of the connected-car design. Everything after
Kafka (export, training, live scoring, the summary) is the same code for both.
"""

from __future__ import annotations

import dataclasses

__all__ = ["UseCase", "USE_CASES"]


@dataclasses.dataclass(frozen=True)
class UseCase:
    """One use case of the demo.

    Attributes:
        name: ``--use-case`` value.
        kind: ``generate_events --kind``.
        schema: bundled schema name (``transforms/decoding/schemas/<schema>.json``).
        label: 0/1 label field the export keeps and the trainer evaluates against.
        anomaly_rate_option: the generator's option for the share of anomalies.
        entity: what an alert is about (its Kafka key), for the live display.
        events_noun: what the events are called in the step titles.
        via_mqtt: events are published to MQTT and bridged into Kafka.
    """

    name: str
    kind: str
    schema: str
    label: str
    anomaly_rate_option: str
    entity: str
    events_noun: str
    via_mqtt: bool


USE_CASES: dict[str, UseCase] = {
    case.name: case
    for case in (
        UseCase(
            name="cards",
            kind="creditcard",
            schema="creditcard",
            label="Class",
            anomaly_rate_option="fraudRate",
            entity="card",
            events_noun="transactions",
            via_mqtt=False,
        ),
        UseCase(
            name="cars",
            kind="car_sensor",
            schema="car_sensor",
            label="is_anomaly",
            anomaly_rate_option="anomalyRate",
            entity="car",
            events_noun="car sensor readings",
            via_mqtt=True,
        ),
    )
}
