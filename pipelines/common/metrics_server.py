"""Prometheus endpoint for a locally running pipeline: its progress counters and lag, live.

The local runners report Beam metrics only when a pipeline ends, and a stream does not end. This
serves the process's progress registry (:mod:`transforms.progress`: records consumed, written,
dead-lettered, predictions, alerts; position, end, committed offset and lag per partition) on
``http://<metricsHost>:<metricsPort>/metrics``, read afresh at every scrape. It is opt-in
(``--metricsPort``) and binds 127.0.0.1 unless ``--metricsHost`` says otherwise: the endpoint has
no authentication. On Dataflow the same counters are Beam metrics (namespace
``kafka_beam_ml.progress``), shown by Cloud Monitoring; the flag is then ignored.

Metric names (all prefixed ``kafka_beam_ml_``): ``<counter>_total`` for each counter,
``partition_lag``/``partition_position``/``partition_end_offset``/
``partition_committed_offset`` with labels ``topic`` and ``partition``, ``lag`` (total) and
``seconds_since_progress``.

Usage (a pipeline's ``run()``)::

    run_pipeline(build, opts, name="score_events", metrics=metrics_server_from_options(values))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipelines.common.options import OptionError
from transforms import progress
from transforms.progress import ProgressRegistry

__all__ = ["PREFIX", "MetricsServer", "ProgressCollector", "metrics_server_from_options"]

_LOGGER = logging.getLogger(__name__)

PREFIX = "kafka_beam_ml_"
_COUNTER_HELP = {
    progress.CONSUMED: "Records the Kafka reader handed downstream.",
    progress.WRITTEN: "Records (or outputs) sinks wrote durably.",
    progress.DEAD_LETTERS: "Records routed to a dead-letter output.",
    progress.PREDICTIONS: "Events the model scored.",
    progress.ALERTS: "Scored events flagged as anomalies.",
}
_PARTITION_GAUGES = (
    ("partition_lag", "Records between the reader's position and the partition's end.", "lag"),
    ("partition_position", "Next offset the reader reads.", "position"),
    ("partition_end_offset", "End offset the read can reach now.", "end"),
    ("partition_committed_offset", "Offset last committed for the consumer group.", "committed"),
)


class ProgressCollector(Collector):
    """Turns a :class:`~transforms.progress.ProgressRegistry` snapshot into Prometheus metrics
    at each scrape (no second set of counters to keep in step)."""

    def __init__(self, registry: ProgressRegistry | None = None) -> None:
        self._registry = registry if registry is not None else progress.REGISTRY

    def collect(self) -> Iterator[Any]:
        snapshot = self._registry.snapshot()
        names = [*_COUNTER_HELP, *sorted(set(snapshot.counters) - set(_COUNTER_HELP))]
        for name in names:
            help_text = _COUNTER_HELP.get(name, f"Progress counter {name!r}.")
            yield CounterMetricFamily(f"{PREFIX}{name}", help_text, value=snapshot.counter(name))
        for metric, help_text, attribute in _PARTITION_GAUGES:
            family = GaugeMetricFamily(
                f"{PREFIX}{metric}", help_text, labels=["topic", "partition"]
            )
            for part in snapshot.partitions:
                value = getattr(part, attribute)
                if value is not None:
                    family.add_metric([part.topic, str(part.partition)], value)
            yield family
        yield GaugeMetricFamily(
            f"{PREFIX}lag", "Total lag over the partitions this process reads.", snapshot.total_lag
        )
        if snapshot.last_progress_at is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}seconds_since_progress",
                "Seconds since a counter grew, a position moved or a commit advanced.",
                max(0.0, snapshot.taken_at - snapshot.last_progress_at),
            )


class MetricsServer:
    """The HTTP endpoint; :meth:`start` binds it (errors name the flag), :meth:`stop` closes it.

    Args:
        port: TCP port (``0``: any free one, see :attr:`port` after :meth:`start`).
        host: address to bind; the default 127.0.0.1 keeps it off the network.
        registry: the progress registry served (default: the process's).
    """

    def __init__(
        self, port: int, host: str = "127.0.0.1", registry: ProgressRegistry | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._collectors = CollectorRegistry(auto_describe=False)
        self._collectors.register(ProgressCollector(registry))
        self._server = None
        self._thread = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self._collectors
            )
        except OSError as err:
            raise OptionError(
                f"--metricsPort={self.port} (--metricsHost={self.host}): cannot listen: "
                f"{err.strerror or err}"
            ) from err
        self.port = self._server.server_port
        _LOGGER.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


def metrics_server_from_options(values: Mapping[str, Any]) -> MetricsServer | None:
    """The server ``--metricsPort``/``--metricsHost`` ask for, not started; None when off."""
    port = values.get("metricsPort")
    if not port:
        return None
    return MetricsServer(int(port), values.get("metricsHost") or "127.0.0.1")
