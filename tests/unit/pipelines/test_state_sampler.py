"""Bundle ends on the local runner: the state sampler sleeps at most 10 ms between samples."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.worker import statesampler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.counters import CounterFactory

from pipelines.common import state_sampler


def test_samplers_created_after_install_sample_every_10_ms_and_pipelines_still_run() -> None:
    state_sampler.install()
    state_sampler.install()  # idempotent
    sampler = statesampler.StateSampler("stage", CounterFactory())
    assert sampler.sampling_period_ms == state_sampler.SAMPLING_PERIOD_MS == 10
    assert statesampler.StateSampler("other", CounterFactory(), 50).sampling_period_ms == 50
    with TestPipeline() as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))
