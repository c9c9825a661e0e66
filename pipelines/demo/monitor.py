"""Watch the scorer's output topics live: counts, alerts as they happen, produce→prediction latency.

The demo runs this in a background thread while it streams events into the scoring pipeline.
It reads the prediction, alert and dead-letter topics from their beginning (assign mode, no
group), so nothing the scorer wrote is missed, and measures latency as the Kafka timestamp of a
prediction minus the Kafka timestamp of the event it scores (``event_time``).

Usage::

    monitor = ScoringMonitor(config, predictions="p", alerts="a", dead_letters="d")
    monitor.start()
    ...
    monitor.wait_for(total=1000, timeout=60)
    monitor.stop()
    print(monitor.snapshot())
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from transforms.kafka.config import KafkaConfig

__all__ = ["ScoringMonitor", "MonitorSnapshot"]

_LOGGER = logging.getLogger(__name__)


def _epoch_ms(rfc3339: str) -> float:
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000.0


@dataclasses.dataclass(frozen=True)
class MonitorSnapshot:
    """Counts and latency so far; latencies in milliseconds."""

    predictions: int
    anomalies: int
    alerts: int
    dead_letters: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    first_prediction_at: float | None
    last_prediction_at: float | None
    model_versions: tuple[int, ...]

    @property
    def accounted(self) -> int:
        """Events with an outcome: a prediction or a dead letter."""
        return self.predictions + self.dead_letters

    def line(self) -> str:
        """One status line for a live display."""
        latency = (
            f"p50 {self.latency_p50_ms:.0f} ms · p99 {self.latency_p99_ms:.0f} ms"
            if self.latency_p50_ms is not None
            else "latency —"
        )
        return (
            f"scored {self.predictions:>7,} · anomalies {self.anomalies:>5,} · "
            f"alerts {self.alerts:>5,} · dead letters {self.dead_letters:>5,} · {latency}"
        )


class ScoringMonitor:
    """A thread consuming the scorer's outputs and keeping live statistics.

    ``on_alert`` is called (from the monitor thread) with each alert's JSON dict, so the caller
    can print alerts as they arrive. ``latency_since_ms`` restricts the latency statistics to
    events produced after that Kafka timestamp (the demo's rate-limited live phase).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        predictions: str,
        alerts: str,
        dead_letters: str,
        on_alert: Callable[[dict], None] | None = None,
    ) -> None:
        self._config = config
        self._topics = {"prediction": predictions, "alert": alerts, "dead": dead_letters}
        self._on_alert = on_alert
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scoring-monitor", daemon=True)
        self._latencies: list[tuple[float, float]] = []  # (event_time_ms, latency_ms)
        self._predictions = self._anomalies = self._alerts = self._dead = 0
        self._first: float | None = None
        self._last: float | None = None
        self._versions: set[int] = set()
        self._error: BaseException | None = None
        self.latency_since_ms = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None:
            raise RuntimeError("the scoring monitor failed") from self._error

    def snapshot(self) -> MonitorSnapshot:
        with self._lock:
            live = [lat for at, lat in self._latencies if at >= self.latency_since_ms]
            p50, p99 = np.percentile(live, [50, 99]) if live else (None, None)
            return MonitorSnapshot(
                predictions=self._predictions,
                anomalies=self._anomalies,
                alerts=self._alerts,
                dead_letters=self._dead,
                latency_p50_ms=None if p50 is None else float(p50),
                latency_p99_ms=None if p99 is None else float(p99),
                first_prediction_at=self._first,
                last_prediction_at=self._last,
                model_versions=tuple(sorted(self._versions)),
            )

    def wait_for(
        self, total: int, timeout: float, tick: Callable[[MonitorSnapshot], None] | None = None
    ) -> MonitorSnapshot:
        """Block until ``total`` events have an outcome or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if tick is not None:
                tick(snap)
            if snap.accounted >= total or time.monotonic() > deadline or self._error:
                return snap
            time.sleep(0.25)

    def _run(self) -> None:
        settings = self._config.consumer_dict(group_id="kafka-beam-ml-demo-monitor")
        consumer = Consumer({**settings, "enable.auto.commit": "false"})
        try:
            assignment = []
            for topic in self._topics.values():
                metadata = consumer.list_topics(topic, timeout=10).topics[topic]
                assignment += [
                    TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions
                ]
            consumer.assign(assignment)
            kinds = {topic: kind for kind, topic in self._topics.items()}
            while not self._stop.is_set():
                for message in consumer.consume(500, 0.2):
                    if message.error() is None:
                        self._count(kinds[message.topic()], message)
        except BaseException as err:  # surfaced by stop()
            self._error = err
            _LOGGER.exception("scoring monitor failed")
        finally:
            consumer.close()

    def _count(self, kind: str, message) -> None:
        if kind == "dead":
            with self._lock:
                self._dead += 1
            return
        record = json.loads(message.value())
        if kind == "alert":
            with self._lock:
                self._alerts += 1
            if self._on_alert is not None:
                self._on_alert(record)
            return
        now = time.monotonic()
        event_ms = _epoch_ms(record["event_time"])
        latency = message.timestamp()[1] - event_ms
        with self._lock:
            self._predictions += 1
            self._anomalies += bool(record["is_anomaly"])
            self._versions.add(int(record["model_version"]))
            self._latencies.append((event_ms, latency))
            self._first = self._first or now
            self._last = now
