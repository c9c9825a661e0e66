"""ReadFromMqtt: an MQTT subscription as an unbounded source, acknowledged after durable output.

A splittable DoFn holds one persistent-session subscriber (:class:`~transforms.mqtt.session.
MqttSession`) and emits what it received:

* QoS 1 subscription on a persistent session: messages published while the pipeline is down are
  queued by the broker and arrive after the restart;
* the broker's PUBACK is withheld until the bundle that emitted a message is durable (a bundle
  finalizer acks it, like the Kafka reader's offset commit): a crash or ``kill -9`` before that
  leaves the message unacknowledged and the broker sends it again — **at-least-once**;
* a bundle whose acks never come (it failed) is recovered by reconnecting after
  ``redeliver_after_s``: the broker resends everything unacknowledged;
* the restriction counts records (``OffsetRange``), so ``max_records`` bounds a read for tests
  and captures; unbounded otherwise, checkpointing with ``defer_remainder`` when idle (a stateless
  chain after it streams live on the local FnApiRunner with ``--streaming``);
* event time is the time the message was received; the watermark is the receive time of the
  oldest message not yet emitted (or now when none waits).

One subscriber per client id: the read is a single element, so it runs on one worker. For more
throughput, run several pipelines with their own client ids on an MQTT 5 shared subscription
(``$share/<group>/<filter>``).

Usage::

    records = p | "ReadCars" >> ReadFromMqtt(
        MqttConfig.from_url("mqtt://broker:1883", client_id="cars-bridge"), ["cars/+/sensors"])
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.batch import Batch
from transforms.mqtt.config import MqttConfig
from transforms.mqtt.session import ClientFactory, MqttRecord, close_session, open_session

__all__ = ["ReadFromMqtt"]

_LOGGER = logging.getLogger(__name__)
_METRICS_NAMESPACE = "kafka_beam_ml.ReadFromMqtt"
_UNBOUNDED = 2**63 - 1
_RESTRICTION = beam.DoFn.RestrictionParam()  # the DoFn is its own restriction provider
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


def _check_filter(topic_filter: str) -> None:
    """MQTT topic filter rules (what the broker would refuse, refused before launch)."""
    if not topic_filter or "\x00" in topic_filter:
        raise ValueError(f"MQTT topic filter {topic_filter!r} is empty or holds a NUL")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"MQTT topic filter {topic_filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"MQTT topic filter {topic_filter!r}: '+' must be a whole level")


class _ReadMqttFn(beam.DoFn, RestrictionProvider):
    """Takes queued messages as batches; acks each batch in its bundle's finalizer.

    Its own restriction provider: records ``[0, max_records)`` of the subscription (unbounded:
    up to 2**63 - 1), claimed a batch at a time.
    """

    def __init__(
        self,
        config: MqttConfig,
        topic_filters: tuple[str, ...],
        *,
        qos: int,
        max_records: int | None,
        batch_size: int,
        poll_timeout_s: float,
        max_process_s: float,
        redeliver_after_s: float,
        connect_timeout_s: float,
        client_factory: ClientFactory | None,
    ) -> None:
        self._config = config
        self._filters = topic_filters
        self._qos = qos
        self._max_records = max_records
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._max_process_s = max_process_s
        self._redeliver_after_s = redeliver_after_s
        self._connect_timeout_s = connect_timeout_s
        self._client_factory = client_factory
        self._received = Metrics.counter(_METRICS_NAMESPACE, "messages_read")
        self._acked = Metrics.counter(_METRICS_NAMESPACE, "messages_acked")

    def initial_restriction(self, element: Any) -> OffsetRange:
        return OffsetRange(0, _UNBOUNDED if self._max_records is None else self._max_records)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        return 1  # the backlog lives in the broker and is unknown here

    def truncate(self, element: Any, restriction: OffsetRange) -> None:
        return None  # a drain stops reading; unacked messages stay with the broker

    def setup(self) -> None:
        self._session = None

    def teardown(self) -> None:
        if self._session is not None:
            close_session(self._session)
            self._session = None

    def _open(self):
        """This instance's session, (re)opened when missing or taken over by another one."""
        if self._session is None or self._session.closed:
            self._session = open_session(
                self._config,
                self._filters,
                qos=self._qos,
                connect_timeout_s=self._connect_timeout_s,
                client_factory=self._client_factory,
            )
        self._session.check()
        if self._session.oldest_unacked_s() > self._redeliver_after_s:
            _LOGGER.warning(
                "MQTT %r: a bundle's messages are still unacknowledged after %g s (it failed); "
                "reconnecting so that the broker resends them",
                self._config,
                self._redeliver_after_s,
            )
            self._session.reconnect()
        return self._session

    def process(
        self,
        element: Any,
        window=beam.DoFn.WindowParam,
        finalizer=beam.DoFn.BundleFinalizerParam,  # before the SDF params (passed by name)
        tracker=_RESTRICTION,
        watermark=_WATERMARK,
    ):
        return self._read(window, finalizer, tracker, watermark)

    def _read(self, window, finalizer, tracker, watermark):
        session = self._open()
        windows = (window,)
        restriction = tracker.current_restriction()
        position = restriction.start
        deadline = time.monotonic() + self._max_process_s
        while True:
            left = tracker.current_restriction().stop - position
            if left <= 0:
                tracker.try_claim(tracker.current_restriction().stop)  # done (max_records)
                return
            records = session.take(min(self._batch_size, left), self._poll_timeout_s)
            if records:
                if not tracker.try_claim(position + len(records) - 1):
                    session.unread(records)  # a runner checkpoint took the rest
                    return
                position += len(records)
                self._received.inc(len(records))
                progress.add(progress.CONSUMED, len(records))
                finalizer.register(functools.partial(self._ack, session, records))
                earliest = records[0].received_ms
                yield WindowedValue(Batch(records), Timestamp(micros=earliest * 1000), windows)
            if not records or time.monotonic() >= deadline:
                low = Timestamp(micros=session.low_watermark_ms() * 1000)
                current = watermark.current_watermark()
                if current is None or low > current:
                    watermark.set_watermark(low)
                tracker.defer_remainder(Duration.of(0 if records else self._poll_timeout_s))
                return

    def _ack(self, session, records: list[MqttRecord]) -> None:
        """Bundle finalizer: the records are durable downstream, so the broker may drop them."""
        self._acked.inc(session.ack(records))


