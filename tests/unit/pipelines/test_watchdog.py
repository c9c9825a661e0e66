"""The stall watchdog over a fake clock: progress lines, stall detection and its options."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from pipelines import generate_events, kafka_to_bigquery, kafka_to_gcs
from pipelines.common import watchdog as watchdog_module
from pipelines.common.options import KAFKA_SOURCE, OptionError, options_class, validate
from pipelines.common.watchdog import EXIT_STALLED, Watchdog, watchdog_from_options
from transforms import progress
from transforms.progress import ProgressRegistry

LOGGER = "kafka_beam_ml.progress"


@pytest.fixture
def stalls() -> list:
    return []


def _watchdog(registry, stalls, *, progress_seconds=60, stall_timeout_seconds=300):
    """A watchdog whose first look (its start, as far as timing goes) is now."""
    dog = Watchdog(
        progress_seconds=progress_seconds,
        stall_timeout_seconds=stall_timeout_seconds,
        registry=registry,
        on_stall=stalls.append,
    )
    dog.tick()
    return dog


def _lines(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _backlog(registry) -> None:
    """Partition 0 read 10 of 25 records; partition 1 caught up and committed."""
    registry.add(progress.CONSUMED, 10)
    registry.record_position("events", 0, 10, 25)
    registry.record_position("events", 1, 7, 7)
    registry.record_commit("events", 1, 7)


def _tick_after(dog, clock, seconds: float) -> None:
    clock.advance(seconds)
    dog.tick()


def test_progress_line_every_interval_with_counters_lag_and_offsets(registry, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    dog = _watchdog(registry, [])
    registry.add(progress.WRITTEN, 4)
    _backlog(registry)
    _tick_after(dog, clock, 59)
    assert _lines(caplog) == []
    _tick_after(dog, clock, 1)
    registry.add(progress.CONSUMED, 5)
    registry.add("retries", 2)
    _tick_after(dog, clock, 60)
    first, second = _lines(caplog)
    assert first == (
        "progress: consumed=10(+10) written=4(+4) dead_letters=0(+0) lag=15 "
        "no_progress_for=60s partitions: "
        "events[0] next=10 end=25 lag=15 committed=none; events[1] next=7 end=7 lag=0 committed=7"
    )
    assert second.startswith(
        "progress: consumed=15(+5) written=4(+0) dead_letters=0(+0) retries=2(+2) lag=15 "
        "no_progress_for=60s"
    )


def test_progress_line_before_anything_was_read_and_zero_disables_it(registry, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    dog = _watchdog(registry, [], progress_seconds=10)
    _tick_after(dog, clock, 10)
    assert _lines(caplog) == [
        "progress: consumed=0(+0) written=0(+0) dead_letters=0(+0) lag=0 no_progress_for=10s "
        "partitions: none yet"
    ]
    caplog.clear()
    quiet = _watchdog(registry, [], progress_seconds=0)
    for _ in range(5):
        _tick_after(quiet, clock, 100)
    assert _lines(caplog) == []


def test_many_partitions_are_listed_most_lagging_first_and_capped(registry, clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for partition in range(30):
        registry.record_position("t", partition, 0, partition)
    dog = _watchdog(registry, [], progress_seconds=1)
    _tick_after(dog, clock, 1)
    (line,) = _lines(caplog)
    assert "partitions: t[29] next=0 end=29 lag=29" in line
    assert line.endswith("; … 10 more")


def test_stall_fires_once_with_backlog_and_no_progress(registry, clock, caplog, stalls):
    _backlog(registry)
    dog = _watchdog(registry, stalls)
    _tick_after(dog, clock, 299)
    assert stalls == []
    registry.record_position("events", 0, 10, 40)  # more backlog arriving is not progress
    _tick_after(dog, clock, 1)
    assert len(stalls) == 1 and stalls[0].total_lag == 30
    (message,) = _lines(caplog, logging.ERROR)
    assert message == (
        "stalled: nothing moved for 300s (--stallTimeoutSeconds=300) with a backlog of 30 "
        "records in 1 partition(s): events[0] next=10 end=40 lag=30 committed=none (position "
        "unchanged for 300s). Totals: consumed=10, written=0, dead_letters=0."
    )
    _tick_after(dog, clock, 300)
    assert len(stalls) == 1  # reported once per stall


def test_no_stall_without_backlog(registry, clock, stalls):
    registry.record_position("events", 0, 25, 25)  # caught up: an idle topic
    dog = _watchdog(registry, stalls, stall_timeout_seconds=5)
    for _ in range(10):
        _tick_after(dog, clock, 100)
    assert stalls == []


@pytest.mark.parametrize(
    "move",
    [
        lambda r: r.add(progress.CONSUMED, 1),
        lambda r: r.add(progress.WRITTEN, 1),
        lambda r: r.add(progress.DEAD_LETTERS, 1),
        lambda r: r.record_position("events", 0, 11, 25),
        lambda r: r.record_commit("events", 0, 10),
    ],
    ids=["consumed", "written", "dead_letters", "position", "commit"],
)
def test_any_progress_restarts_the_timer(registry, clock, stalls, move):
    _backlog(registry)
    dog = _watchdog(registry, stalls)
    _tick_after(dog, clock, 200)
    move(registry)
    _tick_after(dog, clock, 299)
    assert stalls == []
    _tick_after(dog, clock, 1)
    assert len(stalls) == 1


def test_a_stall_after_progress_resumed_is_reported_again(registry, clock, stalls):
    _backlog(registry)
    dog = _watchdog(registry, stalls, stall_timeout_seconds=10)
    _tick_after(dog, clock, 10)
    registry.add(progress.CONSUMED, 1)
    _tick_after(dog, clock, 10)
    assert len(stalls) == 2


def test_time_before_the_watchdog_started_does_not_count(registry, clock, stalls):
    _backlog(registry)  # long before the pipeline (and its watchdog) started
    clock.advance(10_000)
    dog = _watchdog(registry, stalls)
    _tick_after(dog, clock, 299)
    assert stalls == []
    _tick_after(dog, clock, 1)
    assert len(stalls) == 1


def test_zero_stall_timeout_disables_the_check(registry, clock, stalls):
    _backlog(registry)
    dog = _watchdog(registry, stalls, stall_timeout_seconds=0)
    for _ in range(10):
        _tick_after(dog, clock, 1000)
    assert stalls == []


def test_the_thread_notices_a_stall_in_real_time():
    registry = ProgressRegistry()
    registry.record_position("events", 0, 0, 5)
    fired = threading.Event()
    dog = Watchdog(
        progress_seconds=0,
        stall_timeout_seconds=0.2,
        registry=registry,
        on_stall=lambda _snapshot: fired.set(),
        check_seconds=0.05,
    )
    with dog:
        assert fired.wait(5)
    assert dog._thread is None  # stopped and joined


def test_default_on_stall_flushes_and_exits_with_the_stall_status(monkeypatch, caplog):
    exits = []

    class _Exited(Exception):
        pass

    def fake_exit(status):
        exits.append(status)
        raise _Exited

    flushed = []
    handler = logging.StreamHandler()
    monkeypatch.setattr(handler, "flush", lambda: flushed.append(True))
    logging.getLogger("kafka_beam_ml.test_flush").addHandler(handler)
    monkeypatch.setattr(os, "_exit", fake_exit)
    try:
        with pytest.raises(_Exited):
            watchdog_module.exit_stalled(ProgressRegistry().snapshot())
    finally:
        logging.getLogger("kafka_beam_ml.test_flush").removeHandler(handler)
    assert exits == [EXIT_STALLED] and flushed
    assert f"Exiting with status {EXIT_STALLED}" in caplog.text


def test_watchdog_from_options():
    dog = watchdog_from_options({"progressSeconds": 60, "stallTimeoutSeconds": 300})
    assert (dog.progress_seconds, dog.stall_timeout_seconds) == (60, 300)
    dog = watchdog_from_options({})  # options of a pipeline without the group: the defaults
    assert (dog.progress_seconds, dog.stall_timeout_seconds) == (60, 300)
    dog = watchdog_from_options({"progressSeconds": 0, "stallTimeoutSeconds": 30})
    assert (dog.progress_seconds, dog.stall_timeout_seconds) == (0, 30)
    assert watchdog_from_options({"progressSeconds": 0, "stallTimeoutSeconds": 0}) is None
    with pytest.raises(OptionError, match="--stallTimeoutSeconds"):
        watchdog_from_options({"stallTimeoutSeconds": -1})


def test_options_come_with_every_kafka_source_and_not_with_the_generator():
    for module in (kafka_to_bigquery, kafka_to_gcs):
        names = {o.name for o in module.OPTIONS}
        assert {"progressSeconds", "stallTimeoutSeconds"} <= names
    assert not {"progressSeconds", "stallTimeoutSeconds"} & {
        o.name for o in generate_events.OPTIONS
    }
    cls = options_class("WatchdogOpts", KAFKA_SOURCE)
    base = ["--bootstrapServers=127.0.0.1:9092", "--inputTopic=t"]
    values = validate(cls(base), KAFKA_SOURCE)
    assert (values["progressSeconds"], values["stallTimeoutSeconds"]) == (60, 300)
    values = validate(cls([*base, "--progressSeconds=0", "--stallTimeoutSeconds=5"]), KAFKA_SOURCE)
    assert (values["progressSeconds"], values["stallTimeoutSeconds"]) == (0, 5)
    with pytest.raises(OptionError, match="--stallTimeoutSeconds"):
        validate(cls([*base, "--stallTimeoutSeconds=-5"]), KAFKA_SOURCE)
