"""MqttConfig: where an MQTT broker is and how a persistent-session subscriber connects to it.

A frozen, picklable value (it travels to workers): the broker URL, the client id that names the
broker-side session, credentials (the password as a :class:`~transforms.kafka.config.Secret`:
``env:VAR``/``file:/path`` resolved only on the worker, never logged), TLS, the protocol version
and the session settings that make at-least-once work:

* the session is **persistent** — MQTT 5 ``clean_start=False`` with a ``Session Expiry Interval``,
  MQTT 3.1.1 ``clean_session=False`` — so QoS 1 messages published while the subscriber is away
  are queued by the broker and delivered when it comes back;
* MQTT 5 ``Receive Maximum`` asks the broker to keep up to this many unacknowledged messages in
  flight: the source acknowledges only when a bundle is durable, so a small window (Mosquitto's
  default ``max_inflight_messages`` is 20) would throttle it to a few bundles' worth.

Usage::

    config = MqttConfig.from_url("mqtt://broker:1883", client_id="cars-bridge",
                                 username="bridge", password="env:MQTT_PASSWORD")
    client = config.new_client()   # a paho client; config.connect(client) connects it
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from transforms.kafka.config import Secret

__all__ = ["MqttConfig", "MqttConfigError", "PROTOCOLS"]

#: Protocol names accepted by :class:`MqttConfig` and the paho constant each selects.
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
_MAX_RECEIVE = 65535  # MQTT 5's largest Receive Maximum (a two-byte integer)
_MAX_SESSION_EXPIRY_S = 0xFFFFFFFF  # "never expires"


class MqttConfigError(ValueError):
    """An MQTT setting is wrong; the message names it (never a secret's value)."""


@dataclasses.dataclass(frozen=True)
class MqttConfig:
    """Connection and session settings of one MQTT subscriber.

    Args:
        host: broker host name or address.
        port: broker port.
        client_id: names the broker-side session; a restarted pipeline with the same id gets
            the messages queued while it was away. Two live clients with one id take the
            session from each other: run one subscriber per id.
        tls: connect with TLS (``mqtts://``); ``ca_certificate`` is the PEM of the broker's CA
            (default: the system's trust store).
        username: optional user name.
        password: a ``Secret`` or its spec (literal, ``env:VAR``, ``file:/path``).
        protocol: ``"5"`` (default) or ``"3.1.1"``.
        session_expiry_s: MQTT 5: how long the broker keeps the session (and queues messages)
            after a disconnect. MQTT 3.1.1 sessions last until the broker's own expiry
            (Mosquitto: ``persistent_client_expiration``).
        receive_maximum: MQTT 5: unacknowledged messages the broker may have in flight.
        keepalive_s: MQTT keep-alive; a dead connection is noticed within ~1.5× this.
    """

    host: str
    port: int = 1883
    client_id: str = ""
    tls: bool = False
    ca_certificate: str | None = None
    username: str | None = None
    password: Secret | str | None = None
    protocol: str = "5"
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = _MAX_RECEIVE
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if isinstance(self.password, str):
            object.__setattr__(self, "password", Secret(self.password))
        if not self.host:
            raise MqttConfigError("the MQTT broker host is empty")
        if not 0 < self.port < 65536:
            raise MqttConfigError(f"MQTT broker port {self.port} is not a port number")
        if not self.client_id or len(self.client_id.encode("utf-8")) > 65535:
            raise MqttConfigError(
                "a persistent MQTT session needs a client id (1 to 65535 bytes of UTF-8)"
            )
        if self.protocol not in PROTOCOLS:
            raise MqttConfigError(
                f"MQTT protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}"
            )
        if not 0 <= self.session_expiry_s <= _MAX_SESSION_EXPIRY_S:
            raise MqttConfigError(f"session expiry {self.session_expiry_s} s is out of range")
        if self.protocol == "5" and self.session_expiry_s == 0:
            raise MqttConfigError(
                "session expiry 0 ends the session at every disconnect: messages published "
                "while the pipeline is down would be lost"
            )
        if not 0 < self.receive_maximum <= _MAX_RECEIVE:
            raise MqttConfigError(f"receive maximum must be 1..{_MAX_RECEIVE}")
        if self.password is not None and not self.username:
            raise MqttConfigError("an MQTT password needs a username")

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> MqttConfig:
        """``mqtt://host[:port]`` (``tcp://``) or ``mqtts://host[:port]`` (``ssl://``, TLS)."""
        parsed = urllib.parse.urlsplit(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in _SCHEMES:
            raise MqttConfigError(
                f"MQTT broker URL {url!r}: the scheme must be one of {', '.join(_SCHEMES)}"
            )
        if parsed.username or parsed.password or parsed.path not in ("", "/"):
            raise MqttConfigError(
                f"MQTT broker URL {parsed.scheme}://{parsed.hostname}: give only host and port "
                "(credentials go in their own settings)"
            )
        try:
            port = parsed.port or _SCHEMES[parsed.scheme]
        except ValueError as err:
            raise MqttConfigError(f"MQTT broker URL {url!r}: {err}") from None
        return cls(
            host=parsed.hostname or "",
            port=port,
            tls=parsed.scheme in ("mqtts", "ssl"),
            **settings,
        )

    @classmethod
    def from_options(cls, values: Mapping[str, Any], **settings: Any) -> MqttConfig:
        """From the ``MQTT_CONNECTION`` pipeline options (``mqttBroker``, ``mqttUsername`` …)."""
        url = values.get("mqttBroker")
        if not url:
            raise MqttConfigError("--mqttBroker is required: the MQTT broker's mqtt://host:port")
        return cls.from_url(
            url,
            username=values.get("mqttUsername") or None,
            password=values.get("mqttPassword") or None,
            ca_certificate=values.get("mqttCaCertificate") or None,
            protocol=values.get("mqttProtocol") or "5",
            **settings,
        )

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def new_client(self, *, clean: bool = False) -> mqtt.Client:
        """A paho client for this session with manual acknowledgements (not connected yet).

        ``clean``: for a connection that ends the session (MQTT 3.1.1 decides at construction).
        Resolves the password: call it on the worker.
        """
        protocol = PROTOCOLS[self.protocol]
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if protocol == mqtt.MQTTv5 else clean,
            manual_ack=True,
        )
        if self.username:
            password = self.password.reveal() if self.password is not None else None
            client.username_pw_set(self.username, password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_certificate, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        return client

    def connect(self, client: mqtt.Client, *, clean: bool = False) -> None:
        """Open the persistent session (blocking TCP connect; the CONNACK comes to the loop).

        ``clean`` starts afresh and lets the session end with the connection instead.
        """
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0 if clean else self.session_expiry_s
            properties.ReceiveMaximum = self.receive_maximum
            client.connect(
                self.host,
                self.port,
                keepalive=self.keepalive_s,
                clean_start=clean,
                properties=properties,
            )
        else:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)

    def __repr__(self) -> str:
        user = f", username={self.username!r}" if self.username else ""
        return f"MqttConfig({self.url}, client_id={self.client_id!r}{user})"
