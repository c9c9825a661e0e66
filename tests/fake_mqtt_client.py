"""A fake paho client: connects at once, grants subscriptions, replays messages, records acks.

Module-level state so a pipeline on the in-process FnApiRunner and the test see the same broker.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode


@dataclasses.dataclass
class FakeMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    mid: int = 0
    dup: bool = False


@dataclasses.dataclass
class FakeBroker:
    """What the fake clients share: messages to deliver, acks received, connections made."""

    messages: list[FakeMessage] = dataclasses.field(default_factory=list)
    acks: list[int] = dataclasses.field(default_factory=list)
    connections: int = 0
    refuse: str | None = None  # a CONNACK reason name, e.g. "Not authorized"


BROKER = FakeBroker()


class _Flags:
    session_present = True


class FakeClient:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.on_connect = self.on_disconnect = self.on_message = self.on_subscribe = None
        self._thread: threading.Thread | None = None

    def reconnect_delay_set(self, **_: Any) -> None:
        pass

    def connect(self, host: str, port: int, **_: Any) -> None:
        BROKER.connections += 1

    def loop_start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if BROKER.refuse:
            self.on_connect(
                self, None, _Flags(), ReasonCode(PacketTypes.CONNACK, BROKER.refuse), None
            )
            return
        self.on_connect(self, None, _Flags(), ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def subscribe(self, topics: list) -> None:
        granted = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1") for _ in topics]
        self.on_subscribe(self, None, 1, granted, None)
        for message in list(BROKER.messages):
            self.on_message(self, None, message)

    def ack(self, mid: int, qos: int) -> None:
        BROKER.acks.append(mid)

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)


def new_fake_client(config: Any) -> FakeClient:
    return FakeClient(config)


def reset(messages: list[FakeMessage], refuse: str | None = None) -> FakeBroker:
    BROKER.messages[:] = messages
    BROKER.acks.clear()
    BROKER.connections = 0
    BROKER.refuse = refuse
    return BROKER
