"""WriteToKafka: a pure-Python Kafka sink on confluent-kafka (no JVM, no expansion service).

Each worker process keeps one idempotent producer per :class:`KafkaConfig` and reuses it across
bundles and DoFn instances. Every bundle is flushed in ``finish_bundle`` and fails (raises
:class:`KafkaWriteError`) if any of its messages was not acknowledged, so the runner retries the
bundle: messages are never silently lost (at-least-once; a retried bundle may write duplicates).

A *fatal* producer error makes the client unusable. For this idempotent producer it means the
broker lost the producer's state — the "out of order sequence number" after a broker restart —
and so, on a broker that restarts without everything it acknowledged, possibly records too. The
bundle then fails at once (not after ``message.timeout.ms``) and the failed producer is dropped:
the retried bundle (Dataflow, Flink) or the restarted local stream
(:mod:`pipelines.common.supervisor`) gets a new one and redoes the work from the committed
offsets, including records the broker lost. Transient broker errors stay librdkafka's to retry.

Usage::

    alerts | "PublishAlerts" >> WriteToKafka(
        config, "fraud-alerts", key_fn=lambda a: a["event_id"], value_fn=json.dumps
    )

``WriteToKafka(...).batched()`` takes lists instead and writes each item, e.g. the prediction
batches of ``ScoreEvents(...).batched()``.

Without ``key_fn``/``value_fn`` the elements are ``(key, value)`` pairs or records with ``key``,
``value`` and optional ``headers`` attributes (such as :class:`KafkaRecord`). Keys and values
may be ``bytes`` or ``str`` (UTF-8); a ``None`` key lets the partitioner spread messages and a
``None`` value is a tombstone.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import logging
import threading
import time
import types
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

import apache_beam as beam
import confluent_kafka
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.kafka.config import KafkaConfig

__all__ = ["WriteToKafka", "KafkaWriteResult", "KafkaWriteError", "PRODUCER_DEFAULTS"]

_LOGGER = logging.getLogger(__name__)

#: Producer settings applied unless the config overrides them. ``murmur2_random`` places keyed
#: messages on the same partitions as the Java client (and Kafka Streams / ksqlDB), which
#: librdkafka's own default (``consistent_random``, CRC32) does not.
PRODUCER_DEFAULTS: Mapping[str, str] = types.MappingProxyType(
    {"enable.idempotence": "true", "acks": "all", "partitioner": "murmur2_random"}
)
_METRICS_NAMESPACE = "kafka_beam_ml.WriteToKafka"
_DEFAULT_MESSAGE_TIMEOUT_MS = 300_000  # librdkafka's message.timeout.ms default
_FLUSH_MARGIN_S = 10.0  # beyond message.timeout.ms every message has had its delivery report
_FLUSH_SLICE_S = 0.5  # a flush waits this long at most before looking for a fatal error again
_MAX_REPORTED_ERRORS = 5

Element = Any
_MISSING = object()
ProducerFactory = Callable[[dict[str, Any]], Any]


class KafkaWriteError(IOError):
    """Messages of a bundle were not acknowledged by Kafka; the bundle must be retried."""


@dataclasses.dataclass(frozen=True)
class KafkaWriteResult:
    """What one bundle wrote: emitted once per successfully flushed bundle.

    ``bytes`` counts message values (what ``len(message)`` reports), not keys or headers.
    """

    topic: str
    messages: int
    bytes: int


class _SharedProducer:
    """A producer shared by every DoFn instance of a process; remembers a fatal client error."""

    def __init__(self, settings: dict[str, Any], factory: ProducerFactory) -> None:
        self.fatal: confluent_kafka.KafkaError | None = None
        self.producer = factory({**settings, "error_cb": self._on_error, "logger": _LOGGER})

    def _on_error(self, err: confluent_kafka.KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            _LOGGER.error("Kafka producer fatal error: %s", err)
        else:  # librdkafka logs these itself (through _LOGGER) and retries
            _LOGGER.debug("Kafka producer error: %s", err)


def _new_producer(settings: dict[str, Any]) -> confluent_kafka.Producer:
    # A module function, not the class itself: cloudpickle cannot pickle the C type by reference.
    return confluent_kafka.Producer(settings)


_PRODUCERS: dict[Hashable, _SharedProducer] = {}
_PRODUCERS_LOCK = threading.Lock()


def _shared_producer(config: KafkaConfig, factory: ProducerFactory) -> _SharedProducer:
    """The process-wide producer for ``config``, built on first use (secrets resolved here)."""
    with _PRODUCERS_LOCK:
        shared = _PRODUCERS.get((config, factory))
        if shared is None:
            settings = {**PRODUCER_DEFAULTS, **config.producer_dict()}
            shared = _SharedProducer(settings, factory)
            _PRODUCERS[(config, factory)] = shared
            _LOGGER.info("Kafka producer created for %s", config)
        return shared


def _evict_producer(config: KafkaConfig, factory: ProducerFactory, failed: _SharedProducer) -> None:
    """Drop a producer after a fatal error, so the retried bundle builds a fresh one.

    Its queue is purged: those messages can never be delivered (their bundles fail and redo).
    """
    with _PRODUCERS_LOCK:
        if _PRODUCERS.get((config, factory)) is failed:
            del _PRODUCERS[(config, factory)]
            purge = getattr(failed.producer, "purge", None)
            if purge is not None:
                purge()


def _flush_timeout_s(config: KafkaConfig) -> float:
    extra = config.extra
    timeout_ms = extra.get("delivery.timeout.ms") or extra.get("message.timeout.ms")
    return int(timeout_ms or _DEFAULT_MESSAGE_TIMEOUT_MS) / 1000 + _FLUSH_MARGIN_S


def _message_parts(element: Element) -> tuple[Any, Any, list[tuple[str, Any]] | None]:
    """(key, value, headers) of a ``(key, value)`` pair or a record-like element."""
    # ``type(...) is tuple`` first: the common case, cheaper than isinstance with a union.
    if (type(element) is tuple or isinstance(element, tuple | list)) and len(element) == 2:
        return element[0], element[1], None
    value = getattr(element, "value", _MISSING)
    if value is _MISSING:
        raise TypeError(
            "WriteToKafka expects (key, value) pairs or records with key/value/headers "
            f"attributes, got {type(element).__name__}; pass key_fn/value_fn to convert it"
        )
    headers = getattr(element, "headers", None)
    return getattr(element, "key", None), value, list(headers) if headers else None


def _fatal_kafka_error(err: BaseException | None) -> confluent_kafka.KafkaError | None:
    """The fatal ``KafkaError`` behind ``err`` (itself or what it was raised from), if any."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, confluent_kafka.KafkaException) and err.args:
            error = err.args[0]
            if isinstance(error, confluent_kafka.KafkaError) and (
                error.fatal() or error.code() == confluent_kafka.KafkaError._FATAL
            ):
                return error
        err = err.__cause__ or err.__context__
        seen += 1
    return None


