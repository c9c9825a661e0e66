"""pipelines.common.metrics_server: the progress registry as Prometheus metrics, over real HTTP."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.common.metrics_server import MetricsServer, metrics_server_from_options
from pipelines.common.options import OptionError
from transforms import progress
from transforms.progress import ProgressRegistry


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def served():
    clock = _Clock()
    registry = ProgressRegistry(clock)
    server = MetricsServer(0, registry=registry)
    server.start()
    try:
        yield registry, clock, server
    finally:
        server.stop()


def test_counters_partitions_and_lag_are_served(served):
    registry, clock, server = served
    registry.add(progress.CONSUMED, 120)
    registry.add(progress.WRITTEN, 100)
    registry.add(progress.PREDICTIONS, 90)
    registry.add(progress.ALERTS, 4)
    registry.add("custom", 2)
    registry.record_position("events", 0, 60, 100)
    registry.record_position("events", 1, 60, 60)
    registry.record_commit("events", 0, 50)
    clock.now = 107.5
    samples = _samples(server.url)

    assert samples[("kafka_beam_ml_consumed_total", ())] == 120
    assert samples[("kafka_beam_ml_written_total", ())] == 100
    assert samples[("kafka_beam_ml_dead_letters_total", ())] == 0
    assert samples[("kafka_beam_ml_predictions_total", ())] == 90
    assert samples[("kafka_beam_ml_alerts_total", ())] == 4
    assert samples[("kafka_beam_ml_custom_total", ())] == 2
    p0 = (("partition", "0"), ("topic", "events"))
    p1 = (("partition", "1"), ("topic", "events"))
    assert samples[("kafka_beam_ml_partition_lag", p0)] == 40
    assert samples[("kafka_beam_ml_partition_lag", p1)] == 0
    assert samples[("kafka_beam_ml_partition_position", p0)] == 60
    assert samples[("kafka_beam_ml_partition_end_offset", p0)] == 100
    assert samples[("kafka_beam_ml_partition_committed_offset", p0)] == 50
    assert ("kafka_beam_ml_partition_committed_offset", p1) not in samples  # never committed
    assert samples[("kafka_beam_ml_lag", ())] == 40
    assert samples[("kafka_beam_ml_seconds_since_progress", ())] == pytest.approx(7.5)


def test_each_scrape_reads_the_registry_afresh(served):
    registry, _, server = served
    assert _samples(server.url)[("kafka_beam_ml_consumed_total", ())] == 0
    registry.add(progress.CONSUMED, 5)
    assert _samples(server.url)[("kafka_beam_ml_consumed_total", ())] == 5


def test_binds_localhost_by_default_and_a_taken_port_names_the_flag(served):
    _, _, server = served
    assert server.host == "127.0.0.1"
    taken = MetricsServer(server.port)
    with pytest.raises(OptionError, match=rf"--metricsPort={server.port} .*cannot listen"):
        taken.start()


def test_options_turn_it_on_only_with_a_port():
    assert metrics_server_from_options({"metricsPort": None}) is None
    assert metrics_server_from_options({"metricsPort": 0}) is None
    server = metrics_server_from_options({"metricsPort": 9464, "metricsHost": "0.0.0.0"})
    assert (server.port, server.host) == (9464, "0.0.0.0")


def test_stop_frees_the_port():
    server = MetricsServer(0)
    server.start()
    port = server.port
    server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
