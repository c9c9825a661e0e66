"""KSQL's ``WHERE`` and ``SELECT``: keep rows matching a predicate; select, rename, compute columns.

Usage::

    fast = rows | Filter("speed_kmh > 120")                     # or Filter(lambda r: ...)
    slim = fast | Project("car_id", "event_time", speed="speed_kmh",
                          speed_ms=lambda r: r["speed_kmh"] / 3.6)
    # keep running on rows the callables fail on:
    result = rows | Filter(lambda r: r["a"] / r["b"] > 1).with_dead_letters()
    result.rows, result.dead_letters

A predicate or computed column given as a string is an
:class:`~transforms.preprocessing.expressions.Expr`.
Rows the filter rejects are counted (``filter.rejected``), not dead-lettered: that is the filter's
purpose. Failures of the callables raise, or with ``with_dead_letters()`` become dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from apache_beam.metrics import Metrics

from transforms.decoding.columnar import StructRows
from transforms.preprocessing.expressions import Expr
from transforms.preprocessing.row_stage import METRICS_NAMESPACE, RowOp, RowStage

__all__ = ["Filter", "Project"]

Predicate = Callable[[Mapping[str, Any]], Any]
Column = str | Callable[[Mapping[str, Any]], Any]


class _FilterOp(RowOp):
    stage = "filter"

    def __init__(self, predicate: Predicate) -> None:
        self._predicate = predicate
        self._rejected = None

    def setup(self) -> None:
        self._rejected = Metrics.counter(METRICS_NAMESPACE, "filter.rejected")

    def __call__(self, row: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
        if self._predicate(row):
            return (row,)
        self._rejected.inc()
        return ()

    def on_batch(self, rows: Sequence[Any]) -> StructRows | None:
        """An expression over rows kept column-wise: evaluated on the structs, the kept ones
        staying column-wise (None otherwise, or when a row fails)."""
        if type(rows) is not StructRows or not isinstance(self._predicate, Expr):
            return None
        test = self._predicate.on_structs(rows.layout.attributes)
        if test is None:
            return None
        try:
            kept = rows.compress(list(map(test, rows.structs)))
        except Exception:  # noqa: BLE001 - the row-by-row path raises or dead-letters it
            return None
        if len(kept) < len(rows):
            self._rejected.inc(len(rows) - len(kept))
        return kept


class Filter(RowStage):
    """Keep the rows for which ``predicate(row)`` is truthy (KSQL ``WHERE``).

    Args:
        predicate: a callable ``row -> bool`` or an expression string (see
            :mod:`transforms.preprocessing.expressions`).
    """

    def __init__(self, predicate: Predicate | str, *, label: str | None = None) -> None:
        if isinstance(predicate, str):
            predicate = Expr(predicate)
        elif not callable(predicate):
            raise TypeError(f"Filter needs a callable or an expression string, got {predicate!r}")
        super().__init__(_FilterOp(predicate), label)


class _ProjectOp(RowOp):
    stage = "project"

    def __init__(self, columns: tuple[tuple[str, Column], ...]) -> None:
        self._columns = columns

    def __call__(self, row: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
        out = {}
        for name, source in self._columns:
            if isinstance(source, str):
                if source not in row:
                    raise KeyError(f"Project: field {source!r} is not in the row")
                out[name] = row[source]
            else:
                out[name] = source(row)
        return (out,)


class Project(RowStage):
    """Build new rows from selected, renamed and computed columns (KSQL ``SELECT``), in order.

    ``Project("a", "b")`` selects; ``Project(new="old")`` renames; ``Project(x=callable)`` or
    ``Project({"x": Expr("a * 2")})`` computes. Positional arguments may be names or mappings
    ``{new_name: old_name | callable}`` (for names that are not Python identifiers).
    A source field missing from a row is an error (raised, or a dead letter).
    """

    def __init__(
        self, *fields: str | Mapping[str, Column], label: str | None = None, **columns: Column
    ) -> None:
        spec: list[tuple[str, Column]] = []
        for item in fields:
            if isinstance(item, str):
                spec.append((item, item))
            elif isinstance(item, Mapping):
                spec.extend(item.items())
            else:
                raise TypeError(f"Project: expected a field name or a mapping, got {item!r}")
        spec.extend(columns.items())
        names = [name for name, _ in spec]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Project: output columns named twice: {duplicates}")
        if not spec:
            raise ValueError("Project needs at least one column")
        for name, source in spec:
            if not (isinstance(source, str) or callable(source)):
                raise TypeError(f"Project: column {name!r} must be a field name or a callable")
        super().__init__(_ProjectOp(tuple(spec)), label)
