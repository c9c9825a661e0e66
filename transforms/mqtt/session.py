"""MqttSession: one subscriber connection whose messages are acknowledged only when told to.

paho's network thread receives PUBLISH packets into a queue; the reader takes them from the queue
and, once the bundle that emitted them is durable, calls :meth:`MqttSession.ack`. Until then the
broker keeps each QoS 1 message in the session and sends it again after a reconnect: nothing is
lost when the pipeline dies between receiving and writing.

Why the *connection generation*: MQTT brokers resend unacknowledged messages only when the client
reconnects, and with the same packet ids. An ack for a message received on an earlier connection
could then hit a different, newer message that reuses its id. So every record remembers the
connection it came on, and acks for an older connection are not sent (the broker resent those
messages; their new copies get acked). :meth:`MqttSession.reconnect` is how the reader gets the
messages of a bundle that never finished back.

Only one session per client id lives in a process (:func:`open_session` closes the previous one):
two clients with one id would take the broker-side session from each other in a loop.

Usage::

    session = open_session(config, ["cars/+/sensors"], qos=1)
    records = session.take(500, timeout_s=0.1)
    ...                                   # write them durably
    session.ack(records)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from transforms.kafka.config import KafkaConfigError
from transforms.mqtt.config import MqttConfig

__all__ = [
    "MqttRecord",
    "MqttSession",
    "MqttConnectError",
    "MqttPermanentError",
    "open_session",
    "close_session",
    "end_session",
]

_LOGGER = logging.getLogger(__name__)

ClientFactory = Callable[[MqttConfig], Any]

#: CONNACK / SUBACK reason codes no retry fixes (MQTT 5 values; 3.1.1's are mapped onto them).
_PERMANENT_REASONS = frozenset(
    {
        "Bad user name or password",
        "Not authorized",
        "Client identifier not valid",
        "Unsupported protocol version",
        "Banned",
        "Bad authentication method",
        "Topic Filter invalid",
    }
)


class MqttConnectError(ConnectionError):
    """The broker could not be reached or did not accept the session in time."""


class MqttPermanentError(RuntimeError):
    """The broker refused the session or a subscription for a reason no retry fixes."""


@dataclasses.dataclass(frozen=True, slots=True)
class MqttRecord:
    """One received MQTT message.

    ``received_ms`` (epoch milliseconds, when this process got it) is the record's event time:
    MQTT messages carry none. ``duplicate`` is the broker's DUP flag (a resend after a
    reconnect). ``mid``/``generation`` identify it for the acknowledgement.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_ms: int
    duplicate: bool = False
    mid: int = 0
    generation: int = 0


