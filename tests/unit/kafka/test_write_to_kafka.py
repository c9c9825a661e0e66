"""WriteToKafka logic on TestPipeline with a fake producer (the real broker: tests/integration)."""

from __future__ import annotations

import threading

import apache_beam as beam
import confluent_kafka
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from beam_metrics import committed_counters

from transforms.kafka import writer
from transforms.kafka.config import KafkaConfig
from transforms.kafka.record import KafkaRecord
from transforms.kafka.writer import KafkaWriteError, KafkaWriteResult, WriteToKafka

TOPIC = "out"


class _FakeMessage:
    def __init__(self, value):
        self._value = value

    def __len__(self):
        return len(self._value or b"")


class FakeProducer:
    """The slice of confluent_kafka.Producer the writer uses; reports are served by poll/flush.

    Instances register by ``client.id`` so a test can inspect the one its pipeline built.
    ``fail_values`` get a timed-out delivery report, ``capacity`` bounds the local queue
    (``BufferError`` beyond it) and ``fatal`` makes every call raise a fatal client error, as
    confluent-kafka does (``fatal_after_polls``: from that poll on); it delivers nothing more.
    """

    instances: dict[str, list[FakeProducer]] = {}

    def __init__(self, settings):
        self.settings = settings
        self.queue = []
        self.delivered = []
        self.fail_values = set()
        self.capacity = None
        self.fatal = False
        self.fatal_after_polls: int | None = None
        self.fatal_inside_callback = False
        self.purged = False
        self.lock = threading.Lock()
        self.configure(self)
        self.instances.setdefault(settings["client.id"], []).append(self)

    @classmethod
    def instances_of(cls, producer) -> list[FakeProducer]:
        """The producers built before ``producer`` for the same config."""
        return cls.instances.get(producer.settings["client.id"], [])

    @staticmethod
    def configure(producer):
        """Hook a test replaces to set failures before the pipeline runs."""

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        for part in (key, value):
            if part is not None and not isinstance(part, bytes | str):
                raise TypeError(f"a bytes-like object is required, not {type(part).__name__!r}")
        if self.fatal:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._FATAL, "Local: Fatal error")
            )
        with self.lock:
            if self.capacity is not None and len(self.queue) >= self.capacity:
                raise BufferError("Local: Queue full")
            self.queue.append((topic, key, value, headers, on_delivery))

    def purge(self):
        with self.lock:
            self.queue = []
        self.purged = True

    def poll(self, timeout=0):
        if self.fatal_after_polls is not None:
            self.fatal_after_polls -= 1
            if self.fatal_after_polls < 0:
                self.fatal = True
        if self.fatal:  # as confluent-kafka does: raised from poll/flush, not via error_cb
            error = confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(
                    confluent_kafka.KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    "sequence desynchronization",
                    fatal=True,
                )
            )
            if not self.fatal_inside_callback:
                raise error
            # What a poll serving delivery reports raises: the callback "returned a result
            # with an exception set".
            raise SystemError("on_delivery returned a result with an exception set") from error
        with self.lock:
            queue, self.queue = self.queue, []
        for topic, key, value, headers, callback in queue:
            if value in self.fail_values:
                error = confluent_kafka.KafkaError(
                    confluent_kafka.KafkaError._MSG_TIMED_OUT, "Message timed out"
                )
                callback(error, _FakeMessage(value))
            else:
                self.delivered.append((topic, key, value, headers))
                callback(None, _FakeMessage(value))
        return len(queue)

    def flush(self, timeout=-1):
        self.poll()
        return 0


@pytest.fixture
def config(request):
    """A config per test, so each gets its own cached producer."""
    yield KafkaConfig("fake:9092", extra={"client.id": request.node.name})
    FakeProducer.instances.pop(request.node.name, None)


def _write(config, elements, expect_producers=1, **kwargs):
    """Run a pipeline writing ``elements``, check its results; return (last producer, counters)."""
    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create(elements, reshuffle=False)
            | WriteToKafka(config, TOPIC, producer_factory=FakeProducer, **kwargs)
        )
        totals = (
            results
            | beam.Map(lambda r: (r.topic, r.messages, r.bytes))
            | beam.CombineGlobally(_sum_results)
        )
        assert_that(totals, equal_to([(TOPIC, len(elements), _value_bytes(elements, kwargs))]))
    counters = committed_counters(p.result, "kafka_beam_ml.WriteToKafka")
    producers = FakeProducer.instances[config.extra["client.id"]]
    assert len(producers) == expect_producers
    return producers[-1], counters


def _sum_results(rows):
    rows = list(rows)
    topics = {topic for topic, _, _ in rows}
    return (*topics, sum(r[1] for r in rows), sum(r[2] for r in rows))


