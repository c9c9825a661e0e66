"""Counters of a finished test pipeline, for tests that check what a transform reports."""

from __future__ import annotations

import collections

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

__all__ = ["committed_counters"]


def committed_counters(result: PipelineResult, namespace: str) -> dict[str, int]:
    """Committed counter values of ``namespace`` by metric name, summed over the steps."""
    totals: collections.Counter[str] = collections.Counter()
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    for counter in query["counters"]:
        totals[counter.key.metric.name] += counter.committed
    return dict(totals)
