"""KSQL's windowed ``GROUP BY … HAVING``: per-key aggregates over tumbling/sliding/session windows.

Usage (the seeds' example: sensor events per car per 2 minutes, keep cars with more than 5)::

    counts = (rows
              | WithEventTime("event_time")            # window on the event's own time
              | WindowedAggregate(key="car_id", window=Tumbling(120),
                                  aggregates={"n": Count(), "avg_speed": Mean("speed_kmh")},
                                  having="n > 5", allowed_lateness_s=60))
    # → {"car_id": "car-7", "window_start": "2026-11-22T01:02:00.000000Z",
    #    "window_end": "2026-11-22T01:04:00.000000Z", "n": 9, "avg_speed": 87.1}

Without :class:`WithEventTime` the element timestamps are used (the Kafka record time, as set by
ReadFromKafka). A pane fires when the watermark passes the window end; with
``allowed_lateness_s`` each late element fires the window again with the **updated** aggregate
(accumulating panes), so consumers should upsert on (key, window_start). Later data is dropped by
the runner (Beam's ``droppedDueToLateness`` counter). Aggregates ignore nulls like SQL;
``Count()`` counts rows. ``having`` (a callable or an expression string) filters output rows.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms.decoding.row_validation import format_timestamp
from transforms.preprocessing.expressions import Expr
from transforms.preprocessing.row_stage import METRICS_NAMESPACE, RowOp, RowStage

__all__ = [
    "WindowedAggregate",
    "WithEventTime",
    "Tumbling",
    "Sliding",
    "Session",
    "Aggregate",
    "Count",
    "CountDistinct",
    "Sum",
    "Mean",
    "Min",
    "Max",
    "WINDOW_COLUMNS",
]

#: Columns every output row has besides the key and the aggregates.
WINDOW_COLUMNS = ("window_start", "window_end")

Value = str | Callable[[Mapping[str, Any]], Any]


# -- windows ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size_s`` seconds (KSQL ``WINDOW TUMBLING``)."""

    size_s: float

    def __post_init__(self) -> None:
        if self.size_s <= 0:
            raise ValueError(f"window size must be positive, got {self.size_s}")

    def window_fn(self) -> window.WindowFn:
        return window.FixedWindows(self.size_s)


@dataclasses.dataclass(frozen=True)
class Sliding:
    """Windows of ``size_s`` seconds starting every ``period_s`` (KSQL ``WINDOW HOPPING``)."""

    size_s: float
    period_s: float

    def __post_init__(self) -> None:
        if self.size_s <= 0 or self.period_s <= 0:
            raise ValueError(
                f"size and period must be positive, got {self.size_s}, {self.period_s}"
            )
        if self.period_s > self.size_s:
            raise ValueError(f"period {self.period_s} s > size {self.size_s} s would skip events")

    def window_fn(self) -> window.WindowFn:
        return window.SlidingWindows(self.size_s, self.period_s)


@dataclasses.dataclass(frozen=True)
class Session:
    """Per-key activity windows closed by a gap of ``gap_s`` seconds (KSQL ``WINDOW SESSION``)."""

    gap_s: float

    def __post_init__(self) -> None:
        if self.gap_s <= 0:
            raise ValueError(f"session gap must be positive, got {self.gap_s}")

    def window_fn(self) -> window.WindowFn:
        return window.Sessions(self.gap_s)


# -- aggregates ---------------------------------------------------------------------------------


class Aggregate:
    """One aggregate column: a tiny CombineFn over the value of ``field`` (name or callable)."""

    def __init__(self, field: Value | None = None) -> None:
        if field is not None and not (isinstance(field, str) or callable(field)):
            raise TypeError(f"{type(self).__name__}: field must be a name or a callable")
        self.field = field

    def value(self, row: Mapping[str, Any]) -> Any:
        if isinstance(self.field, str):
            if self.field not in row:
                raise KeyError(f"{type(self).__name__}: field {self.field!r} is not in the row")
            return row[self.field]
        return self.field(row)

    def create(self) -> Any:
        raise NotImplementedError

    def add(self, acc: Any, row: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def merge(self, accs: Sequence[Any]) -> Any:
        raise NotImplementedError

    def extract(self, acc: Any) -> Any:
        return acc

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.field!r})" if self.field else f"{type(self).__name__}()"
        )


