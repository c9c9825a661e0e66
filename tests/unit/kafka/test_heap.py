"""settle_heap: old garbage collected, live objects frozen, frozen garbage freed next time."""

from __future__ import annotations

import gc
import weakref

from transforms.kafka.heap import _Settler, settle_heap


class _Node:
    """A GC-tracked object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.me = self


def test_settle_collects_garbage_then_freezes_what_lives_until_the_next_settle():
    garbage = weakref.ref(_Node())  # a cycle nobody references any more
    kept = _Node()
    frozen_then_dropped = _Node()
    dropped = weakref.ref(frozen_then_dropped)
    try:
        assert settle_heap(min_interval_s=0)
        assert garbage() is None
        assert gc.get_freeze_count() > 0 and not gc.is_finalized(kept)
        assert not settle_heap(min_interval_s=3600)  # rate-limited: nothing happens

        del frozen_then_dropped
        gc.collect()
        assert dropped() is not None  # frozen: ordinary collections skip it
        assert settle_heap(min_interval_s=0)
        assert dropped() is None  # the next settle unfreezes and collects first
        assert kept.me is kept
    finally:
        gc.unfreeze()


def test_a_first_settle_skips_the_full_pass_and_the_next_one_reclaims_what_it_froze():
    settler = _Settler()  # a fresh process's
    old = _Node()
    reclaimed = weakref.ref(old)
    gc.collect()  # ``old`` now sits in the oldest generation
    del old  # ... as garbage, which only a full pass finds
    try:
        assert settler.settle(min_interval_s=0)
        assert reclaimed() is not None  # frozen with the rest, no full pass
        assert settler.settle(min_interval_s=0)
        assert reclaimed() is None
    finally:
        gc.unfreeze()
