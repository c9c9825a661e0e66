"""MQTT into Beam: a persistent-session subscriber acknowledged after durable output."""

from transforms.mqtt.config import MqttConfig, MqttConfigError
from transforms.mqtt.reader import ReadFromMqtt
from transforms.mqtt.session import MqttConnectError, MqttPermanentError, MqttRecord, end_session

__all__ = [
    "MqttConfig",
    "MqttConfigError",
    "MqttConnectError",
    "MqttPermanentError",
    "MqttRecord",
    "ReadFromMqtt",
    "end_session",
]
