"""Score decoded Kafka events with a model and turn the verdicts into prediction records.

:class:`ScoreEvents` takes the ``(KafkaRecord, row)`` pairs of
``DecodeAndValidate(...).with_records()``, runs Beam's ``RunInference`` with a keyed model
handler (normally :class:`~transforms.model_handler.SavedModelHandler`) and returns a
:class:`ScoringResult`: every input becomes either a :class:`Prediction` or a dead letter (stage
``"score"``, for a row the model cannot read); anomalous predictions are also in ``alerts``.

The chain is stateless (per-bundle batching, no GroupByKey), so it streams live on the local
FnApiRunner too. Outputs carry the Kafka event time again (batching moves elements to the end of
the global window).

Usage::

    pairs = records | DecodeAndValidate(schema).with_records()
    scored = pairs.rows | ScoreEvents(SavedModelHandler(model_path, poll_seconds=30))
    scored.predictions | beam.Map(Prediction.to_kafka) | WriteToKafka(config, "predictions")
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.transforms.window import TimestampedValue

from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.kafka_record import KafkaRecord
from transforms.model_handler import FeatureError, SavedModelHandler, Score

__all__ = ["ScoreEvents", "ScoringResult", "Prediction", "METRICS_NAMESPACE"]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "kafka_beam_ml.scoring"
_STAGE = "score"
_ALERT_TAG = "alerts"


def _rfc3339(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; the key as text (invalid UTF-8 escaped) for readers of the JSON."""
        data = dataclasses.asdict(self)
        data["key"] = None if self.key is None else self.key.decode("utf-8", "backslashreplace")
        return data

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")

    def to_kafka(self) -> tuple[bytes | None, bytes]:
        """``(key, value)`` for ``WriteToKafka``: keyed like the input event."""
        return self.key, self.to_json()


class ScoringResult(NamedTuple):
    """Outputs of :class:`ScoreEvents`."""

    predictions: beam.PCollection  # Prediction, one per scored event
    alerts: beam.PCollection  # Prediction with is_anomaly, also in predictions
    dead_letters: beam.PCollection  # DeadLetter (stage "score") for unreadable rows


class _ToPredictionFn(beam.DoFn):
    """(KafkaRecord, PredictionResult) → Prediction (+ alert) or DeadLetter, at event time."""

    def __init__(self, id_field: str, clock: Callable[[], float]) -> None:
        self._id_field = id_field
        self._clock = clock
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions")
        self._alerts = Metrics.counter(METRICS_NAMESPACE, "alerts")
        self._dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def start_bundle(self) -> None:
        # One scoring time per bundle: a batch is scored at once, and it saves a clock call and a
        # format per event.
        self._scoring_time = _rfc3339(self._clock())

    def process(self, element: tuple[KafkaRecord, PredictionResult]):
        record, result = element
        event_time = record.timestamp_ms / 1000.0
        verdict = result.inference
        if not isinstance(verdict, Score):
            error = verdict if isinstance(verdict, FeatureError) else TypeError(repr(verdict))
            self._dead_letters.inc()
            yield pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                TimestampedValue(DeadLetter.from_record(record, _STAGE, error), event_time),
            )
            return
        prediction = Prediction(
            key=record.key,
            event_id=result.example.get(self._id_field),
            score=verdict.score,
            is_anomaly=verdict.is_anomaly,
            threshold=verdict.threshold,
            model_version=verdict.model_version,
            event_time=_rfc3339(event_time),
            scoring_time=self._scoring_time,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        self._predictions.inc()
        yield TimestampedValue(prediction, event_time)
        if verdict.is_anomaly:
            self._alerts.inc()
            yield pvalue.TaggedOutput(_ALERT_TAG, TimestampedValue(prediction, event_time))


class ScoreEvents(beam.PTransform):
    """PCollection[(KafkaRecord, row)] → :class:`ScoringResult`.

    Args:
      model_handler: a :class:`~transforms.model_handler.SavedModelHandler` (keyed here with
        ``.keyed()``), or any keyed handler mapping ``(KafkaRecord, row)`` to
        ``(KafkaRecord, PredictionResult)`` whose inference is a
        :class:`~transforms.model_handler.Score` or a ``FeatureError`` (benchmarks adapt Beam's
        stock handlers this way).
      id_field: the row field copied into ``Prediction.event_id`` (None if a row lacks it).
      clock: wall clock for ``scoring_time`` (tests inject a fixed one).

    Returns:
      a :class:`ScoringResult` of predictions, alerts and dead letters.
    """

    def __init__(
        self,
        model_handler: ModelHandler,
        *,
        id_field: str = "event_id",
        clock: Callable[[], float] = time.time,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if isinstance(model_handler, SavedModelHandler):
            model_handler = model_handler.keyed()
        self._handler = model_handler
        self._id_field = id_field
        self._clock = clock

    def expand(self, pairs: beam.PCollection) -> ScoringResult:
        outputs = (
            pairs
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
