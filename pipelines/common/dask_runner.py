"""A DaskRunner that runs the project's batch pipelines on a dask.distributed cluster.

Beam 2.77's ``apache_beam.runners.dask.dask_runner.DaskRunner`` translates a pipeline to Dask
bags, but (checked on a 2-worker cluster, see docs/scaling.md):

* it computes only the bag of the **last** transform visited, so a pipeline with several sinks
  (rows and dead letters) silently runs one of them;
* a ParDo with tagged outputs hands **every** output to every consumer (dead letters mixed into
  rows), and main outputs lose their timestamps and windows;
* ``Impulse`` and every other primitive it does not know become a no-op (``'NoneType' object
  has no attribute 'map'`` on the next step), and a splittable DoFn cannot run;
* bundle finalizers are never called.

This runner keeps Beam's options (``--dask_client_address``, ``--dask_npartitions``...) and its
result type, and translates the graph itself: every PCollection is a bag of ``WindowedValue``;
a ParDo's outputs are split by tag; ``GroupByKey`` groups by key and window (dask's task
shuffle, keys tokenized deterministically); ``Impulse``, ``Create``, ``Flatten`` and
``Reshuffle`` are translated; side inputs are materialized once and passed to every task;
bundle finalizers run after their bundle; every leaf of the graph is computed (only counts
come back to the client). Unknown primitives and splittable DoFns fail at launch, naming the
step. A ``Create`` is split one element per Dask partition (up to ``_MAX_CREATE_PARTITIONS``)
unless ``--dask_npartitions``/``--dask_partition_size`` says otherwise, so the bounded Kafka
read's work units run on as many workers as there are units.

Select it with ``--runner=DaskRunner`` (the pipelines' supervisor picks it:
:func:`pipelines.common.supervisor.runner_for`) or
``--runner=pipelines.common.dask_runner.DaskRunner``.
"""

from __future__ import annotations

import functools
import logging
import pickle
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.common import (
    DoFnContext,
    DoFnInvoker,
    DoFnSignature,
    Receiver,
    _OutputHandler,
)
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunnerResult
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.overrides import _Create, _Flatten, _Reshuffle
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

__all__ = ["DaskRunner"]

_LOGGER = logging.getLogger(__name__)

#: A Create of more elements is split into this many Dask partitions at most.
_MAX_CREATE_PARTITIONS = 256


class _GroupByKey(beam.PTransform):
    """GroupByKey as one primitive the visitor translates (Beam's override expands it into
    steps that drop the windows)."""

    def expand(self, pcoll):
        return beam.pvalue.PCollection.from_(pcoll)


class _GroupByKeyOverride(PTransformOverride):
    def matches(self, applied_ptransform) -> bool:
        return applied_ptransform.transform.__class__ == beam.GroupByKey

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return _GroupByKey()


class _TypedOverride(PTransformOverride):
    """Beam's own Create/Flatten/Reshuffle stand-ins (overrides.py), matched by class."""

    def __init__(self, cls: type, make) -> None:
        self._cls, self._make = cls, make

    def matches(self, applied_ptransform) -> bool:
        return applied_ptransform.transform.__class__ == self._cls

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return self._make(applied_ptransform.transform)


def _overrides() -> list[PTransformOverride]:
    return [
        _TypedOverride(beam.Create, lambda t: _Create(t.values)),
        _TypedOverride(beam.Reshuffle, lambda t: _Reshuffle()),
        _TypedOverride(beam.Flatten, lambda t: _Flatten()),
        _GroupByKeyOverride(),
    ]


def _in_global_window(value: Any) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


def _window_key(window) -> tuple:
    """A key dask can tokenize the same way in every process."""
    if isinstance(window, GlobalWindow):
        return ("global",)
    if isinstance(window, IntervalWindow):
        return ("interval", window.start.micros, window.end.micros)
    return ("pickled", pickle.dumps(window))


def _explode_windows(wv: WindowedValue) -> list:
    key, value = wv.value
    return [((key, _window_key(w)), (w, value)) for w in wv.windows]


def _grouped(item) -> WindowedValue:
    (key, _), pairs = item
    window = pairs[0][0]
    return WindowedValue((key, [value for _, value in pairs]), window.max_timestamp(), (window,))


class _ListReceiver(Receiver):
    """Collects a bundle's outputs as ``(tag, WindowedValue)``; the main output's tag is None."""

    def __init__(self, tag: str | None, out: list) -> None:
        self._tag, self._out = tag, out

    def receive(self, windowed_value: WindowedValue) -> None:
        self._out.append((self._tag, windowed_value))


class _Receivers(dict):
    def __init__(self, out: list) -> None:
        super().__init__()
        self._out = out

    def __missing__(self, tag):
        self[tag] = receiver = _ListReceiver(tag, self._out)
        return receiver


def _run_bundle(items, spec: dict, *side_values) -> list:
    """One Dask partition = one bundle: set up, process every element, finish, finalize."""
    out: list = []
    receivers = _Receivers(out)
    side_inputs = [
        SideInputMap(view_class, view_options, values)
        for (view_class, view_options), values in zip(spec["side_views"], side_values, strict=True)
    ]
    finalizer = beam.DoFn.BundleFinalizerParam()
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(spec["fn"]),
        _OutputHandler(
            window_fn=spec["window_fn"],
            main_receivers=receivers[None],
            tagged_receivers=receivers,
            per_element_output_counter=None,
            output_batch_converter=None,
            process_yields_batches=False,
            process_batch_yields_elements=False,
        ),
        context=DoFnContext(spec["label"], state=None),
        side_inputs=side_inputs,
        input_args=spec["args"],
        input_kwargs=spec["kwargs"],
        user_state_context=None,
        bundle_finalizer_param=finalizer,
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    finalizer.finalize_bundle()  # the bundle's outputs are complete and handed to Dask
    return out