class _Deliveries:
    """Delivery reports of one bundle.

    Callbacks run in whichever thread serves the shared producer — and after a fatal error,
    when librdkafka purges its queue, possibly while another thread is inside ``flush``. So
    they take no lock (a lock here deadlocked a scorer after a broker restart): each report is
    one list append, atomic under the GIL, and the counts are the lists' lengths. A fresh
    object per bundle keeps late reports of a failed bundle out of the next one.
    """

    __slots__ = ("produced", "acked_sizes", "errors")

    def __init__(self) -> None:
        self.produced = 0  # written only by the bundle's own thread
        self.acked_sizes: list[int] = []
        self.errors: list[confluent_kafka.KafkaError] = []

    def on_delivery(self, err: confluent_kafka.KafkaError | None, msg: Any) -> None:
        if err is None:
            self.acked_sizes.append(len(msg))
        else:
            self.errors.append(err)

    @property
    def acked(self) -> int:
        return len(self.acked_sizes)

    @property
    def acked_bytes(self) -> int:
        return sum(self.acked_sizes)

    @property
    def failed(self) -> int:
        return len(self.errors)

    def pending(self) -> int:
        return self.produced - len(self.acked_sizes) - len(self.errors)

    def describe_failures(self) -> tuple[int, str]:
        """How many deliveries failed, and the first few distinct errors with their counts."""
        errors = list(self.errors)
        counts = collections.Counter(f"{err.name()}: {err.str()}" for err in errors)
        shown = itertools.islice(counts.items(), _MAX_REPORTED_ERRORS)
        return len(errors), "; ".join(f"{text} (x{n})" for text, n in shown)


