"""Look up each DoFn class's state and timer specs once, not on every use.

Beam 2.77 asks ``userstate.get_dofn_specs`` whether a DoFn is stateful when a ParDo is applied,
when the pipeline becomes a proto, when the runner plans it and when each bundle processor is
built — 214 times for the scoring pipeline, each call inspecting the signature of every method
of the DoFn (``dir`` + ``inspect.signature``): about a fifth of a short batch run's start-up
(bench/bench_scoring.py, "(a) on 1000 events").

The specs are default arguments of the DoFn's methods, so they follow from its class and from
any methods bound on the instance itself; :func:`install` memoizes them on that key. A DoFn
whose specs are invalid (duplicate parameters) still raises on every call: errors are not
cached.
"""

from __future__ import annotations

import types
from typing import Any

from apache_beam.transforms import userstate

__all__ = ["install"]

_ORIGINAL = userstate.get_dofn_specs
_CACHE: dict[Any, tuple[frozenset, frozenset]] = {}


def _key(dofn: Any) -> Any:
    """The DoFn's class and the functions of the methods bound on the instance, if any (specs
    are their parameters' defaults: which object a method is bound to does not change them)."""
    own = getattr(dofn, "__dict__", None) or {}
    bound = tuple(
        (name, value.__func__) for name, value in own.items() if isinstance(value, types.MethodType)
    )
    return (type(dofn), bound)


def _cached_dofn_specs(dofn: Any) -> tuple[set, set]:
    key = _key(dofn)
    try:
        states, timers = _CACHE[key]
    except KeyError:
        states, timers = _ORIGINAL(dofn)
        _CACHE[key] = (frozenset(states), frozenset(timers))
        return states, timers
    return set(states), set(timers)


def install() -> None:
    """Memoize ``userstate.get_dofn_specs`` for this process (idempotent)."""
    userstate.get_dofn_specs = _cached_dofn_specs
