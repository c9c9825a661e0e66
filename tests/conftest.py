"""Shared fixtures: the local stack (Kafka, BigQuery and GCS emulators) and fresh names per test.

The stack is started through ``scripts/stack.sh`` once per session if it is not already running,
and stopped at the end only if this session started it. Integration tests never skip: if the
stack cannot start, the fixture fails with the script's message.

Fixtures: ``stack_env`` (session; the ``stack.sh env`` values, also exported to ``os.environ``),
``kafka_bootstrap``, ``kafka_config``, ``topic_factory``, ``group_id``, ``gcp_endpoints``,
``bq_client``, ``bq_dataset``, ``gcs_bucket``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipelines.common import quiet_tensorflow
from transforms.kafka.config import LOCAL_BROKER_SETTINGS, KafkaConfig
from transforms.sinks.gcp_endpoints import GcpEndpoints

_LOGGER = logging.getLogger(__name__)

quiet_tensorflow.install()  # test logs without TensorFlow's CPU-only start-up notices

REPO = Path(__file__).resolve().parent.parent
STACK_SCRIPT = REPO / "scripts" / "stack.sh"
_ADMIN_TIMEOUT_S = 10.0


def _stack(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/stack.sh`` with this interpreter (the project venv)."""
    result = subprocess.run(
        ["bash", str(STACK_SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KBML_PYTHON": sys.executable},
        timeout=600,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"scripts/stack.sh {' '.join(args)} failed ({result.returncode}):\n{result.stderr}",
            pytrace=False,
        )
    return result


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """Start the local stack if needed; the client env (``stack.sh env``) as a dict.

    The values are also set in ``os.environ`` for the session (and restored afterwards); they
    include what ``GcpEndpoints.configure_process`` adds for Beam's ``gs://`` filesystem
    (``GOOGLE_APPLICATION_CREDENTIALS`` of the static emulator credential), so subprocesses
    started with this env behave the same.
    """
    status = json.loads(_stack("status", "--json", check=False).stdout)
    # Only a session that found the whole stack down owns it; a partial one may be shared.
    owned = not any(row["pid"] for row in status)
    # A stack of another checkout may hold the default ports: then this one moves to free ports.
    _stack("up", "--free-ports")
    env = json.loads(_stack("env", "--json").stdout)
    # Beam's gs:// filesystem: emulator endpoint and static emulator credentials (real ones would
    # try to refresh online); see GcpEndpoints.configure_process.
    GcpEndpoints.from_options(None, env).configure_process(env)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env
    if owned:
        _stack("down")


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_env: dict[str, str]) -> str:
    """``host:port`` of the local broker (``127.0.0.1:9092`` by default)."""
    return stack_env["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="session")
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    """A KafkaConfig for the local broker with the noida-db tuning (LOCAL_BROKER_SETTINGS)."""
    return KafkaConfig(bootstrap_servers=kafka_bootstrap).with_extra(LOCAL_BROKER_SETTINGS)


@pytest.fixture
def topic_factory(kafka_config: KafkaConfig) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=3) -> name``: a fresh uuid topic, deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_config.producer_dict())
    created: list[str] = []

    def create(partitions: int = 3) -> str:
        name = _unique("test-")
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=_ADMIN_TIMEOUT_S,
        )
        futures[name].result(timeout=_ADMIN_TIMEOUT_S)
        created.append(name)
        return name

    yield create
    if created:
        # Keeps the broker's state (and its periodic snapshot) small across a long session.
        for name, future in admin.delete_topics(
            created, operation_timeout=_ADMIN_TIMEOUT_S
        ).items():
            try:
                future.result(timeout=_ADMIN_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - cleanup must not mask the test's outcome
                _LOGGER.warning("could not delete topic %s: %s", name, err)


@pytest.fixture
def group_id() -> str:
    """A fresh consumer group id."""
    return _unique("test-group-")


@pytest.fixture(scope="session")
def gcp_endpoints(stack_env: dict[str, str]) -> GcpEndpoints:
    """Project and emulator endpoints of the local stack."""
    return GcpEndpoints.from_options(None, stack_env)


@pytest.fixture(scope="session")
def bq_client(gcp_endpoints: GcpEndpoints):  # -> google.cloud.bigquery.Client
    """google-cloud-bigquery client for the emulator (anonymous). Pass
    ``retry=gcp_endpoints.bigquery_retry`` to calls so an emulator error fails within 30 s."""
    return gcp_endpoints.bigquery_client()


@pytest.fixture
def bq_dataset(bq_client, gcp_endpoints: GcpEndpoints) -> Iterator[str]:
    """A fresh dataset id in the emulator project, deleted with its tables after the test."""
    dataset_id = _unique("test_")
    bq_client.create_dataset(dataset_id, retry=gcp_endpoints.bigquery_retry)
    yield dataset_id
    bq_client.delete_dataset(
        dataset_id, delete_contents=True, not_found_ok=True, retry=gcp_endpoints.bigquery_retry
    )


@pytest.fixture
def gcs_bucket(gcp_endpoints: GcpEndpoints) -> Iterator[str]:
    """A fresh bucket on the GCS emulator as ``gs://name``, emptied and deleted after the test."""
    client = gcp_endpoints.storage_client()
    name = client.create_bucket(_unique("test-")).name
    yield f"gs://{name}"
    bucket = client.lookup_bucket(name)  # None if the test deleted it
    if bucket is not None:
        for blob in client.list_blobs(name):
            blob.delete()
        bucket.delete()
