"""Decoded batches kept column-wise: the decoder's structs, read a column at a time.

Why: a JSON batch decodes into one msgspec struct per event, and turning each into a row dict
cost as much again as the decoding (~0.8 µs of a 33-field row's ~2.6 µs). A step that reads a
few columns (the scorer: its features and the event id) reads them straight from the structs;
anything else sees the same dicts as ever, built when it asks for them.

- :class:`StructRows`: a sequence of rows (dicts on access) with :meth:`~StructRows.column`,
  :meth:`~StructRows.matrix` and :meth:`~StructRows.tuples`
  (``DecodeAndValidate(...).columnar()``); the exports filter, encode and write them whole.
- :class:`ColumnarPairs`: the ``(KafkaRecord, row)`` pairs of one batch
  (``DecodeAndValidate(...).with_records().columnar()``), i.e. the records beside a
  :class:`StructRows`.

Both are :class:`~transforms.batch.BatchView`s of the lists they replace (length, iteration,
indexing, equality with a list) and pickle as those lists: a runner that moves them between
processes passes plain rows.
"""

from __future__ import annotations

import itertools
import operator
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np

from transforms.batch import BatchView
from transforms.kafka.record import KafkaRecord

__all__ = ["ColumnarPairs", "StructLayout", "StructRows"]


class StructLayout(Protocol):
    """How a decoder's structs hold a schema's rows: one attribute per field, in ``names``
    order (``msgspec.structs.astuple`` gives the values in that order), each value already of
    its field's schema type."""

    names: tuple[str, ...]
    attributes: Mapping[str, str]  # field name → struct attribute

    def to_row(self, struct: Any) -> dict[str, Any]: ...


class StructRows(BatchView):
    """Rows held as structs; ``rows[i]`` is the row dict, built on access."""

    __slots__ = ("_structs", "_layout")

    def __init__(self, structs: list[Any], layout: StructLayout) -> None:
        self._structs = structs
        self._layout = layout

    def __len__(self) -> int:
        return len(self._structs)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return StructRows(self._structs[index], self._layout)
        return self._layout.to_row(self._structs[index])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self._layout.to_row, self._structs)

    @property
    def structs(self) -> list[Any]:
        """The decoder's structs, one per row (read-only by convention)."""
        return self._structs

    @property
    def layout(self) -> StructLayout:
        """How the structs hold the rows."""
        return self._layout

    def tuples(self) -> list[tuple[Any, ...]]:
        """Each row's values as a tuple, in ``layout.names`` order."""
        return list(map(msgspec.structs.astuple, self._structs))

    def compress(self, keep: Iterable[Any]) -> StructRows:
        """The rows whose ``keep`` flag is truthy, in order."""
        return StructRows(list(itertools.compress(self._structs, keep)), self._layout)

    def estimate_bytes(self) -> int:
        """A cheap size for Beam's metrics: the first row's pickled size times the rows."""
        if not self._structs:
            return 0
        first = pickle.dumps(msgspec.structs.astuple(self._structs[0]), pickle.HIGHEST_PROTOCOL)
        return len(first) * len(self._structs)

    @property
    def width(self) -> int:
        """Fields per row."""
        return len(self._layout.names)

    def _getter(self, names: Sequence[str]) -> Callable[[Any], Any]:
        attributes = self._layout.attributes
        missing = [name for name in names if name not in attributes]
        if missing:
            raise KeyError(f"fields {missing} are not in the rows' schema")
        return operator.attrgetter(*(attributes[name] for name in names))

    def column(self, name: str) -> list[Any]:
        """Every row's ``name`` value; None for each row if the schema lacks the field (as
        ``row.get(name)``)."""
        if name not in self._layout.attributes:
            return [None] * len(self._structs)
        return list(map(self._getter((name,)), self._structs))

    def matrix(self, features: Sequence[str]) -> np.ndarray:
        """float32 ``[rows, features]``, converted as
        :func:`~transforms.inference.model_handler.feature_matrix` converts row dicts (null →
        NaN); KeyError for a feature the schema lacks."""
        getter = self._getter(features)
        values = map(getter, self._structs)
        if len(features) > 1:
            values = itertools.chain.from_iterable(values)
        count = len(self._structs)
        return np.fromiter(values, np.float32, count * len(features)).reshape(count, len(features))

    @staticmethod
    def concat(parts: Sequence[StructRows]) -> StructRows:
        """One StructRows of ``parts`` in order (all decoded with the same layout)."""
        if len(parts) == 1:
            return parts[0]
        structs = list(itertools.chain.from_iterable(part._structs for part in parts))
        return StructRows(structs, parts[0]._layout)


class ColumnarPairs(BatchView):
    """A batch of ``(KafkaRecord, row)`` pairs held as the records and a :class:`StructRows`.

    Iterating or indexing gives the pairs (row dicts built then); :attr:`records` and
    :attr:`rows` give the columns without building them.
    """

    __slots__ = ("records", "rows")

    def __init__(self, records: list[KafkaRecord], rows: StructRows) -> None:
        if len(records) != len(rows):
            raise ValueError(f"{len(records)} records for {len(rows)} rows")
        self.records = records
        self.rows = rows

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return ColumnarPairs(self.records[index], self.rows[index])
        return self.records[index], self.rows[index]

    def __iter__(self) -> Iterator[tuple[KafkaRecord, dict[str, Any]]]:
        return zip(self.records, self.rows, strict=True)

    def estimate_bytes(self) -> int:
        """A cheap size for Beam's metrics: the payloads' mean (of the first 16) plus 64 bytes,
        per record."""
        sample = self.records[:16]
        if not sample:
            return 0
        return (sum(len(record.value or b"") for record in sample) // len(sample) + 64) * len(self)

    @staticmethod
    def concat(parts: Sequence[ColumnarPairs]) -> ColumnarPairs:
        """One batch of ``parts`` in order."""
        if len(parts) == 1:
            return parts[0]
        records = list(itertools.chain.from_iterable(part.records for part in parts))
        return ColumnarPairs(records, StructRows.concat([part.rows for part in parts]))
