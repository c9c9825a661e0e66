"""Keep CPython's full garbage collections off a worker's hot path.

Why: a full collection visits every object the collector tracks. A worker that imported Beam
holds ~190k of them (~450k with TensorFlow), so each full collection takes 80–220 ms here, and a
step allocating a million short-lived objects a second (Kafka messages, records) sets one off
every ~150 ms: on the DirectRunner that was a third of ``ReadFromKafka``'s time
(bench/bench_read_from_kafka.py).

:func:`settle_heap` collects once and then moves every object alive into the collector's
permanent generation (``gc.freeze``). Modules, the pipeline and loaded models live as long as the
worker, so later collections skip them and cost what the new objects cost. Objects frozen while
alive that later become cyclic garbage (an earlier pipeline of the same process, a replaced
model) are reclaimed at the next settle, which unfreezes and collects first; settles are at most
one per ``min_interval_s``. A process's first settle collects the young generations only: a full
pass over a fresh worker's heap took 211 ms to find 49 unreachable objects (Beam, TensorFlow and
a scorer), between the model load and a stream's first record; what little it leaves is frozen
until the next settle.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

__all__ = ["settle_heap"]

_LOGGER = logging.getLogger(__name__)


class _Settler:
    """Process-wide state: one settle at a time, rate-limited."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last: float | None = None  # time.monotonic() of the last settle

    def settle(self, min_interval_s: float) -> bool:
        with self.lock:
            if self.last is not None and time.monotonic() - self.last < min_interval_s:
                return False
            started = time.perf_counter()
            if self.last is None:
                gc.collect(1)  # a fresh heap: old garbage is a few objects, not worth a pass
            else:
                gc.unfreeze()
                gc.collect()
            gc.freeze()
            self.last = time.monotonic()
            _LOGGER.debug(
                "Heap settled: %d objects frozen in %.0f ms",
                gc.get_freeze_count(),
                (time.perf_counter() - started) * 1000,
            )
            return True


_SETTLER = _Settler()


def settle_heap(min_interval_s: float = 60.0) -> bool:
    """Collect, then exclude every live object from later collections; False if rate-limited.

    Call it where a worker has built what it keeps (a DoFn's ``setup``), not per bundle: a
    settle costs one full collection.
    """
    return _SETTLER.settle(min_interval_s)