def _value_bytes(elements, kwargs):
    value_fn = kwargs.get("value_fn")
    total = 0
    for element in elements:
        if value_fn:
            value = value_fn(element)
        elif isinstance(element, tuple) and len(element) == 2:
            value = element[1]
        else:
            value = element.value
        total += len(value or b"")
    return total


def test_pairs_and_records_with_headers_are_produced_as_given(config):
    record = KafkaRecord("in", 2, 7, b"k3", b"v3", 1, headers=(("trace", b"t1"), ("n", None)))
    elements = [(b"k1", b"v1"), ("k2", "v2"), (None, b"v-no-key"), record, ("gone", None)]
    producer, counters = _write(config, elements)
    assert producer.delivered == [
        (TOPIC, b"k1", b"v1", None),
        (TOPIC, "k2", "v2", None),
        (TOPIC, None, b"v-no-key", None),
        (TOPIC, b"k3", b"v3", [("trace", b"t1"), ("n", None)]),
        (TOPIC, "gone", None, None),
    ]
    assert counters == {"messages_written": 5, "bytes_written": 14}


def test_key_value_and_headers_functions(config):
    rows = [{"id": "a", "score": 0.5}, {"id": "b", "score": 2.0}]
    producer, _ = _write(
        config,
        rows,
        key_fn=lambda r: r["id"],
        value_fn=lambda r: f"{r['score']:.1f}".encode(),
        headers_fn=lambda r: [("model", b"v1")],
    )
    assert producer.delivered == [
        (TOPIC, "a", b"0.5", [("model", b"v1")]),
        (TOPIC, "b", b"2.0", [("model", b"v1")]),
    ]


def test_idempotent_murmur2_defaults_and_config_overrides(config):
    shared = writer._shared_producer(config, FakeProducer)
    assert shared.producer.settings["enable.idempotence"] == "true"
    assert shared.producer.settings["acks"] == "all"
    assert shared.producer.settings["partitioner"] == "murmur2_random"
    assert callable(shared.producer.settings["error_cb"])
    tuned = config.with_extra({"linger.ms": "50", "partitioner": "consistent_random"})
    tuned_shared = writer._shared_producer(tuned, FakeProducer)
    assert tuned_shared is not shared
    assert tuned_shared.producer.settings["linger.ms"] == "50"
    assert tuned_shared.producer.settings["partitioner"] == "consistent_random"
    assert writer._shared_producer(config, FakeProducer) is shared


def test_one_producer_per_process_reused_across_dofn_instances(config):
    _write(config, [(b"k", b"1")] * 3)
    with test_pipeline.TestPipeline() as p:
        _ = (
            p
            | beam.Create([(b"k", str(i).encode()) for i in range(40)])
            | WriteToKafka(config, TOPIC, producer_factory=FakeProducer)
        )
    producers = FakeProducer.instances[config.extra["client.id"]]
    assert len(producers) == 1
    assert len(producers[0].delivered) == 43


def test_full_local_queue_polls_and_retries(config, monkeypatch):
    monkeypatch.setattr(
        FakeProducer, "configure", staticmethod(lambda fp: setattr(fp, "capacity", 2))
    )
    elements = [(None, str(i).encode()) for i in range(25)]
    producer, counters = _write(config, elements)
    assert [m[2] for m in producer.delivered] == [e[1] for e in elements]
    assert counters["messages_written"] == 25


def test_a_failed_delivery_fails_the_bundle(config, monkeypatch):
    monkeypatch.setattr(
        FakeProducer, "configure", staticmethod(lambda fp: fp.fail_values.add(b"bad"))
    )
    with pytest.raises(KafkaWriteError, match=r"1 of .* not delivered.*_MSG_TIMED_OUT.*\(x1\)"):
        _write(config, [(None, b"ok"), (None, b"bad"), (None, b"ok2")])


@pytest.mark.parametrize("inside_callback", [False, True])
def test_a_fatal_producer_error_fails_the_bundle_and_the_retry_gets_a_new_producer(
    config, monkeypatch, inside_callback
):
    # As after a broker restart under idempotence: the first producer fails fatally (raised
    # by poll, or while a poll serves delivery reports). The bundle fails at once — not after
    # message.timeout.ms — and the next run gets a fresh producer.
    def configure(fp):
        fp.fatal_after_polls = 0 if not FakeProducer.instances_of(fp) else None
        fp.fatal_inside_callback = inside_callback

    monkeypatch.setattr(FakeProducer, "configure", staticmethod(configure))
    with pytest.raises(KafkaWriteError, match="failed fatally.*sequence desynchronization"):
        _write(config, [(None, b"x")])
    [failed] = FakeProducer.instances[config.extra["client.id"]]
    assert failed.purged
    producer, _ = _write(config, [(None, b"y")], expect_producers=2)
    assert producer.delivered == [(TOPIC, None, b"y", None)]


