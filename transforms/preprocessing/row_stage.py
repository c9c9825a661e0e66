"""Row-wise preprocessing stages whose failures either raise or become dead letters.

A user callable that fails on a row (a typo'd field, a division by zero) is a bug, so by default
the error propagates with a message naming the stage. ``stage.with_dead_letters()`` opts in to
routing such rows to a :class:`~transforms.dead_letter.DeadLetter` output instead (payload = the
row as JSON), for pipelines that must keep running; the stage then returns
:class:`RowsAndDeadLetters`. ``stage.batched()`` runs the same stage on batches (lists) of rows.

Counters live in namespace ``kafka_beam_ml.preprocess`` as ``<stage>.<outcome>``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms.batch import Batch
from transforms.dead_letter import DEAD_LETTER_TAG, DeadLetter
from transforms.decoding.rejection import Rejected

__all__ = ["RowStage", "RowOp", "RowsAndDeadLetters", "RowStageError", "METRICS_NAMESPACE"]

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "kafka_beam_ml.preprocess"


class RowsAndDeadLetters(NamedTuple):
    """Outputs of a stage built with ``with_dead_letters()``."""

    rows: beam.PCollection
    dead_letters: beam.PCollection


class RowStageError(RuntimeError):
    """A row made a stage's user code fail (raised when dead letters are not enabled)."""


class RowOp:
    """The picklable per-row logic of a stage (kept apart from the PTransform, which is not)."""

    stage = "row"
    #: Set by the stage: whether failures become dead letters (an op may act on it).
    routes_dead_letters = False

    def setup(self) -> None:
        """Create Beam counters on the worker (called from ``DoFn.setup``)."""

    def __call__(self, row: Mapping[str, Any], *side: Any) -> Iterable[dict[str, Any]]:
        raise NotImplementedError

    def on_batch(self, rows: Sequence[Any], *side: Any) -> Sequence[Any] | None:
        """The output rows of a whole batch in one go (e.g. column-wise), or None to have the
        batch taken row by row; only for batches no row of which fails (a failing row is
        handled, raised or dead-lettered, by the row-by-row path)."""
        return None


class _RowFn(beam.DoFn):
    """Runs ``op(row, *side)`` for each row; routes failures to dead letters when asked to."""

    def __init__(self, op: RowOp) -> None:
        self._op = op
        self._dead = None

    def setup(self) -> None:
        self._dead = Metrics.counter(METRICS_NAMESPACE, f"{self._op.stage}.dead_letters")
        self._op.setup()

    def process(self, row, *side):  # unannotated: Beam would type-check *side as a tuple
        try:
            yield from self._op(row, *side)
        except Exception as err:  # noqa: BLE001 - user callables may raise anything
            yield self._failed(row, err)

    def _failed(self, row: Any, err: Exception) -> pvalue.TaggedOutput:
        """The row's dead letter, or RowStageError when dead letters are not enabled."""
        if not self._op.routes_dead_letters:
            raise RowStageError(
                f"{self._op.stage} stage failed on a row: {type(err).__name__}: {err}"
            ) from err
        self._dead.inc()
        _LOGGER.debug(
            "%s stage dead-lettered a row: %s: %s", self._op.stage, type(err).__name__, err
        )
        reason = err.reason if isinstance(err, Rejected) else type(err).__name__
        message = err.message if isinstance(err, Rejected) else str(err)
        return pvalue.TaggedOutput(
            DEAD_LETTER_TAG, DeadLetter.from_row(row, self._op.stage, message, reason)
        )


class _BatchRowFn(_RowFn):
    """The same op over a batch of rows: one output batch (if any row is left), dead letters
    one by one; Beam's per-element cost is paid per batch."""

    def process(self, rows, *side):
        op = self._op
        whole = op.on_batch(rows, *side)
        if whole is not None:
            if whole:
                yield whole
            return
        out = Batch()
        for row in rows:
            try:
                out.extend(op(row, *side))
            except Exception as err:  # noqa: BLE001 - user callables may raise anything
                yield self._failed(row, err)
        if out:
            yield out


class RowStage(beam.PTransform):
    """Base of Filter, Project, EnrichWithSideInput: a :class:`RowOp` applied with ParDo."""

    def __init__(self, op: RowOp, label: str | None = None) -> None:
        super().__init__(label)
        self._op = op
        self._route_dead_letters = False
        self._batched = False

    def with_dead_letters(self) -> RowStage:
        """The same stage, returning :class:`RowsAndDeadLetters` instead of raising on bad rows."""
        clone = copy.copy(self)
        clone._route_dead_letters = True
        return clone

    def batched(self) -> RowStage:
        """The same stage on batches of rows (lists, e.g. ``DecodeAndValidate(...).batched()``):
        each input batch gives one :class:`~transforms.batch.Batch` of output rows (none when no
        row is left); dead letters stay single."""
        clone = copy.copy(self)
        clone._batched = True
        return clone

    def expand(self, rows: beam.PCollection):
        return self._run(rows)

    def _run(self, rows: beam.PCollection, *side_inputs: Any):
        op = copy.copy(self._op)
        op.routes_dead_letters = self._route_dead_letters
        if self._batched:
            fn = beam.ParDo(_BatchRowFn(op), *side_inputs).with_output_types(Batch)
        else:
            fn = beam.ParDo(_RowFn(op), *side_inputs)
        step = self._op.stage.capitalize()
        if not self._route_dead_letters:
            return rows | step >> fn
        outputs = rows | step >> fn.with_outputs(DEAD_LETTER_TAG, main="rows")
        return RowsAndDeadLetters(outputs.rows, outputs[DEAD_LETTER_TAG])
