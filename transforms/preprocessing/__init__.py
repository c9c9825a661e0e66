"""Row-to-row preprocessing: KSQL-style filter/project, enrich-join, windows, tf.Transform.

Usage::

    from transforms.preprocessing import Filter, Project

    kept = rows | Filter("Amount > 0 and Time >= 3600")
    projected = kept.rows | Project(["Time", "Amount", "Amount * 100 AS cents"])

The tf.Transform names (:class:`AnalyzeAndWriteTransform`, :class:`ApplySavedTransform`) are
loaded on first use: they import TensorFlow, which the other stages never need.
"""

from typing import Any

from transforms.preprocessing.enrich import (
    BigQueryReference,
    EnrichWithSideInput,
    FileReference,
    ReferenceTable,
)
from transforms.preprocessing.expressions import Expr
from transforms.preprocessing.filter_project import Filter, Project
from transforms.preprocessing.row_stage import RowsAndDeadLetters
from transforms.preprocessing.window_aggregate import (
    Count,
    CountDistinct,
    Max,
    Mean,
    Min,
    Session,
    Sliding,
    Sum,
    Tumbling,
    WindowedAggregate,
    WithEventTime,
)

_TENSORFLOW_NAMES = ("AnalyzeAndWriteTransform", "ApplySavedTransform")

__all__ = [
    "AnalyzeAndWriteTransform",
    "ApplySavedTransform",
    "BigQueryReference",
    "Count",
    "CountDistinct",
    "EnrichWithSideInput",
    "Expr",
    "FileReference",
    "Filter",
    "Max",
    "Mean",
    "Min",
    "Project",
    "ReferenceTable",
    "RowsAndDeadLetters",
    "Session",
    "Sliding",
    "Sum",
    "Tumbling",
    "WindowedAggregate",
    "WithEventTime",
]


def __getattr__(name: str) -> Any:
    if name in _TENSORFLOW_NAMES:
        from transforms.preprocessing import tft

        return getattr(tft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