def _has_tag(tag, item) -> bool:
    return item[0] == tag


def _value(item):
    return item[1]


def _all_values(parts: list) -> list:
    return [value for part in parts for value in part]


class _BagVisitor(PipelineVisitor):
    """Builds one dask bag of WindowedValue per PCollection (see the module docstring)."""

    def __init__(self, bag_kwargs: dict) -> None:
        self._bag_kwargs = bag_kwargs
        self.bags: dict = {}
        self._consumed: set = set()

    def leaves(self) -> list:
        """Bags nothing consumes: the sinks' last steps, computed to run the whole graph."""
        return [bag for pcoll, bag in self.bags.items() if pcoll not in self._consumed]

    def visit_transform(self, node) -> None:
        import dask.bag as db

        transform = node.transform
        pcolls = [pcoll for pcoll in node.inputs if isinstance(pcoll, beam.PCollection)]
        inputs = [self.bags[pcoll] for pcoll in pcolls]
        self._consumed.update(pcolls)
        self._consumed.update(si.pvalue for si in node.side_inputs)
        if isinstance(transform, _Create):
            bag = self._create(list(transform.values))
        elif isinstance(transform, beam.Impulse):
            bag = db.from_sequence([b""], npartitions=1).map(_in_global_window)
        elif isinstance(transform, _Flatten):
            bag = db.concat(inputs) if inputs else db.from_sequence([], npartitions=1)
        elif isinstance(transform, _Reshuffle):
            bag = inputs[0]
        elif isinstance(transform, _GroupByKey):
            bag = inputs[0].map(_explode_windows).flatten().groupby(lambda kv: kv[0])
            bag = bag.map(lambda group: (group[0], [kv[1] for kv in group[1]])).map(_grouped)
        elif isinstance(transform, beam.ParDo):
            self._pardo(node, inputs[0])
            return
        else:
            raise NotImplementedError(
                f"{type(transform).__name__} (step {node.full_label!r}) cannot run on the "
                "DaskRunner; see docs/scaling.md for what it supports"
            )
        (pcoll,) = node.outputs.values()
        self.bags[pcoll] = bag

    def _create(self, values: list):
        import dask.bag as db

        kwargs = dict(self._bag_kwargs)
        if not kwargs:
            kwargs["npartitions"] = max(1, min(len(values), _MAX_CREATE_PARTITIONS))
        elif kwargs.get("npartitions"):
            kwargs["npartitions"] = max(1, min(kwargs["npartitions"], len(values)))
        return db.from_sequence(values, **kwargs).map(_in_global_window)

    def _pardo(self, node, input_bag) -> None:
        transform = node.transform
        signature = DoFnSignature(transform.fn)
        if signature.is_splittable_dofn():
            raise NotImplementedError(
                f"step {node.full_label!r} is a splittable DoFn, which the DaskRunner cannot run "
                "(a bounded ReadFromKafka reads work units with a plain DoFn instead; a "
                "streaming read needs Dataflow, Flink or the local FnApiRunner)"
            )
        if signature.is_stateful_dofn():
            raise NotImplementedError(
                f"step {node.full_label!r} uses state or timers, which the DaskRunner cannot run"
            )
        main_input = next(iter(node.main_inputs.values()))
        args, kwargs = transform.raw_side_inputs
        side_views = []
        side_items = []
        for si in node.side_inputs:
            side_views.append((type(si), si._view_options()))
            side_items.append(self.bags[si.pvalue].reduction(list, _all_values))
        spec = {
            "fn": transform.fn,
            "window_fn": main_input.windowing.windowfn,
            "label": transform.label,
            "args": list(args),
            "kwargs": kwargs,
            "side_views": side_views,
        }
        tagged = input_bag.map_partitions(_run_bundle, spec, *side_items)
        for tag, pcoll in node.outputs.items():
            wanted = None if tag in (None, "None") else tag
            self.bags[pcoll] = tagged.filter(functools.partial(_has_tag, wanted)).map(_value)


class DaskRunner(BeamDaskRunner):
    """Beam's DaskRunner with the graph translation of this module (see its docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        dask_options = options.view_as(DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(_overrides())
        visitor = _BagVisitor(bag_kwargs)
        pipeline.visit(visitor)
        leaves = visitor.leaves()
        _LOGGER.info(
            "DaskRunner: %d steps' outputs, %d leaves, scheduler %s",
            len(visitor.bags),
            len(leaves),
            client.scheduler.address,
        )
        counts = dask.optimize(*[leaf.count() for leaf in leaves])
        futures = client.compute(list(counts)) if counts else []
        return _ClosingResult(client, futures)


class _ClosingResult(DaskRunnerResult):
    """Beam's result, closing its client once the job ended: an open client outlives the
    scheduler in scripts and retries connecting for 30 s, logging errors."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close()
