"""Score decoded Kafka events with a model and turn the verdicts into prediction records.

:class:`ScoreEvents` takes the ``(KafkaRecord, row)`` pairs of
``DecodeAndValidate(...).with_records()``, runs Beam's ``RunInference`` over batches of them with
a model handler (normally :class:`~transforms.inference.model_handler.SavedModelHandler`) and
returns a
:class:`ScoringResult`: every input becomes either a :class:`Prediction` or a dead letter (stage
``"score"``, for a row the model cannot read); anomalous predictions are also in ``alerts``.
RunInference's example is a whole batch (:class:`ScoredBatch` its prediction), so no step after
the model pays Beam's per-element cost until predictions are emitted; ``.batched()`` keeps them
in lists up to the Kafka producer.

The chain is stateless (batching within a bundle, bounded in size and wait; no GroupByKey), so
it streams live on the local FnApiRunner too. Outputs carry the Kafka event time again (batching
moves elements to the end of the global window).

Usage::

    pairs = records | DecodeAndValidate(schema).with_records()
    scored = pairs.rows | ScoreEvents(SavedModelHandler(model_path, poll_seconds=30))
    scored.predictions | WriteToKafka(
        config, "predictions", key_fn=operator.attrgetter("key"), value_fn=Prediction.to_json)
    # or a lean record with only some fields: value_fn=PredictionJson(("event_id", "score"))

    # lists from the reader to the producer (the scoring pipeline's shape):
    scored = batches.rows | ScoreEvents(handler).batched()
    scored.predictions | WriteToKafka(config, "predictions", key_fn=..., value_fn=...).batched()
"""

from __future__ import annotations

import copy
import datetime
import itertools
import logging
import operator
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import msgspec
from apache_beam import coders, pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import windowed_value
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.batch import Batch, BatchCoder, BatchView
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.columnar import ColumnarPairs
from transforms.inference.model_handler import Row, VerdictHandler, Verdicts
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing.expressions import SCORE_FIELD, VERDICT_FIELD

__all__ = [
    "AttachVerdicts",
    "VerdictsOnRows",
    "without_verdicts",
    "ScoreEvents",
    "ScoringResult",
    "Prediction",
    "PredictionBatch",
    "PredictionJson",
    "PREDICTION_KEY",
    "ScoredBatch",
    "ScoredBatchCoder",
    "METRICS_NAMESPACE",
]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "kafka_beam_ml.scoring"
_STAGE = "score"
_ALERT_TAG = "alerts"


class _MillisText:
    """Epoch milliseconds as RFC 3339 UTC text (``2026-11-22T01:02:03.456Z``), cheaply.

    Events come in time order, so the last millisecond's text is kept and the date and time of
    the last second too: a new millisecond costs one small format, a new second one datetime.
    """

    def __init__(self) -> None:
        self._ms = self._second = None
        self._text = self._second_text = ""

    def __call__(self, epoch_ms: int) -> str:
        if epoch_ms != self._ms:
            second, millis = divmod(epoch_ms, 1000)
            if second != self._second:
                moment = datetime.datetime.fromtimestamp(second, datetime.UTC).replace(tzinfo=None)
                self._second, self._second_text = second, moment.isoformat(timespec="seconds")
            self._ms, self._text = epoch_ms, f"{self._second_text}.{millis:03d}Z"
        return self._text


