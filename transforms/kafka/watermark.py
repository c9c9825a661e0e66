"""The watermark of one Kafka partition: driven by record timestamps, advanced when idle.

Record timestamps alone stall the watermark on a quiet partition, so downstream windows never
close. The reader therefore also advances it to "now minus a lag" whenever it has caught up with
the partition's end offset. Either way the watermark only moves forward: asking it to go back is
a bug and raises ``ValueError`` (as Beam's own estimators do).

Usage (inside a splittable DoFn)::

    def process(self, element, ...,
                watermark=beam.DoFn.WatermarkEstimatorParam(KafkaWatermarkEstimator.provider())):
        ...
        watermark.advance_to(Timestamp.now() - lag)   # only when caught up
"""

from __future__ import annotations

import dataclasses

from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import Timestamp

from transforms.kafka.partition_plan import PartitionWatch

__all__ = ["KafkaWatermarkEstimator", "KafkaWatermarkEstimatorProvider", "ReaderWatermarkProvider"]


class KafkaWatermarkEstimator(WatermarkEstimator):
    """Watermark = the newest record timestamp seen, or a later idle time set by the reader.

    The state (the watermark itself) travels with every checkpoint, so a resumed restriction
    never starts below where the previous one ended.
    """

    def __init__(self, state: Timestamp | None) -> None:
        self._watermark = state
        self._last_observed: Timestamp | None = None

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        """Called by the runner for every output; keeps the newest timestamp.

        The reader reuses one ``Timestamp`` for a run of equal times, so the identity check skips
        most (slow, pure-Python) comparisons.
        """
        if timestamp is self._last_observed:
            return
        self._last_observed = timestamp
        if self._watermark is None or timestamp > self._watermark:
            self._watermark = timestamp

    def current_watermark(self) -> Timestamp | None:
        return self._watermark

    def get_estimator_state(self) -> Timestamp | None:
        return self._watermark

    def advance_to(self, timestamp: Timestamp) -> None:
        """Move the watermark to ``timestamp``; raise ``ValueError`` if that would go back."""
        if not isinstance(timestamp, Timestamp):
            raise ValueError(f"advance_to expects a Timestamp, got {type(timestamp).__name__}")
        if self._watermark is not None and timestamp < self._watermark:
            raise ValueError(
                f"watermark must not go backwards: asked for {timestamp}, at {self._watermark}"
            )
        self._watermark = timestamp

    @staticmethod
    def provider() -> KafkaWatermarkEstimatorProvider:
        return KafkaWatermarkEstimatorProvider()


class KafkaWatermarkEstimatorProvider(WatermarkEstimatorProvider):
    """Starts every partition with no watermark (the runner treats that as the minimum)."""

    def initial_estimator_state(self, element, restriction) -> None:
        return None

    def create_watermark_estimator(self, estimator_state: Timestamp | None):
        return KafkaWatermarkEstimator(estimator_state)


@dataclasses.dataclass(frozen=True)
class _WatchMark:
    """A partition watch's watermark state (told apart from a partition's plain Timestamp)."""

    timestamp: Timestamp | None


class _WatchWatermarkEstimator(KafkaWatermarkEstimator):
    """A watch's watermark: moved only by the watch itself, never by the times of its records
    (a partition it has not listed yet may hold older ones)."""

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        pass

    def get_estimator_state(self) -> _WatchMark:
        return _WatchMark(self.current_watermark())


class ReaderWatermarkProvider(KafkaWatermarkEstimatorProvider):
    """Partition plans get a :class:`KafkaWatermarkEstimator`, a watch its own kind."""

    def initial_estimator_state(self, element, restriction):
        return _WatchMark(None) if isinstance(element, PartitionWatch) else None

    def create_watermark_estimator(self, estimator_state):
        if isinstance(estimator_state, _WatchMark):
            return _WatchWatermarkEstimator(estimator_state.timestamp)
        return KafkaWatermarkEstimator(estimator_state)