class Count(Aggregate):
    """Rows in the window; ``Count(field)`` counts the non-null values of ``field``."""

    def create(self) -> int:
        return 0

    def add(self, acc: int, row: Mapping[str, Any]) -> int:
        return acc + (1 if self.field is None or self.value(row) is not None else 0)

    def merge(self, accs: Sequence[int]) -> int:
        return sum(accs)


class _NeedsField(Aggregate):
    def __init__(self, field: Value) -> None:
        if field is None:
            raise ValueError(f"{type(self).__name__} needs a field")
        super().__init__(field)


class Sum(_NeedsField):
    """Sum of the non-null values (``None`` if there are none, like SQL)."""

    def create(self) -> Any:
        return None

    def add(self, acc: Any, row: Mapping[str, Any]) -> Any:
        value = self.value(row)
        if value is None:
            return acc
        return value if acc is None else acc + value

    def merge(self, accs: Sequence[Any]) -> Any:
        present = [a for a in accs if a is not None]
        return sum(present[1:], present[0]) if present else None


class Mean(_NeedsField):
    """Mean of the non-null values as a float (``None`` if there are none)."""

    def create(self) -> tuple[float, int]:
        return (0.0, 0)

    def add(self, acc: tuple[float, int], row: Mapping[str, Any]) -> tuple[float, int]:
        value = self.value(row)
        return acc if value is None else (acc[0] + value, acc[1] + 1)

    def merge(self, accs: Sequence[tuple[float, int]]) -> tuple[float, int]:
        return (sum(a[0] for a in accs), sum(a[1] for a in accs))

    def extract(self, acc: tuple[float, int]) -> float | None:
        return acc[0] / acc[1] if acc[1] else None


class _Extreme(_NeedsField):
    _pick: Callable[..., Any] = min

    def create(self) -> Any:
        return None

    def add(self, acc: Any, row: Mapping[str, Any]) -> Any:
        return self.merge((acc, self.value(row)))

    def merge(self, accs: Sequence[Any]) -> Any:
        present = [a for a in accs if a is not None]
        return type(self)._pick(present) if present else None


class Min(_Extreme):
    """Smallest non-null value."""

    _pick = min


class Max(_Extreme):
    """Largest non-null value."""

    _pick = max


class CountDistinct(_NeedsField):
    """Number of distinct non-null values (exact: keeps the set in memory)."""

    def create(self) -> set:
        return set()

    def add(self, acc: set, row: Mapping[str, Any]) -> set:
        value = self.value(row)
        if value is not None:
            acc.add(value)
        return acc

    def merge(self, accs: Sequence[set]) -> set:
        return set().union(*accs)

    def extract(self, acc: set) -> int:
        return len(acc)


class _AggregatesFn(beam.CombineFn):
    """All aggregate columns in one pass: the accumulator is a list, one slot per aggregate."""

    def __init__(self, aggregates: tuple[tuple[str, Aggregate], ...]) -> None:
        self._aggregates = aggregates

    def create_accumulator(self) -> list[Any]:
        return [agg.create() for _, agg in self._aggregates]

    def add_input(self, acc: list[Any], row: Mapping[str, Any]) -> list[Any]:
        return [agg.add(a, row) for a, (_, agg) in zip(acc, self._aggregates, strict=True)]

    def merge_accumulators(self, accs) -> list[Any]:
        accs = list(accs)
        return [agg.merge([a[i] for a in accs]) for i, (_, agg) in enumerate(self._aggregates)]

    def extract_output(self, acc: list[Any]) -> dict[str, Any]:
        return {name: agg.extract(a) for a, (name, agg) in zip(acc, self._aggregates, strict=True)}


# -- the transforms -------------------------------------------------------------------------------


def _window_time(moment: Timestamp) -> str:
    try:
        return format_timestamp(moment.to_utc_datetime(has_tz=True))
    except (OverflowError, ValueError) as err:
        raise ValueError(
            f"window bound {moment} is not a representable time: the rows carry no event time "
            "(e.g. beam.Create without timestamps); read them with ReadFromKafka or apply "
            "WithEventTime(field) before WindowedAggregate"
        ) from err


