"""One consumer group, one running pipeline: refuse a second copy instead of reading twice.

``ReadFromKafka`` assigns partitions itself (assign mode, as Beam's KafkaIO does), so the Kafka
group protocol never shares partitions between two processes started with the same group: each
would read every partition (double output, no scaling). Scaling out is the runner's job (more
workers, more work units); a second process is refused.

How: while a pipeline runs, its launching process holds a *lease*: every
:data:`HEARTBEAT_S` it commits a small record (owner id, host, pid) as the commit metadata of
offset 0 of the first input topic's partition 0 in the companion group ``<group>.lease`` (never
the group itself, whose offsets the readers own). A launch reads the lease first: one whose
heartbeat advances belongs to a live run, and the launch fails with
:class:`ConsumerGroupInUseError` naming the group and the holder; one released by a clean exit,
or silent for :data:`STALE_S` (its holder was killed), is taken over. So a restart after a
``kill -9`` waits up to :data:`STALE_S`, then runs. Two launches in the same second both write;
each re-reads half a second later and the one that does not find itself refuses.

(The Kafka group protocol itself would detect a live member, but a holder killed with SIGKILL
stays a member until the broker times it out, and the local broker, noida-db 0.2.3, never does:
the group would stay locked.)

It covers pipelines whose launching process stays up while they run (local runners, Dask, a
blocking Dataflow/Flink launch); a job submitted by a template launcher that then exits is not
covered (use one job name per group there: Dataflow refuses a second job of the same name).

Usage::

    with GroupLease(config, ["events"], "fraud-export"):
        run_the_pipeline()
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from transforms.kafka.config import KafkaConfig
from transforms.kafka.partition_plan import KafkaTopicNotFoundError

__all__ = ["GroupLease", "ConsumerGroupInUseError", "LEASE_SUFFIX", "HEARTBEAT_S", "STALE_S"]

_LOGGER = logging.getLogger(__name__)

#: The lease group of consumer group ``g`` is ``g + LEASE_SUFFIX``.
LEASE_SUFFIX = ".lease"
#: How often the holder renews its lease (seconds).
HEARTBEAT_S = 2.0
#: A lease not renewed for this long belongs to a dead process (seconds).
STALE_S = 10.0
#: After writing its lease, a launch re-reads it this much later (two launches at once).
_SETTLE_S = 0.5


class ConsumerGroupInUseError(RuntimeError):
    """Another running pipeline (or copy of this one) holds the consumer group."""


class GroupLease:
    """Hold ``group``'s lease while the ``with`` block runs (see the module docstring).

    Args:
        config: the Kafka connection.
        topics: the topics the pipeline reads (the lease lives on the first one).
        group_id: the pipeline's consumer group.
        topics_option: the option the topics come from, named when the first one is missing.
        consumer_factory: builds the client from a librdkafka dict (tests).
        clock, sleep: injected time (tests).
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Sequence[str],
        group_id: str,
        *,
        topics_option: str | None = None,
        consumer_factory: Callable[[dict[str, str]], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._where = TopicPartition(topics[0], 0)
        self._group = group_id
        self._topics_option = topics_option
        self._factory = consumer_factory or Consumer
        self._clock, self._sleep = clock, sleep
        self._me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._client = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        (found,) = self._client.committed([self._where], timeout=20)
        try:
            return json.loads(found.metadata) if found.offset >= 0 and found.metadata else None
        except ValueError:
            return None

    def _write(self, **fields: Any) -> None:
        record = json.dumps({**self._me, "beat": time.time(), **fields})
        try:
            self._client.commit(
                offsets=[TopicPartition(self._where.topic, 0, 0, metadata=record)],
                asynchronous=False,
            )
        except KafkaException as err:
            error = err.args[0] if err.args else None
            if getattr(error, "code", lambda: None)() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaTopicNotFoundError.of(
                    self._where.topic, error.name(), self._topics_option
                ) from err
            raise

    def _refuse(self, holder: dict) -> ConsumerGroupInUseError:
        return ConsumerGroupInUseError(
            f"consumer group {self._group!r} is in use by another running pipeline (pid "
            f"{holder.get('pid')} on {holder.get('host')}, lease group "
            f"{self._group + LEASE_SUFFIX!r}). Two copies with one group would each read every "
            "partition; this project does not share a group between processes (scale with "
            "more workers instead). Stop the other copy or choose another consumer group (the "
            "pipelines' --consumerGroupId)."
        )

    def __enter__(self) -> GroupLease:
        settings = self._config.consumer_dict(self._group + LEASE_SUFFIX)
        settings.update({"enable.auto.commit": "false", "logger": _LOGGER})
        self._client = self._factory(settings)
        try:
            self._acquire()
        except BaseException:
            self._client.close()
            raise
        _LOGGER.info(
            "Holding consumer group %s (lease group %s)", self._group, settings["group.id"]
        )
        self._thread = threading.Thread(target=self._keep, name="group-lease", daemon=True)
        self._thread.start()
        return self

    def _acquire(self) -> None:
        first = self._read()
        if first is not None and not first.get("released"):
            seen_since = self._clock()
            while self._clock() - seen_since < STALE_S:  # live, or killed?
                self._sleep(HEARTBEAT_S / 2)
                now = self._read()
                if now is None or now.get("released"):
                    break
                if now.get("beat") != first.get("beat"):
                    raise self._refuse(now)  # its heartbeat advances: a live run
            else:
                _LOGGER.warning(
                    "Consumer group %s: taking over the lease of pid %s on %s (silent for %.0fs)",
                    self._group,
                    first.get("pid"),
                    first.get("host"),
                    STALE_S,
                )
        self._write()
        self._sleep(_SETTLE_S)
        now = self._read()
        if now is None or now.get("owner") != self._me["owner"]:
            raise self._refuse(now or {})  # another launch wrote after us

    def _keep(self) -> None:
        """Renew the lease every HEARTBEAT_S until released (advisory: never fails the run)."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except KafkaException as err:
                _LOGGER.warning("Group lease %s not renewed: %s", self._group, err)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._client is not None:
            try:
                self._write(released=True)  # the next run need not wait for it to go stale
            except KafkaException as err:
                _LOGGER.warning("Group lease %s not released: %s", self._group, err)
            self._client.close()
            self._client = None