class Prediction(NamedTuple):
    """The scorer's output for one event, written as JSON to the output (and alert) topic.

    ``key`` is the input's Kafka key (bytes, so the output is partitioned like the input);
    ``event_time`` is the Kafka timestamp of the input, ``scoring_time`` when its batch was
    scored. A ``NamedTuple``, like :class:`KafkaRecord`: immutable and built at tuple speed.
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
        """The Kafka message value with every field (:class:`PredictionJson` picks fewer); the
        message key is :attr:`key`, as for the input event."""
        return _FULL_JSON(self)


class PredictionJson:
    """Prediction → JSON object of the chosen ``fields`` (all by default), in their order.

    A lean record (``("event_id", "score", "is_anomaly")``) is a third of the full one's bytes
    and costs a third as much to encode. ``key`` appears as text (invalid UTF-8 escaped). Encoded
    by msgspec from a struct (~0.7 µs for all eleven fields, half the hand-formatted string's
    cost); scores are finite, the handler dead-letters the rest. Picklable: the struct type is
    built on first use in each worker.
    """

    def __init__(self, fields: Sequence[str] | None = None) -> None:
        chosen = Prediction._fields if fields is None else tuple(fields)
        unknown = [name for name in chosen if name not in Prediction._fields]
        if unknown or not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"prediction fields must be distinct names among {', '.join(Prediction._fields)}; "
                f"got {', '.join(chosen) or 'none'}"
            )
        self.fields = chosen
        self._encode: Callable[[Prediction], bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"fields": self.fields, "_encode": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fields, self._encode = state["fields"], None

    def __call__(self, prediction: Prediction) -> bytes:
        return (self._encode or self._build())(prediction)

    def _build(self) -> Callable[[Prediction], bytes]:
        struct = msgspec.defstruct(  # scalars only: nothing for the collector to track
            "PredictionRecord", [(name, Any) for name in self.fields], gc=False
        )
        encode = msgspec.json.Encoder().encode
        self._struct, self._encode_struct = struct, encode
        positions = [Prediction._fields.index(name) for name in self.fields]
        key_at = self.fields.index("key") if "key" in self.fields else None
        if len(positions) == 1:
            position = positions[0]

            def values(prediction: Prediction) -> list[Any]:
                return [prediction[position]]
        else:
            getter = operator.itemgetter(*positions)

            def values(prediction: Prediction) -> list[Any]:
                return list(getter(prediction))

        def encoded(prediction: Prediction) -> bytes:
            chosen = values(prediction)
            if key_at is not None and chosen[key_at] is not None:
                chosen[key_at] = chosen[key_at].decode("utf-8", "backslashreplace")
            return encode(struct(*chosen))

        self._encode = encoded
        return encoded

    def on_batch(self, batch: Any) -> list[bytes] | None:
        """Every value of a :class:`PredictionBatch`, encoded from its columns (no Prediction
        built; ~half the cost a prediction); None for any other batch."""
        if type(batch) is not PredictionBatch:
            return None
        if self._encode is None:
            self._build()
        columns = [batch.column(name) for name in self.fields]
        if "key" in self.fields:
            at = self.fields.index("key")
            columns[at] = [
                None if key is None else key.decode("utf-8", "backslashreplace")
                for key in columns[at]
            ]
        return list(map(self._encode_struct, map(self._struct, *columns)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PredictionJson) and other.fields == self.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return f"PredictionJson({list(self.fields)!r})"


_FULL_JSON = PredictionJson()


class PredictionBatch(BatchView):
    """The predictions of one scored batch, held column-wise (``ScoreEvents(...).batched()``).

    Indexing or iterating gives :class:`Prediction` tuples, built then; :meth:`column` gives a
    field of all of them without building any. :meth:`PredictionJson.on_batch` and
    :data:`PREDICTION_KEY` use the columns, so the usual sink path (``EncodeWithinLimit``)
    builds no tuple at all. Pickles as the list of predictions it stands for.
    """

    __slots__ = ("records", "event_ids", "verdicts", "event_times", "scoring_time")

    def __init__(
        self,
        records: Sequence[KafkaRecord],
        event_ids: Sequence[Any],
        verdicts: Verdicts,
        event_times: Sequence[str],
        scoring_time: str,
    ) -> None:
        self.records = records
        self.event_ids = event_ids
        self.verdicts = verdicts
        self.event_times = event_times
        self.scoring_time = scoring_time

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        record = self.records[index]
        return tuple.__new__(
            Prediction,
            (
                record.key,
                self.event_ids[index],
                self.verdicts.scores[index],
                self.verdicts.is_anomaly[index],
                self.verdicts.thresholds[index],
                self.verdicts.model_versions[index],
                self.event_times[index],
                self.scoring_time,
                record.topic,
                record.partition,
                record.offset,
            ),
        )

    def __iter__(self) -> Iterator[Prediction]:
        return map(Prediction, *(self.column(name) for name in Prediction._fields))

    def select(self, indices: Sequence[int]) -> PredictionBatch:
        """The predictions at ``indices``, still column-wise (the alerts of a batch)."""

        def pick(column: Sequence[Any]) -> list[Any]:
            return [column[i] for i in indices]

        verdicts = Verdicts(*map(pick, self.verdicts[:4]), {})
        return PredictionBatch(
            pick(self.records), pick(self.event_ids), verdicts, pick(self.event_times),
            self.scoring_time,
        )  # fmt: skip

    def column(self, name: str) -> Sequence[Any]:
        """Field ``name`` of :class:`Prediction` for every prediction, in order."""
        if name in _RECORD_FIELDS:
            return list(map(operator.attrgetter(name), self.records))
        if name == "scoring_time":
            return [self.scoring_time] * len(self.records)
        if name == "event_id":
            return self.event_ids
        if name == "event_time":
            return self.event_times
        return self.verdicts[_VERDICT_FIELDS[name]]

    def estimate_bytes(self) -> int:
        """A size for Beam's metrics: the first prediction's pickle, times the length."""
        return len(pickle.dumps(self[0], pickle.HIGHEST_PROTOCOL)) * len(self) if self else 0


_TIMESTAMP_MS = operator.attrgetter("timestamp_ms")
_RECORD_FIELDS = frozenset({"key", "topic", "partition", "offset"})
_VERDICT_FIELDS = {"score": 0, "is_anomaly": 1, "threshold": 2, "model_version": 3}


class _PredictionKey:
    """A prediction's Kafka key (its input's); whole :class:`PredictionBatch` columns at once."""

    def __call__(self, prediction: Prediction) -> bytes | None:
        return prediction.key

    def on_batch(self, batch: Any) -> list[bytes | None] | None:
        return batch.column("key") if type(batch) is PredictionBatch else None

    def __eq__(self, other: object) -> bool:
        return type(other) is _PredictionKey

    def __hash__(self) -> int:
        return hash(_PredictionKey)


#: key_fn of the prediction and alert sinks: the input event's key.
PREDICTION_KEY = _PredictionKey()


class ScoringResult(NamedTuple):
    """Outputs of :class:`ScoreEvents`."""

    predictions: beam.PCollection  # Prediction, one per scored event
    alerts: beam.PCollection  # Prediction with is_anomaly, also in predictions
    dead_letters: beam.PCollection  # DeadLetter (stage "score") for unreadable rows


class ScoredBatch(NamedTuple):
    """A batch of ``(KafkaRecord, row)`` pairs with the model's :class:`Verdicts` on them."""

    pairs: Sequence[tuple[KafkaRecord, Row]]
    verdicts: Verdicts


