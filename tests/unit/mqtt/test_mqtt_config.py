"""MqttConfig: broker URLs, persistent-session checks, secrets never shown."""

from __future__ import annotations

import pickle

import pytest

from transforms.mqtt import MqttConfig, MqttConfigError


def test_urls() -> None:
    plain = MqttConfig.from_url("mqtt://broker:1884", client_id="b")
    assert (plain.host, plain.port, plain.tls) == ("broker", 1884, False)
    secure = MqttConfig.from_url("mqtts://broker", client_id="b")
    assert (secure.port, secure.tls, secure.url) == (8883, True, "mqtts://broker:8883")
    assert MqttConfig.from_url("127.0.0.1:1883", client_id="b").port == 1883


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://broker:1883", "scheme"),
        ("mqtt://user:pw@broker:1883", "credentials go in their own settings"),
        ("mqtt://broker:99999", "Port out of range|port"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(MqttConfigError, match=message):
        MqttConfig.from_url(url, client_id="b")


def test_a_persistent_session_needs_a_client_id_and_an_expiry() -> None:
    with pytest.raises(MqttConfigError, match="client id"):
        MqttConfig("h")
    with pytest.raises(MqttConfigError, match="session expiry 0"):
        MqttConfig("h", client_id="b", session_expiry_s=0)
    MqttConfig("h", client_id="b", protocol="3.1.1", session_expiry_s=0)  # the broker's own


def test_password_is_never_shown_and_resolved_on_the_worker(monkeypatch) -> None:
    config = MqttConfig.from_options(
        {"mqttBroker": "mqtt://h:1", "mqttUsername": "u", "mqttPassword": "s3cret"},
        client_id="b",
    )
    assert "s3cret" not in repr(config) and "s3cret" not in repr(pickle.loads(pickle.dumps(config)))
    monkeypatch.setenv("MQTT_PW", "from-env")
    config = MqttConfig("h", client_id="b", username="u", password="env:MQTT_PW")
    client = config.new_client()
    assert client._password == b"from-env"


def test_password_needs_a_username() -> None:
    with pytest.raises(MqttConfigError, match="needs a username"):
        MqttConfig("h", client_id="b", password="x")


def test_from_options_needs_a_broker() -> None:
    with pytest.raises(MqttConfigError, match="--mqttBroker"):
        MqttConfig.from_options({}, client_id="b")