class _ReadUnboundedMqttFn(_ReadMqttFn):
    """The same read marked unbounded, so runners treat its output as a stream."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: Any,
        window=beam.DoFn.WindowParam,
        finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=_RESTRICTION,
        watermark=_WATERMARK,
    ):
        return self._read(window, finalizer, tracker, watermark)


class _EmitRecordsFn(beam.DoFn):
    """Unpacks the reader's batches into records, each at its own receive time."""

    def process(self, batch: list[MqttRecord], window=beam.DoFn.WindowParam):
        windows = (window,)
        for record in batch:
            yield WindowedValue(record, Timestamp(micros=record.received_ms * 1000), windows)


class ReadFromMqtt(beam.PTransform):
    """Subscribe to MQTT topic filters; a PCollection of :class:`MqttRecord`, acked when durable.

    Args:
        config: broker, client id (the persistent session) and credentials.
        topic_filters: one filter or several (``cars/+/sensors``, ``plant/#``).
        qos: 1 (default: at-least-once) or 0 (the broker may drop messages; nothing to ack).
        max_records: stop after this many records (tests, captures); unbounded when None.
        batch_size: most messages per emitted batch.
        poll_timeout_s: how long an empty queue is waited on before checkpointing.
        max_process_s: a busy read checkpoints after this long, which bounds the bundle (and so
            the time until its messages are acknowledged).
        redeliver_after_s: messages handed out this long ago and still unacknowledged belong to
            a failed bundle: reconnect so that the broker resends them.
        connect_timeout_s: the broker must accept the session and the subscription within this.
        client_factory: ``MqttConfig -> paho client`` (tests).

    Returns:
        PCollection[MqttRecord] (``.batched()``: PCollection[Batch] of records), unbounded unless
        ``max_records`` is given.
    """

    def __init__(
        self,
        config: MqttConfig,
        topic_filters: str | Sequence[str],
        *,
        qos: int = 1,
        max_records: int | None = None,
        batch_size: int = 1000,
        poll_timeout_s: float = 0.1,
        max_process_s: float = 0.5,
        redeliver_after_s: float = 120.0,
        connect_timeout_s: float = 20.0,
        client_factory: ClientFactory | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, MqttConfig):
            raise TypeError(f"config must be an MqttConfig, got {type(config).__name__}")
        filters = (topic_filters,) if isinstance(topic_filters, str) else tuple(topic_filters)
        if not filters:
            raise ValueError("ReadFromMqtt needs at least one topic filter")
        for topic_filter in filters:
            _check_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {max_records}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._config = config
        self._filters = filters
        self._max_records = max_records
        self._fn_kwargs = {
            "qos": qos,
            "max_records": max_records,
            "batch_size": batch_size,
            "poll_timeout_s": poll_timeout_s,
            "max_process_s": max_process_s,
            "redeliver_after_s": redeliver_after_s,
            "connect_timeout_s": connect_timeout_s,
            "client_factory": client_factory,
        }
        self._emit_batches = False

    def batched(self) -> ReadFromMqtt:
        """The same read emitting each taken batch as one ``Batch`` of records."""
        clone = copy.copy(self)
        clone._emit_batches = True
        return clone

    def display_data(self) -> dict[str, Any]:
        return {
            "broker": self._config.url,
            "clientId": self._config.client_id,
            "topicFilters": ", ".join(self._filters),
            "qos": self._fn_kwargs["qos"],
        }

    def expand(self, pbegin):
        read_class = _ReadMqttFn if self._max_records is not None else _ReadUnboundedMqttFn
        client_id = self._config.client_id
        batches = (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Subscription" >> beam.Map(lambda _: client_id)
            | "ReadMessages"
            >> beam.ParDo(
                read_class(self._config, self._filters, **self._fn_kwargs)
            ).with_output_types(Batch)
        )
        if self._emit_batches:
            return batches
        return batches | "EmitRecords" >> beam.ParDo(_EmitRecordsFn()).with_output_types(MqttRecord)