class ScoredBatchCoder(coders.Coder):
    """Pickles scored batches; estimates their size from the first pair (like ``BatchCoder``).

    Why: Beam samples element sizes by encoding them, and the few large elements after the
    model were all sampled: pickling every scored batch cost ~5 % of the scorer.
    """

    def encode(self, value: ScoredBatch) -> bytes:
        return pickle.dumps((list(value.pairs), tuple(value.verdicts)), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> ScoredBatch:
        pairs, verdicts = pickle.loads(encoded)  # noqa: S301 - bytes this coder wrote
        return ScoredBatch(Batch(pairs), Verdicts(*verdicts))

    def estimate_size(self, value: ScoredBatch) -> int:
        return BatchCoder().estimate_size(value.pairs) + 32 * len(value.pairs)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> type:
        return ScoredBatch


coders.registry.register_coder(ScoredBatch, ScoredBatchCoder)


class _BatchScoringHandler(ModelHandler[Sequence[Any], ScoredBatch, Any]):
    """The RunInference handler of :class:`ScoreEvents`: an example is a whole batch of pairs.

    Why: RunInference emits one element per prediction, and every later step then pays Beam's
    per-element cost; with the batch as the example the verdicts stay together up to the
    producer. A :class:`VerdictHandler` (the embedded :class:`SavedModelHandler`, the remote
    :class:`ModelServerHandler`) answers column-wise; any other handler, keyed on the
    ``(KafkaRecord, row)`` pairs, runs as RunInference would run it (its preprocessing functions
    on the batch, its postprocessing functions on each result) and its per-row results are
    collected. RunInference's own batching is skipped: elements are lists of batches.
    """

    def __init__(self, handler: ModelHandler) -> None:
        super().__init__()
        self._handler = handler
        self._columnar = isinstance(handler, VerdictHandler)

    def load_model(self) -> Any:
        return self._handler.load_model()

    def run_inference(
        self,
        batch: Sequence[Sequence[Any]],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> list[ScoredBatch]:
        return [ScoredBatch(pairs, self._verdicts(pairs, model, inference_args)) for pairs in batch]

    def _verdicts(self, pairs: Sequence[Any], model: Any, inference_args: Any) -> Verdicts:
        if self._columnar:
            rows = pairs.rows if type(pairs) is ColumnarPairs else [row for _, row in pairs]
            return self._handler.verdicts(rows, model)
        examples: Any = pairs
        for fn in self._handler.get_preprocess_fns():
            examples = fn(examples)
        results = list(self._handler.run_inference(examples, model, inference_args))
        for fn in self._handler.get_postprocess_fns():
            results = [fn(result) for result in results]
        if len(results) != len(pairs):
            raise ValueError(
                f"{type(self._handler).__name__} returned {len(results)} results for "
                f"{len(pairs)} events; ScoreEvents needs one (KafkaRecord, PredictionResult) each"
            )
        return Verdicts.from_scores([result.inference for _, result in results])

    def should_skip_batching(self) -> bool:
        return True

    def get_num_bytes(self, batch: Sequence[Sequence[Any]]) -> int:
        """Approximate payload size for metrics: 8 bytes a field (the default pickles it all)."""
        return 8 * sum(
            len(pairs) * pairs.rows.width
            if type(pairs) is ColumnarPairs
            else sum(len(row) for _, row in pairs)
            for pairs in batch
        )

    def update_model_path(self, model_path: str | None = None) -> None:
        self._handler.update_model_path(model_path)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def get_resource_hints(self) -> dict[str, Any]:
        return self._handler.get_resource_hints()

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()

    def model_copies(self) -> int:
        return self._handler.model_copies()

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        self._handler.validate_inference_args(inference_args)


class _ToPredictionsFn(beam.DoFn):
    """ScoredBatch → Predictions (+ alerts), or a DeadLetter per unscored event.

    Single outputs are at their event's time; with ``batched_output`` the predictions (and the
    alerts) of a scored batch leave as one :class:`Batch` at its earliest event time, which keeps
    the watermark below every event in it. Outputs are built as global-window values directly
    (Beam's window assignment cost more than a prediction), predictions as tuples (a
    ``NamedTuple``'s keyword handling cost more too).
    """

    def __init__(self, id_field: str, clock: Callable[[], float], batched_output: bool) -> None:
        self._id_field = id_field
        self._clock = clock
        self._batched_output = batched_output
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions")
        self._alerts = Metrics.counter(METRICS_NAMESPACE, "alerts")
        self._dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._event_text = _MillisText()
        self._scoring_text = _MillisText()
        self._windows = (GlobalWindow(),)

    def _at(self, value: Any, timestamp_ms: int) -> WindowedValue:
        return windowed_value.create(value, timestamp_ms * 1000, self._windows)

    def process(self, scored: ScoredBatch) -> Iterator[Any]:
        pairs, verdicts = scored
        errors = verdicts.errors
        scoring_time = self._scoring_text(int(self._clock() * 1000))  # the batch's, to the ms
        event_text, new = self._event_text, tuple.__new__
        batched = self._batched_output
        predictions, alerts = Batch(), Batch()  # kept only with batched output
        scored = alerted = 0
        earliest_ms = None
        if type(pairs) is ColumnarPairs:
            records, ids = pairs.records, pairs.rows.column(self._id_field)
        else:
            records = [record for record, _ in pairs]
            ids = [row.get(self._id_field) for _, row in pairs]
        if batched and not errors and records:
            yield from self._batch_outputs(records, ids, verdicts, scoring_time)
            return
        for index, (record, event_id, score, flag, threshold, version) in enumerate(
            zip(records, ids, *verdicts[:4], strict=True)
        ):
            timestamp_ms = record.timestamp_ms
            if errors and index in errors:
                self._dead_letters.inc()
                letter = DeadLetter.from_record(record, _STAGE, errors[index])
                yield pvalue.TaggedOutput(DEAD_LETTER_TAG, self._at(letter, timestamp_ms))
                continue
            prediction = new(
                Prediction,
                (
                    record.key,
                    event_id,
                    score,
                    flag,
                    threshold,
                    version,
                    event_text(timestamp_ms),
                    scoring_time,
                    record.topic,
                    record.partition,
                    record.offset,
                ),
            )
            scored += 1
            if flag:
                alerted += 1
            if batched:
                predictions.append(prediction)
                if flag:
                    alerts.append(prediction)
                if earliest_ms is None or timestamp_ms < earliest_ms:
                    earliest_ms = timestamp_ms
            else:
                output = self._at(prediction, timestamp_ms)
                yield output
                if flag:
                    yield pvalue.TaggedOutput(_ALERT_TAG, output)
        if scored:
            self._predictions.inc(scored)
            progress.add(progress.PREDICTIONS, scored)
        if alerted:
            self._alerts.inc(alerted)
            progress.add(progress.ALERTS, alerted)
        if predictions:
            yield self._at(predictions, earliest_ms)
            if alerts:
                yield pvalue.TaggedOutput(_ALERT_TAG, self._at(alerts, earliest_ms))

    def _batch_outputs(
        self, records: Sequence[KafkaRecord], ids: Sequence[Any], verdicts: Verdicts, at: str
    ) -> Iterator[Any]:
        """A batch scored without errors: one :class:`PredictionBatch` (columns, no tuples) and
        the alerts among it, at the batch's earliest event time."""
        timestamps = list(map(_TIMESTAMP_MS, records))
        predictions = PredictionBatch(
            records, ids, verdicts, list(map(self._event_text, timestamps)), at
        )
        earliest_ms = min(timestamps)
        flags = verdicts.is_anomaly
        alerts = predictions.select(list(itertools.compress(range(len(flags)), flags)))
        self._predictions.inc(len(predictions))
        progress.add(progress.PREDICTIONS, len(predictions))
        yield self._at(predictions, earliest_ms)
        if alerts:
            self._alerts.inc(len(alerts))
            progress.add(progress.ALERTS, len(alerts))
            yield pvalue.TaggedOutput(_ALERT_TAG, self._at(alerts, earliest_ms))


class _BatchWithinBundleFn(beam.DoFn):
    """Batches a bundle's elements for RunInference without holding any across bundles.

    A batch is emitted (as a list of chunks of at most ``max_size``, one RunInference call's
    examples) when it has ``max_size`` elements, when its oldest element has waited
    ``max_wait_s`` (checked as elements arrive) and at the end of the bundle. Beam's
    BatchElements either waits for the bundle end (a reader bundle lasts up to a second: that
    is the latency) or, with ``max_batch_duration_secs``, keeps state and timers, which the
    local streaming runner only fires when the stream ends. Elements are in the global window.
    With ``batched_input`` the elements are lists whose items are batched.
    """

    def __init__(
        self, max_size: int, max_wait_s: float | None, batched_input: bool = False
    ) -> None:
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._batched_input = batched_input

    def start_bundle(self) -> None:
        self._parts: list[Any] = []  # the elements, or with batched input the lists
        self._size = 0
        self._opened = 0.0

    def process(self, element: Any):
        if not self._size:
            self._opened = time.monotonic()
        self._parts.append(element)
        self._size += len(element) if self._batched_input else 1
        if self._size >= self._max_size or (
            self._max_wait_s is not None and time.monotonic() - self._opened >= self._max_wait_s
        ):
            yield from self._take()

    def finish_bundle(self):
        if self._size:
            yield from self._take()

    def _take(self) -> Iterator[WindowedValue]:
        """The batch so far as one element: a list of chunks of at most ``max_size``.

        Column-wise input (:class:`ColumnarPairs`) stays column-wise; a mix with plain lists
        (a batch that held a dead letter) becomes one plain list.
        """
        parts, self._parts, self._size = self._parts, [], 0
        if not self._batched_input:
            batch: Sequence[Any] = Batch(parts)
        elif all(type(part) is ColumnarPairs for part in parts):
            batch = ColumnarPairs.concat(parts)
        else:
            batch = Batch(itertools.chain.from_iterable(parts))
        size = self._max_size
        if len(batch) <= size:
            chunks = Batch((batch,))
        else:
            pieces = (batch[i : i + size] for i in range(0, len(batch), size))
            chunks = Batch(p if type(p) is ColumnarPairs else Batch(p) for p in pieces)
        yield GlobalWindows.windowed_value_at_end_of_window(chunks)


class ScoreEvents(beam.PTransform):
    """PCollection[(KafkaRecord, row)] → :class:`ScoringResult`.

    Args:
      model_handler: a :class:`~transforms.inference.model_handler.SavedModelHandler` (scored
      column-wise),
        or any handler mapping ``(KafkaRecord, row)`` pairs to ``(KafkaRecord,
        PredictionResult)`` whose inference is a :class:`~transforms.inference.model_handler.Score`
        or
        an exception such as ``FeatureError`` (the benchmark adapts Beam's stock TF handler
        this way). Its preprocessing functions see a batch of pairs.
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
        self._handler = _BatchScoringHandler(model_handler)
        self._batching = (max_batch_size, max_batch_wait_s)
        self._id_field = id_field
        self._clock = clock
        self._batched = False

    def batched(self) -> ScoreEvents:
        """The same transform on lists: lists of pairs in (``DecodeAndValidate.batched()``
        rows), a :class:`Batch` of predictions (and of alerts) out per scored batch, at its
        earliest event time; dead letters stay single.

        Lists all the way from the reader to the producer (``WriteToKafka(...).batched()``)
        skip Beam's per-element cost, most of the scorer's time on small models.
        """
        clone = copy.copy(self)
        clone._batched = True
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
            >> beam.ParDo(_BatchWithinBundleFn(*self._batching, self._batched)).with_output_types(
                Batch
            )
            | "RunInference" >> RunInference(self._handler).with_output_types(ScoredBatch)
            | "ToPredictions" >> self._to_predictions()
        )
        return ScoringResult(
            predictions=outputs.predictions,
            alerts=outputs[_ALERT_TAG],
            dead_letters=outputs[DEAD_LETTER_TAG],
        )

    def _to_predictions(self) -> beam.PTransform:
        to_predictions = beam.ParDo(_ToPredictionsFn(self._id_field, self._clock, self._batched))
        if self._batched:  # lists get BatchCoder's cheap size estimate (Any would pickle them)
            to_predictions = to_predictions.with_output_types(
                Batch, **{_ALERT_TAG: Batch, DEAD_LETTER_TAG: DeadLetter}
            )
        return to_predictions.with_outputs(_ALERT_TAG, DEAD_LETTER_TAG, main="predictions")


class VerdictsOnRows(NamedTuple):
    """Outputs of :class:`AttachVerdicts`."""

    pairs: beam.PCollection  # (KafkaRecord, row with SCORE_FIELD and VERDICT_FIELD)
    dead_letters: beam.PCollection  # DeadLetter (stage "score") for rows the model cannot read


class _AttachFn(beam.DoFn):
    """ScoredBatch → each pair with the verdict in its row (at its event time), or a DeadLetter."""

    def setup(self) -> None:
        self._windows = (GlobalWindow(),)
        self._dead_letters = Metrics.counter(METRICS_NAMESPACE, "dead_letters")

    def process(self, scored: ScoredBatch) -> Iterator[Any]:
        pairs, verdicts = scored
        errors = verdicts.errors
        for index, ((record, row), score, flag) in enumerate(
            zip(pairs, verdicts.scores, verdicts.is_anomaly, strict=True)
        ):
            micros = record.timestamp_ms * 1000
            if errors and index in errors:
                self._dead_letters.inc()
                letter = DeadLetter.from_record(record, _STAGE, errors[index])
                yield pvalue.TaggedOutput(
                    DEAD_LETTER_TAG, windowed_value.create(letter, micros, self._windows)
                )
                continue
            scored_row = {**row, SCORE_FIELD: score, VERDICT_FIELD: flag}
            yield windowed_value.create((record, scored_row), micros, self._windows)


class AttachVerdicts(beam.PTransform):
    """PCollection[(KafkaRecord, row)] → :class:`VerdictsOnRows`: rows carrying the model's verdict.

    What ``ANOMALY()`` and ``IS_ANOMALY()`` in expressions read
    (:mod:`transforms.preprocessing.expressions`): each row gets the score under ``SCORE_FIELD``
    and the verdict under ``VERDICT_FIELD``. Scored in batches by the same RunInference handler
    and batching as :class:`ScoreEvents` (an embedded SavedModel or a model server); a row the
    model cannot read becomes a dead letter (stage ``"score"``). Rows keep their event time.
    """

    def __init__(
        self,
        model_handler: ModelHandler,
        *,
        max_batch_size: int = 1024,
        max_batch_wait_s: float | None = 0.05,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._handler = _BatchScoringHandler(model_handler)
        self._batching = (max_batch_size, max_batch_wait_s)

    def expand(self, pairs: beam.PCollection) -> VerdictsOnRows:
        outputs = (
            pairs
            | "Batch" >> beam.ParDo(_BatchWithinBundleFn(*self._batching)).with_output_types(Batch)
            | "RunInference" >> RunInference(self._handler).with_output_types(ScoredBatch)
            | "AttachVerdicts"
            >> beam.ParDo(_AttachFn()).with_outputs(DEAD_LETTER_TAG, main="pairs")
        )
        return VerdictsOnRows(outputs.pairs, outputs[DEAD_LETTER_TAG])


def without_verdicts(row: Row) -> dict[str, Any]:
    """The row without the fields :class:`AttachVerdicts` added (before it is written)."""
    return {k: v for k, v in row.items() if k != SCORE_FIELD and k != VERDICT_FIELD}