class MqttSession:
    """A connected persistent-session subscriber and its queue of received, unread messages."""

    def __init__(
        self,
        config: MqttConfig,
        topic_filters: Sequence[str],
        *,
        qos: int = 1,
        connect_timeout_s: float = 20.0,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._filters = tuple(topic_filters)
        self._qos = qos
        self._connect_timeout_s = connect_timeout_s
        self._client_factory = client_factory or MqttConfig.new_client
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: collections.deque[MqttRecord] = collections.deque()
        self._generation = 0
        self._client: Any = None
        self._connected = threading.Event()
        self._refused: str | None = None  # why the broker refused the session (permanent)
        self._closed = False
        # Batches handed out and not acked yet: id -> (the batch, kept alive so its id stays
        # unique, and when it was taken).
        self._outstanding: dict[int, tuple[list[MqttRecord], float]] = {}

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and wait for the broker's CONNACK (raises on failure), then subscribe.

        Only the CONNACK is waited for: a resumed session's backlog arrives before the SUBACK,
        and receiving it can take longer than any timeout. A refused subscription is raised by
        the next :meth:`check`.
        """
        client = self._client_factory(self._config)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        with self._lock:
            self._generation += 1
            self._queue.clear()  # the broker resends them on this connection
            self._outstanding.clear()
            self._connected.clear()
            self._refused = None
            self._client = client
        try:
            self._config.connect(client)
        except KafkaConfigError as err:  # an unresolvable password secret
            raise MqttPermanentError(f"MQTT {self._config!r}: {err}") from None
        except OSError as err:
            raise MqttConnectError(
                f"MQTT broker {self._config.url} unreachable: {err.strerror or err}"
            ) from err
        client.loop_start()
        deadline = time.monotonic() + self._connect_timeout_s
        while not self._connected.wait(0.05):
            if self._refused is not None:
                self._stop_client(client)
                raise MqttPermanentError(f"MQTT {self._config!r}: {self._refused}")
            if time.monotonic() > deadline:
                self._stop_client(client)
                raise MqttConnectError(
                    f"MQTT broker {self._config.url} did not accept the session within "
                    f"{self._connect_timeout_s:g} s"
                )
        _LOGGER.info("MQTT %r: connected (connection %d)", self._config, self._generation)

    def reconnect(self) -> None:
        """A new connection on the same session: the broker resends every unacked message."""
        with self._lock:
            client = self._client
        if client is not None:
            self._stop_client(client)
        self.connect()

    def close(self) -> None:
        """Disconnect; the broker keeps the session (and unacked messages) for the next one."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            self._stop_client(client)

    @staticmethod
    def _stop_client(client: Any) -> None:
        try:
            client.disconnect()
        finally:
            client.loop_stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self) -> None:
        """Raise :class:`MqttPermanentError` if the broker has refused the session since."""
        if self._refused is not None:
            raise MqttPermanentError(f"MQTT {self._config!r}: {self._refused}")

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            text = str(reason_code)
            if text in _PERMANENT_REASONS:
                self._refused = f"the broker refused the connection: {text}"
            _LOGGER.warning("MQTT %r: connection refused: %s", self._config, text)
            return
        if client is not self._client:
            return
        self._connected.set()
        if self._config.protocol == "5":
            # Retain handling 1: retained messages only for a new subscription, not on every
            # reconnect of the persistent session.
            options = SubscribeOptions(qos=self._qos, retainHandling=1)
            client.subscribe([(f, options) for f in self._filters])
        else:
            client.subscribe([(f, self._qos) for f in self._filters])
        if flags.session_present:
            _LOGGER.info("MQTT %r: resumed the persistent session", self._config)

    def _on_subscribe(self, client, _userdata, _mid, reason_codes, _properties) -> None:
        failed = [
            (f, str(code))
            for f, code in zip(self._filters, reason_codes, strict=False)
            if isinstance(code, ReasonCode) and code.is_failure
        ]
        if failed:
            self._refused = "subscription refused: " + "; ".join(f"{f}: {why}" for f, why in failed)
            return
        granted = [code.value for code in reason_codes if isinstance(code, ReasonCode)]
        if granted and min(granted) < self._qos:
            _LOGGER.warning(
                "MQTT %r: the broker granted QoS %d, below the %d asked for: messages can be lost",
                self._config,
                min(granted),
                self._qos,
            )
        _LOGGER.info(
            "MQTT %r: subscribed to %s (QoS %d)", self._config, ", ".join(self._filters), self._qos
        )

    def _on_disconnect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if client is self._client and not self._closed and self._refused is None:
            _LOGGER.warning(
                "MQTT %r: disconnected (%s); reconnecting, unacked messages will be resent",
                self._config,
                reason_code,
            )
            with self._lock:
                # Acks for this connection's messages would no longer reach the broker; it
                # resends them on the next connection.
                self._generation += 1
                self._queue.clear()
                self._outstanding.clear()

    def _on_message(self, client, _userdata, message) -> None:
        with self._lock:
            if client is not self._client:
                return
            self._queue.append(
                MqttRecord(
                    message.topic,
                    message.payload,
                    message.qos,
                    bool(message.retain),
                    int(self._clock() * 1000),
                    bool(message.dup),
                    message.mid,
                    self._generation,
                )
            )
            self._lock.notify()

    # -- reading and acknowledging (reader thread) ------------------------------------------

    def take(self, max_records: int, timeout_s: float) -> list[MqttRecord]:
        """Up to ``max_records`` queued messages; waits up to ``timeout_s`` for the first."""
        with self._lock:
            if not self._queue and timeout_s > 0:
                self._lock.wait(timeout_s)
            queue = self._queue
            count = min(max_records, len(queue))
            records = [queue.popleft() for _ in range(count)]
            if records:
                self._outstanding[id(records)] = (records, self._clock())
            return records

    def unread(self, records: list[MqttRecord]) -> None:
        """Put ``records`` (just taken, not emitted) back at the head of the queue."""
        with self._lock:
            self._outstanding.pop(id(records), None)
            current = [r for r in records if r.generation == self._generation]
            self._queue.extendleft(reversed(current))

    def ack(self, records: list[MqttRecord]) -> int:
        """Acknowledge ``records`` to the broker (they are durable); returns how many were acked.

        Records of an earlier connection are skipped: the broker has resent them.
        """
        with self._lock:
            self._outstanding.pop(id(records), None)
            generation, client = self._generation, self._client
        if client is None:
            return 0
        acked = 0
        for record in records:
            if record.qos and record.generation == generation:
                client.ack(record.mid, record.qos)
                acked += 1
        return acked

    def low_watermark_ms(self) -> int:
        """Receive time no message emitted from now on can be below (epoch ms)."""
        with self._lock:
            now = int(self._clock() * 1000)
            return min(self._queue[0].received_ms, now) if self._queue else now

    def oldest_unacked_s(self) -> float:
        """Seconds since the oldest batch still waiting for its ack was taken (0 if none)."""
        with self._lock:
            if not self._outstanding:
                return 0.0
            return self._clock() - min(taken for _, taken in self._outstanding.values())

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)


