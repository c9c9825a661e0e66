"""The local runner's per-bundle metrics are consolidated eagerly and still add up."""

from __future__ import annotations

import itertools

import apache_beam as beam
from apache_beam.metrics import Metrics, monitoring_infos
from apache_beam.metrics.cells import CounterCell, GaugeData
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


def _bundle_metrics(bundle: int, lag: int, set_at_s: float) -> list:
    """One bundle's metrics as a worker reports them: a counter and a gauge."""
    counter = CounterCell()
    counter.inc(1)
    return [
        monitoring_infos.int64_user_counter("ns", "seen", counter.get_cumulative(), "Read"),
        monitoring_infos.int64_user_gauge("ns", "lag", GaugeData(lag, set_at_s), "Read"),
    ]


def test_a_gauge_set_in_every_bundle_keeps_one_value_the_latest():
    """Beam keeps every bundle's gauge value: a stream's memory grew with each bundle."""
    bundle_metrics.install()
    stage: list = []
    for bundle in range(1000):
        # as the runner folds them: the new bundle's metrics first, then the stage's so far
        new = _bundle_metrics(bundle, lag=bundle, set_at_s=1000.0 + bundle // 2)
        stage = fn_runner.consolidate_monitoring_infos(itertools.chain(new, stage))
    assert len(stage) == 2  # one counter, one gauge: flat however long the stream runs
    counter, gauge = sorted(stage, key=monitoring_infos.is_gauge)
    assert monitoring_infos.extract_counter_value(counter) == 1000
    # the last bundle's value; bundles 998 and 999 set it in the same millisecond
    assert monitoring_infos.extract_gauge_value(gauge) == (1499.0, 999)
