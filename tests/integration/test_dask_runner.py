"""kafka_to_gcs on a real 2-worker dask.distributed cluster (scripts/dask.sh) vs the DirectRunner.

The Dask run reads the topic as work units (several per partition) with the plain-DoFn reader,
on worker processes started by the project's script; the DirectRunner run uses the splittable
reader. Every TFRecord row and every dead letter must be the same, and the Dask run's group
must have committed every partition to its end.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow as tf
from export_events import committed_total, creditcard_event, invalid_messages, produce

from pipelines import kafka_to_gcs
from transforms.decoding.schema import bundled_schema_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory) -> Iterator[str]:
    """A scheduler and two single-threaded worker processes, stopped by PID afterwards."""
    env = {**os.environ, "KBML_DASK_DIR": str(tmp_path_factory.mktemp("dask"))}
    script = str(ROOT / "scripts" / "dask.sh")
    up = subprocess.run(
        ["bash", script, "up", "--workers", "2"], env=env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    try:
        yield up.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", script, "down"], env=env, check=True)


def _export(stack_env, topic: str, group: str, output: Path, *runner_args: str) -> None:
    kafka_to_gcs.run(
        [
            f"--bootstrapServers={stack_env['KAFKA_BOOTSTRAP_SERVERS']}",
            f"--kafkaConfig={stack_env['KAFKA_CONFIG']}",
            f"--inputTopic={topic}",
            f"--consumerGroupId={group}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--outputDirectory={output}",
            "--numShards=2",
            "--workUnitRecords=9",  # ~22 offsets per partition: 3 units each on Dask
            *runner_args,
        ]
    )


def _examples(output: Path) -> list[bytes]:
    shards = sorted(str(p) for p in output.glob("part-*-of-00002.tfrecord"))
    assert len(shards) == 2, sorted(os.listdir(output))
    return sorted(record.numpy() for record in tf.data.TFRecordDataset(shards))


def _dead_letters(output: Path) -> list[dict]:
    """Every letter without ``failed_at`` (when it was written)."""
    letters = [
        {k: v for k, v in json.loads(line).items() if k != "failed_at"}
        for path in sorted((output / "deadletter").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return sorted(letters, key=lambda d: (d["partition"], d["offset"]))


@pytest.mark.timeout(300)
def test_export_on_a_two_worker_dask_cluster_equals_the_direct_runner(
    stack_env, kafka_config, topic_factory, tmp_path, dask_address
):
    topic = topic_factory(partitions=3)
    valid = [creditcard_event(i) for i in range(60)]
    invalid = invalid_messages()
    produce(kafka_config, topic, [json.dumps(r).encode() for r in valid] + invalid)

    _export(stack_env, topic, "direct-" + topic, tmp_path / "direct", "--runner=DirectRunner")
    _export(
        stack_env,
        topic,
        "dask-" + topic,
        tmp_path / "dask",
        "--runner=DaskRunner",
        f"--dask_client_address={dask_address}",
    )

    direct, dask = _examples(tmp_path / "direct"), _examples(tmp_path / "dask")
    assert len(direct) == len(valid)
    assert dask == direct
    letters = _dead_letters(tmp_path / "dask")
    assert len(letters) == len(invalid)
    assert letters == _dead_letters(tmp_path / "direct")
    assert (tmp_path / "dask" / "schema.json").read_text() == (
        tmp_path / "direct" / "schema.json"
    ).read_text()
    total = len(valid) + len(invalid)
    assert committed_total(kafka_config, topic, "dask-" + topic, 3) == total
