"""Keep every record a sink writes under the sink's size limit, so no message can fail a bundle.

A sink that refuses a record fails its bundle: a batch job ends in an error, a stream retries the
bundle forever. Two transforms stand before the sinks:

* :class:`FitDeadLetters` cuts dead-letter payloads to ``max_payload_bytes`` and, given the
  sink's limit, further to what fits (the effective cap is the smaller of the two); the letter
  keeps the full payload's length and SHA-256 (:meth:`DeadLetter.truncated`). A letter that
  does not fit even without payload gets a shortened error message; failing that it is logged
  and counted, never written.
* :class:`EncodeWithinLimit` turns output elements (predictions, alerts …) into ``(key, value)``
  records and makes each one too big for the sink a dead letter (stage ``"size"``) instead.

Limits are objects resolved when the DoFn is set up (:class:`FixedSizeLimit`, or
``transforms.kafka.limits.TopicRecordLimit``, which asks the broker).

Usage::

    limit = TopicRecordLimit(config, "predictions")
    sized = predictions | EncodeWithinLimit(limit, key_fn=get_key, value_fn=Prediction.to_json)
    sized.records | WriteToKafka(config, "predictions", key_fn=KEY, value_fn=VALUE)
    (sized.dead_letters
     | FitDeadLetters(512 * 1024, limit=TopicRecordLimit(config, "dlq"),
                      record_bytes=kafka_dead_letter_bytes)
     | WriteToKafka(config, "dlq", key_fn=get_key, value_fn=DeadLetter.to_json))

``.batched()`` takes and gives lists (``ScoreEvents(...).batched()`` predictions).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import operator
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms import progress
from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter

__all__ = [
    "SizeLimit",
    "FixedSizeLimit",
    "FitDeadLetters",
    "EncodeWithinLimit",
    "SizedRecords",
    "fit_dead_letter",
    "kafka_dead_letter_bytes",
    "KEY",
    "VALUE",
    "METRICS_NAMESPACE",
    "STAGE",
]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "kafka_beam_ml.size_limits"
#: Stage of the dead letter of an output record too big for its sink.
STAGE = "size"
#: Error messages longer than this are cut when a letter does not fit without its payload.
_MAX_ERROR_MESSAGE_CHARS = 1024

#: Key and value of an :class:`EncodeWithinLimit` record, for ``WriteToKafka(key_fn, value_fn)``.
KEY = operator.itemgetter(0)
VALUE = operator.itemgetter(1)


class SizeLimit(Protocol):
    """A sink's largest record in bytes, resolved on the worker (it may ask the sink)."""

    def resolve(self) -> int: ...

    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class FixedSizeLimit:
    """A limit known in advance, e.g. BigQuery's row size."""

    max_bytes: int
    name: str = "the sink"

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")

    def resolve(self) -> int:
        return self.max_bytes

    def describe(self) -> str:
        return self.name


def _json_bytes(letter: DeadLetter) -> int:
    return len(letter.to_json())


def kafka_dead_letter_bytes(letter: DeadLetter) -> int:
    """Record size of a letter written to Kafka as key ``letter.key``, value ``to_json()``."""
    return len(letter.key or b"") + len(letter.to_json())