def test_batched_write_fails_at_once_on_a_fatal_error_while_waiting_for_room(config, monkeypatch):
    def configure(fp):
        fp.capacity = 2
        fp.fatal_after_polls = 1

    monkeypatch.setattr(FakeProducer, "configure", staticmethod(configure))
    items = [(None, str(i).encode()) for i in range(7)]
    with pytest.raises(KafkaWriteError, match="failed fatally"):
        with test_pipeline.TestPipeline() as p:
            _ = (
                p
                | beam.Create([items])
                | WriteToKafka(config, TOPIC, producer_factory=FakeProducer).batched()
            )


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (42, "expects \\(key, value\\) pairs or records .* got int"),
        ((b"k", 3.5), "key and value must be bytes, str or None .* value float"),
    ],
)
def test_unsupported_elements_raise_a_clear_error(config, element, message):
    with pytest.raises(TypeError, match=message):
        with test_pipeline.TestPipeline() as p:
            _ = (
                p
                | beam.Create([element])
                | WriteToKafka(config, TOPIC, producer_factory=FakeProducer)
            )


def test_constructor_checks_arguments():
    config = KafkaConfig("h:1")
    with pytest.raises(TypeError, match="KafkaConfig"):
        WriteToKafka({"bootstrap.servers": "h:1"}, TOPIC)
    with pytest.raises(ValueError, match="topic"):
        WriteToKafka(config, "")
    with pytest.raises(TypeError, match="key_fn must be callable"):
        WriteToKafka(config, TOPIC, key_fn="id")


def test_flush_deadline_follows_the_message_timeout():
    assert writer._flush_timeout_s(KafkaConfig("h:1")) == 310.0
    short = KafkaConfig("h:1", extra={"message.timeout.ms": "1500"})
    assert writer._flush_timeout_s(short) == 11.5


def test_result_type_is_declared():
    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create([(b"k", b"v")])
            | WriteToKafka(
                KafkaConfig("fake:1", extra={"client.id": "typed"}),
                TOPIC,
                producer_factory=FakeProducer,
            )
        )
        assert results.element_type is KafkaWriteResult
    FakeProducer.instances.pop("typed", None)


def test_delivery_reports_from_other_threads_are_counted_exactly():
    """The shared producer may serve a bundle's callbacks in another DoFn's thread."""
    bundle = writer._Deliveries()
    bundle.produced = 4000
    timed_out = confluent_kafka.KafkaError(confluent_kafka.KafkaError._MSG_TIMED_OUT, "timed out")

    def report(thread):
        for i in range(1000):
            failed = thread == 0 and i % 100 == 0
            bundle.on_delivery(timed_out if failed else None, _FakeMessage(b"abc"))

    threads = [threading.Thread(target=report, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bundle.pending() == 0
    assert (bundle.acked, bundle.acked_bytes) == (3990, 3 * 3990)
    assert bundle.describe_failures() == (10, "_MSG_TIMED_OUT: timed out (x10)")


def test_batched_writes_every_item_of_each_list(config):
    rows = [{"id": str(i), "score": i / 4} for i in range(7)]
    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create([rows[:3], rows[3:], []], reshuffle=False)
            | WriteToKafka(
                config,
                TOPIC,
                key_fn=lambda r: r["id"],
                value_fn=lambda r: f"{r['score']}".encode(),
                producer_factory=FakeProducer,
            ).batched()
            | beam.Map(lambda r: r.messages)
            | beam.CombineGlobally(sum)
        )
        assert_that(results, equal_to([7]))
    [producer] = FakeProducer.instances[config.extra["client.id"]]
    assert producer.delivered == [(TOPIC, r["id"], f"{r['score']}".encode(), None) for r in rows]


def test_batched_failure_seen_while_waiting_for_room_counts_the_list_so_far(config, monkeypatch):
    def configure(fp):
        fp.fail_values.add(b"bad")
        fp.capacity = 2  # the third message waits for room; serving reports reveals the failure

    monkeypatch.setattr(FakeProducer, "configure", staticmethod(configure))
    with pytest.raises(KafkaWriteError, match=r"1 of 2 messages were not delivered"):
        with test_pipeline.TestPipeline() as p:
            _ = (
                p
                | beam.Create([[(None, b"bad"), (None, b"ok1"), (None, b"ok2"), (None, b"ok3")]])
                | WriteToKafka(config, TOPIC, producer_factory=FakeProducer).batched()
            )


def test_batched_fails_the_bundle_on_a_failed_delivery(config, monkeypatch):
    monkeypatch.setattr(
        FakeProducer, "configure", staticmethod(lambda fp: fp.fail_values.add(b"bad"))
    )
    with pytest.raises(KafkaWriteError, match=r"1 of 3 messages were not delivered"):
        with test_pipeline.TestPipeline() as p:
            _ = (
                p
                | beam.Create([[(None, b"ok"), (None, b"bad"), (None, b"ok2")]])
                | WriteToKafka(config, TOPIC, producer_factory=FakeProducer).batched()
            )
