"""The local runner's per-bundle metrics are consolidated eagerly and still add up."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import fn_runner

from pipelines.common import bundle_metrics


class _Count(beam.DoFn):
    def __init__(self) -> None:
        self._seen = Metrics.counter("test_bundle_metrics", "seen")

    def process(self, element: int):
        self._seen.inc()
        yield element


def test_metrics_of_many_bundles_are_kept_as_one_list_per_stage_and_add_up():
    bundle_metrics.install()
    assert isinstance(fn_runner.consolidate_monitoring_infos(iter([])), list)
    p = beam.Pipeline(runner=fn_runner.FnApiRunner())
    _ = (
        p
        | beam.Create(range(500))
        | beam.Reshuffle()  # several bundles downstream
        | beam.ParDo(_Count())
    )
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    assert sum(c.committed for c in counters) == 500