def _fit_payload(
    letter: DeadLetter, max_payload_bytes: int, max_bytes: int, size: Callable[[DeadLetter], int]
) -> DeadLetter | None:
    """``letter`` with the longest payload prefix that fits ``max_bytes``, or None.

    A truncated payload of n bytes (n a multiple of 3) adds exactly 4n/3 base64 characters to
    the letter cut to nothing, whose size is measured.
    """
    if not letter.payload:
        return None
    room = max_bytes - size(letter.truncated(0))
    if room < 0:
        return None
    fitted = letter.truncated(min(max_payload_bytes, room // 4 * 3))
    return fitted if size(fitted) <= max_bytes else None


def fit_dead_letter(
    letter: DeadLetter,
    max_payload_bytes: int,
    max_record_bytes: int | None = None,
    record_bytes: Callable[[DeadLetter], int] | None = None,
) -> DeadLetter | None:
    """``letter`` with its payload cut to ``max_payload_bytes`` and to what fits the sink.

    Args:
        letter: the dead letter.
        max_payload_bytes: the most payload kept (``--deadLetterMaxPayloadBytes``).
        max_record_bytes: the sink's limit on ``record_bytes(letter)``; None: no limit.
        record_bytes: the letter's size as the sink counts it (default: ``len(to_json())``).

    Returns:
        The letter itself when it fits, else a truncated copy (an error message above 1024
        characters is shortened too if the letter does not fit even without payload), or None
        when nothing fits.
    """
    size = record_bytes or _json_bytes
    fitted = letter.truncated(max_payload_bytes)
    if max_record_bytes is None or size(fitted) <= max_record_bytes:
        return fitted
    result = _fit_payload(fitted, max_payload_bytes, max_record_bytes, size)
    message = fitted.error_message
    if result is None and len(message) > _MAX_ERROR_MESSAGE_CHARS:
        cut = f"{message[:_MAX_ERROR_MESSAGE_CHARS]}… ({len(message)} characters)"
        shorter = dataclasses.replace(fitted, error_message=cut)
        if size(shorter) <= max_record_bytes:
            return shorter
        result = _fit_payload(shorter, max_payload_bytes, max_record_bytes, size)
    return result


class _FitDeadLettersFn(beam.DoFn):
    def __init__(
        self,
        max_payload_bytes: int,
        limit: SizeLimit | None,
        record_bytes: Callable[[DeadLetter], int] | None,
    ) -> None:
        self._cap = max_payload_bytes
        self._limit = limit
        self._record_bytes = record_bytes
        self._truncated = Metrics.counter(METRICS_NAMESPACE, "dead_letters_truncated")
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "dead_letters_dropped")

    def setup(self) -> None:
        self._max_bytes = self._limit.resolve() if self._limit is not None else None

    def process(self, letter: DeadLetter) -> Iterator[DeadLetter]:
        fitted = fit_dead_letter(letter, self._cap, self._max_bytes, self._record_bytes)
        if fitted is None:
            self._dropped.inc()
            _LOGGER.error(
                "dead letter dropped: it does not fit %s (%d bytes) even without payload: %s %s "
                "at %s[%s]@%s",
                self._limit.describe(),
                self._max_bytes,
                letter.stage,
                letter.error_type,
                letter.topic,
                letter.partition,
                letter.offset,
            )
            return
        if fitted is not letter:
            self._truncated.inc()
        progress.add(progress.DEAD_LETTERS)
        yield fitted


class FitDeadLetters(beam.PTransform):
    """PCollection[DeadLetter] → the same letters, each cut to fit its sink.

    Args:
        max_payload_bytes: the most payload a letter keeps (> 0).
        limit: the sink's record limit; None (files): only ``max_payload_bytes`` applies.
        record_bytes: a letter's size as the sink counts it (default ``len(to_json())``; Kafka:
            :func:`kafka_dead_letter_bytes`).

    Returns:
        PCollection[DeadLetter]. Counters in ``kafka_beam_ml.size_limits``:
        ``dead_letters_truncated``, ``dead_letters_dropped`` (nothing fits: logged as an error).
    """

    def __init__(
        self,
        max_payload_bytes: int,
        *,
        limit: SizeLimit | None = None,
        record_bytes: Callable[[DeadLetter], int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_payload_bytes, int) or max_payload_bytes <= 0:
            raise ValueError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
        self._fn = _FitDeadLettersFn(max_payload_bytes, limit, record_bytes)

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | "Fit" >> beam.ParDo(self._fn).with_output_types(DeadLetter)


class SizedRecords(NamedTuple):
    """Outputs of :class:`EncodeWithinLimit`."""

    records: beam.PCollection  # (key, value) pairs (Batch of them when batched) that fit
    dead_letters: beam.PCollection  # DeadLetter (stage "size") per element that does not


def _size(key: bytes | None, value: bytes | None) -> int:
    return (len(key) if key else 0) + (len(value) if value else 0)


def _batch_of(fn: Callable[[Any], Any], batch: Any) -> list[Any]:
    """``fn`` of every item, from the batch's columns when ``fn`` can read them (an
    ``on_batch(batch)`` method answering a list rather than None: ``PredictionJson``)."""
    on_batch = getattr(fn, "on_batch", None)
    results = on_batch(batch) if on_batch is not None else None
    return list(map(fn, batch)) if results is None else results


class _EncodeFn(beam.DoFn):
    def __init__(
        self,
        key_fn: Callable[[Any], bytes | None],
        value_fn: Callable[[Any], bytes],
        limit: SizeLimit,
        covered_above: SizeLimit | None,
        batched: bool,
    ) -> None:
        self._key_fn = key_fn
        self._value_fn = value_fn
        self._limit = limit
        self._covered_above = covered_above
        self._batched = batched
        self._oversize = Metrics.counter(METRICS_NAMESPACE, "records_oversize")
        self._covered = Metrics.counter(METRICS_NAMESPACE, "records_oversize_covered")

    def setup(self) -> None:
        self._max_bytes = self._limit.resolve()
        self._cover_bytes = (
            self._covered_above.resolve() if self._covered_above is not None else None
        )

    def process(self, element: Any) -> Iterator[Any]:
        if not self._batched:
            key, value = self._key_fn(element), self._value_fn(element)
            size = _size(key, value)
            if size <= self._max_bytes:
                yield key, value
            else:
                yield from self._reject(element, key, value, size)
            return
        keys = _batch_of(self._key_fn, element)
        values = _batch_of(self._value_fn, element)
        if not values:
            return
        longest_key = max((len(k) for k in keys if k), default=0)
        if longest_key + max(map(len, values)) <= self._max_bytes:  # all fit: the usual case
            yield Batch(zip(keys, values, strict=True))
            return
        records = Batch()
        for item, key, value in zip(element, keys, values, strict=True):
            size = _size(key, value)
            if size <= self._max_bytes:
                records.append((key, value))
            else:
                yield from self._reject(item, key, value, size)
        if records:
            yield records

    def _reject(self, element: Any, key: Any, value: Any, size: int) -> Iterator[Any]:
        if self._cover_bytes is not None and size > self._cover_bytes:
            self._covered.inc()  # the other sink's guard dead-letters this element already
            return
        self._oversize.inc()
        message = (
            f"{type(element).__name__} record of {size} bytes (key + value) exceeds the "
            f"{self._max_bytes}-byte record limit of {self._limit.describe()}"
        )
        letter = DeadLetter(
            stage=STAGE,
            error_type="RecordTooLarge",
            error_message=message,
            payload=value.encode("utf-8") if isinstance(value, str) else value,
            key=key.encode("utf-8") if isinstance(key, str) else key,
            topic=getattr(element, "topic", None),
            partition=getattr(element, "partition", None),
            offset=getattr(element, "offset", None),
        )
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)


class EncodeWithinLimit(beam.PTransform):
    """PCollection[element] → :class:`SizedRecords`: ``(key, value)`` records that fit the sink,
    and a dead letter for each element whose record does not.

    The dead letter (stage ``"size"``, error ``RecordTooLarge``) carries the encoded value as
    payload, the key, and the element's ``topic``/``partition``/``offset`` attributes if it has
    them (a :class:`~transforms.inference.scoring.Prediction` has its input's). Write the records
    with ``WriteToKafka(config, topic, key_fn=KEY, value_fn=VALUE)``: they are encoded once.

    Args:
        limit: the sink's largest key + value, e.g. ``TopicRecordLimit(config, topic)``.
        key_fn: element → key bytes (or None).
        value_fn: element → value bytes.
        covered_above: for a second sink of elements another :class:`EncodeWithinLimit`
            dead-letters above this limit (alerts are a subset of the predictions): records
            larger than it are dropped without a second dead letter (counter
            ``records_oversize_covered``).

    Returns:
        :class:`SizedRecords`; counter ``records_oversize`` in ``kafka_beam_ml.size_limits``.
    """

    def __init__(
        self,
        limit: SizeLimit,
        *,
        key_fn: Callable[[Any], bytes | None],
        value_fn: Callable[[Any], bytes],
        covered_above: SizeLimit | None = None,
    ) -> None:
        super().__init__()
        for name, fn in (("key_fn", key_fn), ("value_fn", value_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._args = (key_fn, value_fn, limit, covered_above)
        self._batched = False

    def batched(self) -> EncodeWithinLimit:
        """The same on lists: a :class:`Batch` of the fitting records per input list (none if
        nothing fits), dead letters single."""
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def expand(self, elements: beam.PCollection) -> SizedRecords:
        encode = beam.ParDo(_EncodeFn(*self._args, self._batched))
        if self._batched:
            encode = encode.with_output_types(Batch, **{DEAD_LETTER_TAG: DeadLetter})
        outputs = elements | "Encode" >> encode.with_outputs(DEAD_LETTER_TAG, main="records")
        return SizedRecords(outputs.records, outputs[DEAD_LETTER_TAG])
