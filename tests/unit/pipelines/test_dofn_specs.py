"""dofn_specs: Beam's state/timer introspection memoized per DoFn class, with the same answers."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from pipelines.common import dofn_specs

COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
COUNT_STATE = beam.DoFn.StateParam(COUNT)


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


class _Counting(beam.DoFn):
    def process(self, element, count=COUNT_STATE):
        seen = (count.read() or 0) + 1
        count.write(seen)
        yield element[0], seen


class _Duplicate(beam.DoFn):
    def process(self, element, a=COUNT_STATE, b=COUNT_STATE):
        yield element


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(userstate, "get_dofn_specs", userstate.get_dofn_specs)
    monkeypatch.setattr(dofn_specs, "_CACHE", {})
    dofn_specs.install()
    return userstate.get_dofn_specs


def test_the_cached_specs_equal_beams_and_are_computed_once_per_class(installed, monkeypatch):
    calls, beams = [], dofn_specs._ORIGINAL

    def counted(dofn):
        calls.append(type(dofn))
        return beams(dofn)

    monkeypatch.setattr(dofn_specs, "_ORIGINAL", counted)
    for _ in range(3):
        assert installed(_Plain()) == (set(), set()) == beams(_Plain())
        assert installed(_Counting()) == ({COUNT}, set()) == beams(_Counting())
    assert calls.count(_Plain) == 1
    assert calls.count(_Counting) == 1
    assert userstate.is_stateful_dofn(_Counting()) and not userstate.is_stateful_dofn(_Plain())


def test_a_method_bound_on_the_instance_is_part_of_the_key(installed):
    class Holder:
        def process(self, element, count=COUNT_STATE):
            yield element

    plain, patched = _Plain(), _Plain()
    patched.extra = Holder().process  # dir(dofn) sees it: Beam inspects it too
    assert installed(plain) == (set(), set())
    assert installed(patched) == ({COUNT}, set())


def test_invalid_specs_raise_every_time(installed):
    for _ in range(2):
        with pytest.raises(ValueError, match="duplicate"):
            installed(_Duplicate())


def test_a_stateful_pipeline_runs_with_the_cache(installed):
    with TestPipeline() as p:
        counted = p | beam.Create([("a", 1), ("a", 2), ("b", 3)]) | beam.ParDo(_Counting())
        assert_that(counted, equal_to([("a", 1), ("a", 2), ("b", 1)]))