class _ProduceFn(beam.DoFn):
    """Produces each element; flushes and checks every delivery report at the end of a bundle."""

    def __init__(
        self,
        config: KafkaConfig,
        topic: str,
        key_fn: Callable[[Element], Any] | None,
        value_fn: Callable[[Element], Any] | None,
        headers_fn: Callable[[Element], Any] | None,
        producer_factory: ProducerFactory,
    ) -> None:
        self._config = config
        self._topic = topic
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._headers_fn = headers_fn
        self._producer_factory = producer_factory
        self._written = Metrics.counter(_METRICS_NAMESPACE, "messages_written")
        self._bytes = Metrics.counter(_METRICS_NAMESPACE, "bytes_written")
        self._errors = Metrics.counter(_METRICS_NAMESPACE, "delivery_errors")
        self._fatal_errors = Metrics.counter(_METRICS_NAMESPACE, "fatal_producer_errors")

    def setup(self) -> None:
        self._shared = _shared_producer(self._config, self._producer_factory)
        self._producer = self._shared.producer
        self._flush_timeout = _flush_timeout_s(self._config)
        self._convert = (
            self._convert_with_fns
            if self._key_fn or self._value_fn or self._headers_fn
            else _message_parts
        )

    def start_bundle(self) -> None:
        self._bundle = _Deliveries()
        # Bound once per bundle: passing a stored callable avoids an allocation per message.
        self._callback = self._bundle.on_delivery

    def _convert_with_fns(self, element: Element) -> tuple[Any, Any, Any]:
        key = self._key_fn(element) if self._key_fn else None
        value = self._value_fn(element) if self._value_fn else element
        return key, value, self._headers(element) if self._headers_fn else None

    def _headers(self, element: Element) -> list[Any] | None:
        headers = self._headers_fn(element)
        return list(headers) if headers else None

    def process(self, element: Element) -> None:
        self._produce_all((self._convert(element),))

    def _produce_all(self, messages: Iterable[tuple[Any, Any, Any]]) -> None:
        """Produce ``(key, value, headers)`` messages, then serve the delivery reports due."""
        produce, topic, callback = self._producer.produce, self._topic, self._callback
        count = 0
        for key, value, headers in messages:
            try:
                produce(topic, value, key, headers=headers, on_delivery=callback)
            except BufferError:
                self._bundle.produced += count  # a failure raised while waiting counts these
                count = 0
                self._produce_when_room(key, value, headers)
            except confluent_kafka.KafkaException as err:
                self._bundle.produced += count
                self._on_client_error(err)
            except TypeError as err:
                raise TypeError(
                    f"WriteToKafka({self._topic!r}): key and value must be bytes, str or None "
                    f"(headers a list of (str, bytes) pairs); got key {type(key).__name__}, "
                    f"value {type(value).__name__}: {err}"
                ) from None
            count += 1
        self._bundle.produced += count
        self._serve(0)
        if self._bundle.failed or self._shared.fatal is not None:
            self._check_deliveries()

    def _produce_when_room(self, key: Any, value: Any, headers: Any) -> None:
        """The local queue is full: serve delivery reports to make room, then retry."""
        while True:
            self._serve(0.1)
            self._check_deliveries()
            try:
                self._producer.produce(
                    self._topic, value, key, headers=headers, on_delivery=self._callback
                )
                return
            except BufferError:
                continue
            except confluent_kafka.KafkaException as err:
                self._on_client_error(err)

    def _serve(self, timeout: float, *, flush: bool = False) -> None:
        """Serve delivery reports (``flush``: until the queue is empty or ``timeout``).

        confluent-kafka 2.16 reports a fatal client error by raising it from poll/flush/produce
        (the ``error_cb`` never sees it) — from a poll that is serving delivery reports, as a
        ``SystemError`` whose cause is the ``KafkaException`` — so every call goes through here.
        """
        try:
            if flush:
                self._producer.flush(timeout)
            else:
                self._producer.poll(timeout)
        except (confluent_kafka.KafkaException, SystemError) as err:
            self._on_client_error(err)

    def _on_client_error(self, err: Exception) -> NoReturn:
        """Record a fatal error raised by the client (see ``_check_deliveries``); re-raise."""
        error = _fatal_kafka_error(err)
        if error is None:
            raise err
        if self._shared.fatal is None:
            self._shared.fatal = error
        self._check_deliveries()
        raise err  # not reached: a fatal error raises above

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if not self._bundle.produced:
            return
        self._await_deliveries()
        bundle = self._bundle
        progress.add(progress.WRITTEN, bundle.acked)
        self._written.inc(bundle.acked)
        self._bytes.inc(bundle.acked_bytes)
        result = KafkaWriteResult(self._topic, bundle.acked, bundle.acked_bytes)
        yield GlobalWindows.windowed_value(result, Timestamp.now())

    def _await_deliveries(self) -> None:
        """Flush in short slices until every message of the bundle has its delivery report.

        Short slices, because a fatal error stops delivery for good: waiting out the whole
        ``message.timeout.ms`` (5 min by default) would leave a stream silently stuck.
        """
        deadline = time.monotonic() + self._flush_timeout
        while self._bundle.pending():
            if self._bundle.failed or self._shared.fatal is not None:
                self._check_deliveries()  # raises
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KafkaWriteError(
                    f"WriteToKafka({self._topic!r}): {self._bundle.pending()} of "
                    f"{self._bundle.produced} messages had no delivery report after "
                    f"{self._flush_timeout:.0f} s (bootstrap.servers="
                    f"{self._config.bootstrap_servers})"
                )
            # flush() serves the reports; another thread's poll may run some of our callbacks.
            self._serve(min(remaining, _FLUSH_SLICE_S), flush=True)
        self._check_deliveries()

    def _check_deliveries(self) -> None:
        """Raise on a fatal producer error (dropping the producer) or failed deliveries."""
        if self._shared.fatal is not None:
            self._fatal_errors.inc()
            _evict_producer(self._config, self._producer_factory, self._shared)
            raise KafkaWriteError(
                f"WriteToKafka({self._topic!r}): the producer failed fatally "
                f"({self._shared.fatal}); the bundle fails so that it is redone with a new "
                "producer"
            )
        failed, failures = self._bundle.describe_failures()
        if failed:
            self._errors.inc(failed)
            raise KafkaWriteError(
                f"WriteToKafka({self._topic!r}): {failed} of {self._bundle.produced} messages "
                f"were not delivered (bootstrap.servers={self._config.bootstrap_servers}); "
                f"errors: {failures}"
            )