_SESSIONS: dict[str, MqttSession] = {}
_SESSIONS_LOCK = threading.Lock()


def open_session(
    config: MqttConfig,
    topic_filters: Iterable[str],
    *,
    qos: int = 1,
    connect_timeout_s: float = 20.0,
    client_factory: ClientFactory | None = None,
) -> MqttSession:
    """Connect a new session for ``config.client_id``, closing this process's previous one.

    The previous one's unacked messages are resent by the broker to the new one.
    """
    session = MqttSession(
        config,
        tuple(topic_filters),
        qos=qos,
        connect_timeout_s=connect_timeout_s,
        client_factory=client_factory,
    )
    with _SESSIONS_LOCK:
        previous = _SESSIONS.pop(config.client_id, None)
    if previous is not None:
        previous.close()
    session.connect()
    with _SESSIONS_LOCK:
        _SESSIONS[config.client_id] = session
    return session


def close_session(session: MqttSession) -> None:
    """Close ``session`` and forget it (no-op if already closed)."""
    with _SESSIONS_LOCK:
        if _SESSIONS.get(session._config.client_id) is session:
            del _SESSIONS[session._config.client_id]
    session.close()


def end_session(config: MqttConfig, *, timeout_s: float = 10.0) -> None:
    """Discard ``config.client_id``'s session on the broker, with the messages queued for it.

    For a subscriber retired for good: its session would otherwise keep queuing everything its
    filters match until it expires. Raises :class:`MqttConnectError` if the broker does not answer.
    """
    client = config.new_client(clean=True)
    answered = threading.Event()
    client.on_connect = lambda *_: answered.set()
    try:
        config.connect(client, clean=True)
    except OSError as err:
        raise MqttConnectError(f"MQTT broker {config.url} unreachable: {err}") from err
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise MqttConnectError(f"MQTT broker {config.url} did not answer in {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
