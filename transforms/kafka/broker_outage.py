"""Broker outages seen by a reader: commits wait, and the read restarts from the group's offsets.

A broker that restarts can come back without writes it had acknowledged: a single node that
persists by snapshot (the local noida-db), or a cluster after an unclean leader election. The
predictions of records read just before the outage may then be gone although their writes were
acknowledged, and the reader, already past those records, would never read them again. And
bundles still in flight finish after the broker's return: committing their offsets would move
the group past the lost outputs for good.

So once a reader's consumers see every broker down, or a commit fails for want of a broker, the
reader stops committing; as soon as the broker answers again it fails with
:class:`KafkaBrokerOutageError`. A run restarted from the group's committed offsets (the local
supervisor does that by itself; see ``pipelines.common.supervisor``) reads again everything whose
outputs the broker may have lost: the broker's committed offsets are never ahead of the outputs
it still holds, because a commit is only made after the outputs were acknowledged. Duplicates,
never gaps (at-least-once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException

__all__ = ["KafkaBrokerOutageError", "OutageWatch"]

_LOGGER = logging.getLogger(__name__)

#: Commit errors that mean no broker answered (rather than a refused commit).
_UNREACHABLE = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


class KafkaBrokerOutageError(RuntimeError):
    """The brokers were unreachable from ``began_at`` (epoch seconds): the read must restart from
    the group's committed offsets."""

    began_at = 0.0


class OutageWatch:
    """Remembers the first sign of a broker outage until the reader acts on it.

    ``on_error`` is the consumers' ``error_cb`` (librdkafka calls it from the consuming thread).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._since: float | None = None
        self._since_wall = 0.0
        self._reason = ""

    @property
    def seen(self) -> bool:
        return self._since is not None

    def on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._mark(f"all brokers down ({error.str()})")

    def on_commit_error(self, err: KafkaException) -> None:
        error = err.args[0] if err.args else None
        if isinstance(error, KafkaError) and error.code() in _UNREACHABLE:
            self._mark(f"a commit failed ({error.str()})")

    def _mark(self, reason: str) -> None:
        if self._since is None:
            self._since = self._clock()
            self._since_wall = self._wall_clock()
            self._reason = reason
            _LOGGER.warning(
                "Kafka broker outage: %s. Offset commits wait; the read restarts from the "
                "group's committed offsets once the broker answers again",
                reason,
            )

    def error(self) -> KafkaBrokerOutageError:
        """The error that ends the read; the watch is reset (a runner's retry goes on)."""
        down_s = self._clock() - (self._since or self._clock())
        error = KafkaBrokerOutageError(
            f"Kafka brokers were unreachable ({self._reason}; back after {down_s:.0f} s). A "
            "restarted broker may have lost writes it had acknowledged, so the read restarts "
            "from the consumer group's committed offsets (commits were held during the outage)."
        )
        error.began_at = self._since_wall
        self._since = None
        return error