class _ProduceBatchFn(_ProduceFn):
    """Produces every item of each list element; delivery reports are served once per list.

    Keys and values are computed with ``map`` over the list: no Python frame per message
    beyond ``key_fn``/``value_fn`` themselves.
    """

    def process(self, elements: Iterable[Element]) -> None:
        if not isinstance(elements, list):
            elements = list(elements)
        if not (self._key_fn or self._value_fn or self._headers_fn):
            self._produce_all(map(_message_parts, elements))
            return
        keys = map(self._key_fn, elements) if self._key_fn else itertools.repeat(None)
        values = map(self._value_fn, elements) if self._value_fn else elements
        headers = map(self._headers, elements) if self._headers_fn else itertools.repeat(None)
        self._produce_all(zip(keys, values, headers, strict=False))  # repeat() is endless


class WriteToKafka(beam.PTransform):
    """Write a PCollection to a Kafka topic; returns one :class:`KafkaWriteResult` per bundle.

    The producer is idempotent with ``acks=all`` by default (:data:`PRODUCER_DEFAULTS`; override
    through ``config.extra``). A bundle succeeds only after every one of its messages is
    acknowledged; otherwise it raises :class:`KafkaWriteError` and the runner retries it. Writes
    are at-least-once: a retried bundle can duplicate messages. Beam counters in namespace
    ``kafka_beam_ml.WriteToKafka``: ``messages_written``, ``bytes_written``, ``delivery_errors``.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topic: str,
        *,
        key_fn: Callable[[Element], bytes | str | None] | None = None,
        value_fn: Callable[[Element], bytes | str | None] | None = None,
        headers_fn: Callable[[Element], Any] | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        """
        Args:
            config: the cluster; producer settings go in ``config.extra``.
            topic: destination topic (must exist unless the broker auto-creates topics).
            key_fn: element -> key. With any of the ``*_fn`` given, the element itself is the
                value unless ``value_fn`` is set, and key/headers default to None.
            value_fn: element -> value (bytes or str).
            headers_fn: element -> ``[(name, bytes | str | None), …]``.
            producer_factory: builds the producer from its settings dict (default
                ``confluent_kafka.Producer``); for tests.

        Returns:
            A ``PCollection[KafkaWriteResult]`` in the global window, one per flushed bundle.
        """
        super().__init__()
        if not isinstance(config, KafkaConfig):
            raise TypeError(f"config must be a KafkaConfig, got {type(config).__name__}")
        if not isinstance(topic, str) or not topic:
            raise ValueError("WriteToKafka needs a topic name")
        for name, fn in (("key_fn", key_fn), ("value_fn", value_fn), ("headers_fn", headers_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        factory = producer_factory or _new_producer
        self._fn_args = (config, topic, key_fn, value_fn, headers_fn, factory)
        self._fn_class: type[_ProduceFn] = _ProduceFn
        self._topic = topic

    def batched(self) -> WriteToKafka:
        """The same sink for a PCollection of lists (``ScoreEvents(...).batched()`` outputs):
        every item is one message, ``key_fn``/``value_fn`` apply to items. Skips Beam's
        per-element cost and serves delivery reports once per list."""
        clone = copy.copy(self)
        clone._fn_class = _ProduceBatchFn
        return clone

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection[KafkaWriteResult]:
        produce = self._fn_class(*self._fn_args)
        return pcoll | "Produce" >> beam.ParDo(produce).with_output_types(KafkaWriteResult)

    def display_data(self) -> dict[str, Any]:
        return {"topic": self._topic}
