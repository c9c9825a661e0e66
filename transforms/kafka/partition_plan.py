"""Decide, at launch, which partitions to read and from/to which offsets.

ReadFromKafka resolves positions when the pipeline runs (not when it is built), from the broker's
metadata: the partitions of each topic, the group's committed offsets, the log start/end offsets
and ``offsets_for_times``. The result is one :class:`PartitionPlan` per topic-partition; the
splittable DoFn turns each into an offset-range restriction. An unbounded read also gets one
:class:`PartitionWatch`: it plans the partitions added later (``plan_partitions(..., skip=...)``).
A topic that does not exist raises :class:`KafkaTopicNotFoundError`, naming it.

Everything here talks to a consumer-like ``client`` (``list_topics``, ``get_watermark_offsets``,
``committed``, ``offsets_for_times``), so the logic is tested with a fake and used with a real
``confluent_kafka.Consumer``.

Usage::

    plans = plan_partitions(consumer, ["events"], start="committed", stop="end_at_launch")
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

__all__ = [
    "UNBOUNDED_OFFSET",
    "PartitionPlan",
    "PartitionWatch",
    "StartSpec",
    "StopSpec",
    "KafkaUnavailableError",
    "KafkaTopicNotFoundError",
    "normalize_start",
    "normalize_stop",
    "plan_partitions",
]

_LOGGER = logging.getLogger(__name__)

StartSpec = str | int  # "committed" | "earliest" | "latest" | timestamp in ms
StopSpec = str | Mapping[tuple[str, int], int]  # "unbounded" | "end_at_launch" | explicit offsets

UNBOUNDED_OFFSET = 2**63 - 1
"""The ``stop`` of a restriction that follows the partition forever."""

_START_WORDS = ("committed", "earliest", "latest")
_MISSING_TOPIC_CODES = ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC")
_STOP_WORDS = ("unbounded", "end_at_launch")


class KafkaUnavailableError(ConnectionError):
    """The brokers did not answer in time (wrong address, network, TLS/SASL or broker down)."""


class KafkaTopicNotFoundError(ValueError):
    """A topic to read does not exist; ``topic`` names it. Build it with :meth:`of`.

    The message keeps the broker's error code (``UNKNOWN_TOPIC_OR_PART``), by which the
    pipelines' supervisor recognises an error no restart can fix.
    """

    topic = ""
    code = ""

    @classmethod
    def of(cls, topic: str, code: str, option: str | None = None) -> KafkaTopicNotFoundError:
        """The error for ``topic``; ``option`` (e.g. ``"--inputTopic"``) is named as the fix."""
        fix = option or "the topic name"
        err = cls(
            f"Kafka topic {topic!r} is not readable: it does not exist ({code}); create it or "
            f"fix {fix}"
        )
        err.topic, err.code = topic, code
        return err


@dataclasses.dataclass(frozen=True)
class PartitionPlan:
    """What to read from one partition: ``[start_offset, stop_offset)``.

    ``stop_offset`` is :data:`UNBOUNDED_OFFSET` to follow the log. ``stop_timestamp_ms`` is set
    only when the stop time had no record yet at launch: the reader then ends the partition at
    the first record at or after it (or once caught up after that time).
    ``end_offset_at_launch`` seeds the backlog estimate before the reader has polled.
    """

    topic: str
    partition: int
    start_offset: int
    stop_offset: int
    end_offset_at_launch: int
    stop_timestamp_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class PartitionWatch:
    """Follow ``topics`` for partitions other than ``known`` (those planned at launch).

    The unbounded reader's one extra element: it lists the partitions every so often and reads
    the new ones itself, from ``start`` ("committed", or "earliest" when the read did not start
    from the group's offsets), falling back to the earliest offset: a partition created after
    launch holds only records written after launch. ``listed_at`` is when ``known`` was listed
    (epoch seconds).
    """

    topics: tuple[str, ...]
    known: frozenset[tuple[str, int]]
    start: str
    listed_at: float


def normalize_start(start: Any) -> StartSpec:
    """Validate ``start`` at construction; datetimes become epoch milliseconds."""
    if isinstance(start, str):
        if start not in _START_WORDS:
            raise ValueError(f"start={start!r}: expected one of {_START_WORDS}, a datetime or ms")
        return start
    if isinstance(start, datetime.datetime):
        if start.tzinfo is None:
            raise ValueError("start datetime must be timezone-aware (e.g. tzinfo=UTC)")
        return int(start.timestamp() * 1000)
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        return start
    raise ValueError(f"start={start!r}: expected one of {_START_WORDS}, a datetime or ms >= 0")


def normalize_stop(stop: Any) -> StopSpec:
    """Validate ``stop`` at construction."""
    if isinstance(stop, str):
        if stop not in _STOP_WORDS:
            raise ValueError(f"stop={stop!r}: expected one of {_STOP_WORDS} or a mapping")
        return stop
    if isinstance(stop, Mapping):
        offsets = {}
        for key, offset in stop.items():
            topic, partition = key
            if not isinstance(offset, int) or offset < 0:
                raise ValueError(f"stop offset for {topic}[{partition}] must be an int >= 0")
            offsets[(str(topic), int(partition))] = offset
        return offsets
    raise ValueError(f"stop={stop!r}: expected one of {_STOP_WORDS} or a mapping")


def _call(what: str, fn, *args, timeout: float):
    """Run a metadata call; turn librdkafka's timeouts into a clear, bounded error."""
    try:
        return fn(*args, timeout=timeout)
    except KafkaException as err:
        raise KafkaUnavailableError(
            f"Kafka {what} failed within {timeout:g}s: {err.args[0] if err.args else err}; "
            "check bootstrap servers, security settings and that the brokers are up"
        ) from err


def _partitions(client, topic: str, timeout: float) -> list[int]:
    metadata = _call("metadata request", client.list_topics, topic, timeout=timeout)
    topic_md = metadata.topics.get(topic)
    if topic_md is None:
        raise KafkaTopicNotFoundError.of(topic, "not in the broker's metadata")
    error = topic_md.error
    code = error.name() if isinstance(error, KafkaError) else str(error)
    if error is not None and code in _MISSING_TOPIC_CODES:
        raise KafkaTopicNotFoundError.of(topic, code)
    if error is not None or not topic_md.partitions:
        raise ValueError(f"Kafka topic {topic!r} is not readable: {error or 'no partitions'}")
    return sorted(topic_md.partitions)


def _lookup(what: str, fn, tps: list[TopicPartition], timeout: float) -> dict:
    answer = _call(what, fn, tps, timeout=timeout)
    result = {}
    for tp in answer:
        if tp.error is not None:
            raise ValueError(f"Kafka {what} for {tp.topic}[{tp.partition}] failed: {tp.error}")
        result[(tp.topic, tp.partition)] = tp.offset
    return result


def _start_offsets(client, tps, start, start_fallback, marks, timeout) -> dict:
    if start == "earliest":
        return {key: low for key, (low, _) in marks.items()}
    if start == "latest":
        return {key: high for key, (_, high) in marks.items()}
    if start == "committed":
        committed = _lookup("committed-offset lookup", client.committed, tps, timeout)
        fallback = 0 if start_fallback == "earliest" else 1
        result = {}
        for key, offset in committed.items():
            low, high = marks[key]
            if offset == OFFSET_INVALID or offset < 0:
                result[key] = (low, high)[fallback]
            elif offset < low:
                _LOGGER.warning(
                    "Committed offset %d of %s[%d] was removed by retention; starting at %d",
                    offset,
                    key[0],
                    key[1],
                    low,
                )
                result[key] = low
            elif offset > high:
                _LOGGER.warning(
                    "Committed offset %d of %s[%d] is past the log end %d (topic recreated?); "
                    "starting at %s",
                    offset,
                    key[0],
                    key[1],
                    high,
                    start_fallback,
                )
                result[key] = (low, high)[fallback]
            else:
                result[key] = offset
        return result
    return _offsets_at(client, tps, start, marks, timeout)


def _offsets_at(client, tps, timestamp_ms: int, marks, timeout) -> dict:
    """First offset with a timestamp >= ``timestamp_ms``; the end offset when there is none."""
    query = [TopicPartition(tp.topic, tp.partition, timestamp_ms) for tp in tps]
    found = _lookup("offsets_for_times", client.offsets_for_times, query, timeout)
    return {key: offset if offset >= 0 else marks[key][1] for key, offset in found.items()}


def _allocate(available: list[int], total: int) -> list[int]:
    """Split ``total`` records over partitions, fairly, never more than a partition has now;
    what the backlog lacks is spread evenly and waited for."""
    allocation = [0] * len(available)
    remaining = total
    order = sorted(range(len(available)), key=lambda i: available[i])
    for rank, index in enumerate(order):
        share = -(-remaining // (len(order) - rank))
        allocation[index] = min(available[index], share)
        remaining -= allocation[index]
    for rank, index in enumerate(sorted(range(len(available)))):
        allocation[index] += remaining // len(available) + (rank < remaining % len(available))
    return allocation


def plan_partitions(
    client,
    topics: Sequence[str],
    *,
    start: StartSpec = "committed",
    start_fallback: str = "earliest",
    stop: StopSpec = "unbounded",
    max_records: int | None = None,
    stop_timestamp_ms: int | None = None,
    timeout: float = 20.0,
    skip: frozenset[tuple[str, int]] = frozenset(),
) -> list[PartitionPlan]:
    """Resolve start and stop offsets for every partition of ``topics`` (see module docstring).

    Args:
        client: a ``confluent_kafka.Consumer`` (with ``group.id`` for ``start="committed"``).
        topics: topic names.
        start: "committed" (fallback ``start_fallback`` when the group has none), "earliest",
            "latest", or a timestamp in ms (first record at or after it).
        stop: "unbounded", "end_at_launch" or ``{(topic, partition): stop_offset}`` covering
            every partition.
        max_records: read exactly this many records in total, spread over the partitions.
        stop_timestamp_ms: end each partition at its first record at or after this time.
        timeout: seconds per broker call; unreachable brokers raise KafkaUnavailableError.
        skip: ``(topic, partition)`` pairs already planned: only the others are (partition
            discovery).

    Returns:
        One plan per partition, ordered by topic then partition.

    Raises:
        KafkaTopicNotFoundError: a topic does not exist.
        KafkaUnavailableError: the brokers did not answer within ``timeout``.
    """
    tps = [
        TopicPartition(topic, partition)
        for topic in topics
        for partition in _partitions(client, topic, timeout)
        if (topic, partition) not in skip
    ]
    marks = {
        (tp.topic, tp.partition): _call(
            "end-offset lookup", client.get_watermark_offsets, tp, timeout=timeout
        )
        for tp in tps
    }
    starts = _start_offsets(client, tps, start, start_fallback, marks, timeout)
    stops = {}
    for key, (_, high) in marks.items():
        if stop == "unbounded":
            stops[key] = UNBOUNDED_OFFSET
        elif stop == "end_at_launch":
            stops[key] = high
        elif key in stop:
            stops[key] = stop[key]
        else:
            raise ValueError(f"stop offsets name no offset for {key[0]}[{key[1]}]")
    ts_pending = dict.fromkeys(marks)
    if stop_timestamp_ms is not None:
        for key, offset in _offsets_at(client, tps, stop_timestamp_ms, marks, timeout).items():
            if offset < marks[key][1]:
                stops[key] = min(stops[key], offset)
                ts_pending[key] = None
            else:
                ts_pending[key] = stop_timestamp_ms
    keys = list(marks)
    if max_records is not None:
        available = [max(0, min(stops[k], marks[k][1]) - min(starts[k], stops[k])) for k in keys]
        for key, count in zip(keys, _allocate(available, max_records), strict=True):
            stops[key] = min(stops[key], min(starts[key], stops[key]) + count)
    plans = [
        PartitionPlan(
            topic=key[0],
            partition=key[1],
            start_offset=min(starts[key], stops[key]),
            stop_offset=stops[key],
            end_offset_at_launch=marks[key][1],
            stop_timestamp_ms=ts_pending[key],
        )
        for key in keys
    ]
    if plans or not skip:  # partition discovery finding nothing new is not news
        _LOGGER.info("Kafka read plan: %s", plans)
    return plans
