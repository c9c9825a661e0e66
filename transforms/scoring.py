"""Score decoded Kafka events with a model and turn the verdicts into prediction records.

:class:`ScoreEvents` takes the ``(KafkaRecord, row)`` pairs of
``DecodeAndValidate(...).with_records()``, runs Beam's ``RunInference`` with a keyed model
handler (normally :class:`~transforms.model_handler.SavedModelHandler`) and returns a
:class:`ScoringResult`: every input becomes either a :class:`Prediction` or a dead letter (stage
``"score"``, for a row the model cannot read); anomalous predictions are also in ``alerts``.

The chain is stateless (batching within a bundle, bounded in size and wait; no GroupByKey), so
it streams live on the local FnApiRunner too. Outputs carry the Kafka event time again (batching
moves elements to the end of the global window).

Usage::

    pairs = records | DecodeAndValidate(schema).with_records()
    scored = pairs.rows | ScoreEvents(SavedModelHandler(model_path, poll_seconds=30))
    scored.predictions | WriteToKafka(
        config, "predictions", key_fn=operator.attrgetter("key"), value_fn=Prediction.to_json)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import windowed_value
from apache_beam.utils.windowed_value import WindowedValue

from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.kafka_record import KafkaRecord
from transforms.model_handler import FeatureError, SavedModelHandler, Score

__all__ = ["ScoreEvents", "ScoringResult", "Prediction", "METRICS_NAMESPACE"]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "kafka_beam_ml.scoring"
_STAGE = "score"
_ALERT_TAG = "alerts"
_json_str = json.encoder.encode_basestring_ascii  # a JSON string literal, quotes included


def _rfc3339(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: Any) -> str:
    """``json.dumps(value)``, with the usual string ids formatted without its overhead."""
    return _json_str(value) if type(value) is str else json.dumps(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """The scorer's output for one event, written as JSON to the output (and alert) topic.

    ``key`` is the input's Kafka key (bytes, so the output is partitioned like the input);
    ``event_time`` is the Kafka timestamp of the input, ``scoring_time`` when it was scored.
    """

    key: bytes | None
    event_id: Any
    score: float
    is_anomaly: bool
    threshold: float
    model_version: int
    event_time: str
    scoring_time: str
    topic: str
    partition: int
    offset: int

    def to_json(self) -> bytes:
        """The Kafka message value; the message key is :attr:`key`, as for the input event.

        ``key`` appears as text (invalid UTF-8 escaped). Formatted by hand: ``json.dumps`` of a
        dict cost 3-4x more, more than the model per event. Scores are finite (the handler
        dead-letters the rest), so ``repr`` of the floats is valid JSON.
        """
        key = (
            "null" if self.key is None else _json_str(self.key.decode("utf-8", "backslashreplace"))
        )
        return (
            f'{{"key":{key},"event_id":{_json_value(self.event_id)},"score":{self.score!r},'
            f'"is_anomaly":{"true" if self.is_anomaly else "false"},'
            f'"threshold":{self.threshold!r},"model_version":{self.model_version},'
            f'"event_time":"{self.event_time}","scoring_time":"{self.scoring_time}",'
            f'"topic":{_json_str(self.topic)},"partition":{self.partition},"offset":{self.offset}}}'
        ).encode()


class ScoringResult(NamedTuple):
    """Outputs of :class:`ScoreEvents`."""

    predictions: beam.PCollection  # Prediction, one per scored event
    alerts: beam.PCollection  # Prediction with is_anomaly, also in predictions
    dead_letters: beam.PCollection  # DeadLetter (stage "score") for unreadable rows


class _ToPredictionFn(beam.DoFn):
    """(KafkaRecord, PredictionResult) → Prediction (+ alert) or DeadLetter, at event time.

    Outputs are built as global-window values directly: Beam's window assignment of a
    ``TimestampedValue`` cost more than the prediction itself.
    """

    def __init__(self, id_field: str, clock: Callable[[], float]) -> None:
        self._id_field = id_field
        self._clock = clock
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions")
        self._alerts = Metrics.counter(METRICS_NAMESPACE, "alerts")
        self._dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._clock_ms = -1
        self._scoring_time = ""
        self._event_ms = -1
        self._event_time = ""
        self._windows = (GlobalWindow(),)

    def _at_event_time(self, value: Any, timestamp_ms: int) -> WindowedValue:
        return windowed_value.create(value, timestamp_ms * 1000, self._windows)

    def _event_text(self, timestamp_ms: int) -> str:
        """The event time as text; events of a burst share milliseconds, so the last is kept."""
        if timestamp_ms != self._event_ms:
            self._event_ms = timestamp_ms
            self._event_time = _rfc3339(timestamp_ms / 1000)
        return self._event_time

    def _now(self) -> str:
        """The scoring time, formatted at most once per millisecond (it costs more than a call)."""
        now_ms = int(self._clock() * 1000)
        if now_ms != self._clock_ms:
            self._clock_ms = now_ms
            self._scoring_time = _rfc3339(now_ms / 1000)
        return self._scoring_time

    def process(self, element: tuple[KafkaRecord, PredictionResult]):
        record, result = element
        timestamp_ms = record.timestamp_ms
        verdict = result.inference
        if not isinstance(verdict, Score):
            error = verdict if isinstance(verdict, FeatureError) else TypeError(repr(verdict))
            self._dead_letters.inc()
            letter = DeadLetter.from_record(record, _STAGE, error)
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, self._at_event_time(letter, timestamp_ms))
            return
        prediction = Prediction(
            key=record.key,
            event_id=result.example.get(self._id_field),
            score=verdict.score,
            is_anomaly=verdict.is_anomaly,
            threshold=verdict.threshold,
            model_version=verdict.model_version,
            event_time=self._event_text(timestamp_ms),
            scoring_time=self._now(),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        self._predictions.inc()
        output = self._at_event_time(prediction, timestamp_ms)
        yield output
        if verdict.is_anomaly:
            self._alerts.inc()
            yield pvalue.TaggedOutput(_ALERT_TAG, output)


class _BatchWithinBundleFn(beam.DoFn):
    """Batches a bundle's elements for RunInference without holding any across bundles.

    A batch is emitted when it has ``max_size`` elements, when its oldest element has waited
    ``max_wait_s`` (checked as elements arrive) and at the end of the bundle. Beam's
    BatchElements either waits for the bundle end (a reader bundle lasts up to a second: that
    is the latency) or, with ``max_batch_duration_secs``, keeps state and timers, which the
    local streaming runner only fires when the stream ends. Elements are in the global window.
    With ``batched_input`` the elements are lists whose items are batched (and split at
    ``max_size``).
    """

    def __init__(
        self, max_size: int, max_wait_s: float | None, batched_input: bool = False
    ) -> None:
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._batched_input = batched_input

    def start_bundle(self) -> None:
        self._batch = Batch()
        self._opened = 0.0

    def process(self, element: Any):
        if not self._batch:
            self._opened = time.monotonic()
        if self._batched_input:
            self._batch.extend(element)
        else:
            self._batch.append(element)
        if len(self._batch) >= self._max_size or (
            self._max_wait_s is not None and time.monotonic() - self._opened >= self._max_wait_s
        ):
            yield from self._take()

    def finish_bundle(self):
        if self._batch:
            yield from self._take()

    def _take(self) -> Iterator[WindowedValue]:
        batch, self._batch = self._batch, Batch()
        size = self._max_size
        chunks = (
            (batch,)
            if len(batch) <= size
            else (Batch(batch[i : i + size]) for i in range(0, len(batch), size))
        )
        for chunk in chunks:
            yield GlobalWindows.windowed_value_at_end_of_window(chunk)


class ScoreEvents(beam.PTransform):
    """PCollection[(KafkaRecord, row)] → :class:`ScoringResult`.

    Args:
      model_handler: a :class:`~transforms.model_handler.SavedModelHandler` (keyed here with
        ``.keyed()``), or any keyed handler mapping ``(KafkaRecord, row)`` to
        ``(KafkaRecord, PredictionResult)`` whose inference is a
        :class:`~transforms.model_handler.Score` or a ``FeatureError`` (benchmarks adapt Beam's
        stock handlers this way).
      id_field: the row field copied into ``Prediction.event_id`` (None if a row lacks it).
      max_batch_size: most events per model call.
      max_batch_wait_s: longest an event waits for its batch to fill (the latency budget of a
        stream); None: batches fill up to ``max_batch_size`` or the bundle end (batch jobs).
      clock: wall clock for ``scoring_time`` (tests inject a fixed one).

    Returns:
      a :class:`ScoringResult` of predictions, alerts and dead letters.
    """

    def __init__(
        self,
        model_handler: ModelHandler,
        *,
        id_field: str = "event_id",
        max_batch_size: int = 1024,
        max_batch_wait_s: float | None = 0.05,
        clock: Callable[[], float] = time.time,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if max_batch_size < 1 or (max_batch_wait_s is not None and max_batch_wait_s < 0):
            raise ValueError("max_batch_size must be >= 1 and max_batch_wait_s >= 0 or None")
        if isinstance(model_handler, SavedModelHandler):
            model_handler = model_handler.keyed()
        self._handler = model_handler.with_no_batching()
        self._batching = (max_batch_size, max_batch_wait_s)
        self._id_field = id_field
        self._clock = clock
        self._batched_input = False

    def batched(self) -> ScoreEvents:
        """The same transform on lists of pairs (``DecodeAndValidate(...).batched()`` rows).

        Re-batched within the bundle like single pairs, without Beam's per-element cost.
        """
        clone = copy.copy(self)
        clone._batched_input = True
        return clone

    def expand(self, pairs: beam.PCollection) -> ScoringResult:
        if not isinstance(pairs.windowing.windowfn, GlobalWindows):
            raise ValueError(
                "ScoreEvents needs globally windowed input (its batches span windows); got "
                f"{pairs.windowing.windowfn!r}: window the predictions instead"
            )
        outputs = (
            pairs
            | "Batch"
            >> beam.ParDo(
                _BatchWithinBundleFn(*self._batching, self._batched_input)
            ).with_output_types(Batch)
            | "RunInference" >> RunInference(self._handler)
            | "ToPredictions"
            >> beam.ParDo(_ToPredictionFn(self._id_field, self._clock)).with_outputs(
                _ALERT_TAG, DEAD_LETTER_TAG, main="predictions"
            )
        )
        return ScoringResult(
            predictions=outputs.predictions,
            alerts=outputs[_ALERT_TAG],
            dead_letters=outputs[DEAD_LETTER_TAG],
        )