class _ToRowFn(beam.DoFn):
    """(key, aggregates) in a window → output row with key, window bounds; applies HAVING."""

    def __init__(self, key: tuple[str, ...], having: Callable[[Mapping[str, Any]], Any] | None):
        self._key = key
        self._having = having
        self._filtered = None

    def setup(self) -> None:
        self._filtered = Metrics.counter(METRICS_NAMESPACE, "aggregate.having_rejected")

    def process(self, element, win=beam.DoFn.WindowParam):
        key, values = element
        row: dict[str, Any] = dict(zip(self._key, key, strict=True))
        row["window_start"] = _window_time(win.start)
        row["window_end"] = _window_time(win.end)
        row.update(values)
        if self._having is None or self._having(row):
            yield row
        else:
            self._filtered.inc()


class WindowedAggregate(beam.PTransform):
    """Aggregate rows per key and window, then keep rows passing ``having``.

    Args:
        key: field name(s) to group by; ``()`` for one group per window.
        window: :class:`Tumbling`, :class:`Sliding` or :class:`Session`.
        aggregates: ``{column: Aggregate}``, e.g. ``{"n": Count(), "avg": Mean("speed_kmh")}``.
        having: callable or expression string on the output row, e.g. ``"n > 5"``.
        allowed_lateness_s: how long after the window end late rows still update it.

    Returns: PCollection of dict rows ``{key..., window_start, window_end, aggregates...}``
    (times RFC 3339 UTC), timestamped at the window end.
    """

    def __init__(
        self,
        *,
        key: str | Sequence[str],
        window: Tumbling | Sliding | Session,
        aggregates: Mapping[str, Aggregate],
        having: Callable[[Mapping[str, Any]], Any] | str | None = None,
        allowed_lateness_s: float = 0,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._key = (key,) if isinstance(key, str) else tuple(key)
        if not isinstance(window, Tumbling | Sliding | Session):
            raise TypeError(f"window must be Tumbling, Sliding or Session, got {window!r}")
        if not aggregates:
            raise ValueError("aggregates must name at least one column")
        for name, agg in aggregates.items():
            if not isinstance(agg, Aggregate):
                raise TypeError(f"aggregate {name!r} must be an Aggregate, got {agg!r}")
        clash = set(aggregates) & (set(self._key) | set(WINDOW_COLUMNS))
        if clash:
            raise ValueError(f"aggregate names clash with key/window columns: {sorted(clash)}")
        if allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {allowed_lateness_s}")
        self._window = window
        self._aggregates = tuple(aggregates.items())
        self._having = Expr(having) if isinstance(having, str) else having
        self._lateness = allowed_lateness_s

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        key = self._key
        return (
            rows
            | "KeyRows" >> beam.Map(lambda row: (tuple(row[k] for k in key), row))
            | "Window"
            >> beam.WindowInto(
                self._window.window_fn(),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=Duration.of(self._lateness),
            )
            | "Aggregate" >> beam.CombinePerKey(_AggregatesFn(self._aggregates))
            | "ToRows" >> beam.ParDo(_ToRowFn(key, self._having))
        )


class _EventTimeOp(RowOp):
    stage = "event_time"

    def __init__(self, field: str) -> None:
        self._field = field
        self._missing = None

    def setup(self) -> None:
        self._missing = Metrics.counter(METRICS_NAMESPACE, "event_time.missing")

    def __call__(self, row: Mapping[str, Any]):
        value = row.get(self._field)
        if value is None:
            self._missing.inc()  # keep the element's timestamp (the Kafka record time)
            yield row
            return
        if isinstance(value, str):
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError(f"{self._field}={value!r} has no UTC offset")
            stamp = Timestamp.from_utc_datetime(moment.astimezone(datetime.UTC))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            stamp = Timestamp.of(value)
        else:
            raise TypeError(f"{self._field}={value!r} is not an RFC 3339 time or epoch seconds")
        yield window.TimestampedValue(row, stamp)


class WithEventTime(RowStage):
    """Set each row's event time from ``field`` (an RFC 3339 TIMESTAMP or epoch seconds).

    A row whose field is null keeps its current timestamp (counted as ``event_time.missing``).
    """

    def __init__(self, field: str, *, label: str | None = None) -> None:
        if not field:
            raise ValueError("WithEventTime needs a field name")
        super().__init__(_EventTimeOp(field), label)

    def batched(self) -> WithEventTime:
        """Refused: a batch has one timestamp, so rows in it cannot each get their own."""
        raise TypeError("WithEventTime works row by row: apply it before batching")
