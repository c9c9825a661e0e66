"""``Batch``: a list of elements passed between Beam steps as one element, sized cheaply.

Why a type of its own: Beam samples the encoded size of elements for its metrics, and the
default estimate of a list encodes every item (a pickle per Kafka record), which cost ~10 % of
the scoring pipeline's time. :class:`BatchCoder`, registered for :class:`Batch`, estimates from
the first item instead. Declare it as the output type of steps emitting batches::

    beam.ParDo(MyBatchingFn()).with_output_types(Batch)
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from apache_beam import coders

__all__ = ["Batch", "BatchCoder", "BatchView"]


class Batch(list):
    """A list of elements handled together (a poll's records, a model call's rows)."""


class BatchView(Sequence):
    """A batch held in another form (columns) that stands for the :class:`Batch` of its items:
    equal to any sequence of the same items, pickled as that Batch (so another process gets
    plain data), unhashable like a list. Subclasses give ``__len__`` and ``__getitem__``."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return Batch, (list(self),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class BatchCoder(coders.Coder):
    """Pickles batches; estimates a batch's size as its first item's times its length.

    The first item of a batch of batches is estimated the same way, not pickled whole; a batch
    with an ``estimate_bytes()`` method (``ColumnarPairs``) gives its own.
    """

    def encode(self, value: Batch) -> bytes:
        return pickle.dumps(list(value), pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Batch:
        return Batch(pickle.loads(encoded))  # noqa: S301 - bytes this coder wrote

    def estimate_size(self, value: Batch) -> int:
        own = getattr(value, "estimate_bytes", None)  # a batch that knows (ColumnarPairs)
        if own is not None:
            return own()
        if not value:
            return 0
        first = value[0]
        if type(first) is Batch or hasattr(first, "estimate_bytes"):  # chunks of a model call
            return self.estimate_size(first) * len(value)
        return len(pickle.dumps(first, pickle.HIGHEST_PROTOCOL)) * len(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> type:
        return Batch


coders.registry.register_coder(Batch, BatchCoder)
