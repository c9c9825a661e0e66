"""A noida-db broker of one test, driven through ``scripts/stack.sh``, and a scorer against it.

Fault tests stop, edit and restart this broker, so the shared broker of the other tests never
moves. :meth:`PrivateBroker.drop_tail` edits the stopped broker's state file the way noida-db's
own snapshots lose data (the last records of a partition gone, the groups' committed offsets
kept): a deterministic version of what an unclean restart does now and then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from ports import free_port

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS

__all__ = ["PrivateBroker", "start_scorer"]

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "scripts" / "stack.sh"


class PrivateBroker:
    """``scripts/stack.sh`` with a state directory and a port of its own."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.env = {
            **os.environ,
            "KBML_PYTHON": sys.executable,
            "KBML_STACK_DIR": str(state_dir),
            "KBML_KAFKA_PORT": str(self.port),
        }

    def stack(self, *args: str) -> None:
        subprocess.run(
            ["bash", str(STACK), *args], env=self.env, check=True, capture_output=True, timeout=300
        )

    def drop_tail(self, topic: str, partition: int, keep_below: int) -> int:
        """With the broker stopped: drop the record batches of ``topic[partition]`` from the
        first one that ends at or past ``keep_below``; returns the new log end. Committed
        offsets stay as they were."""
        path = self.state_dir / "data" / "kafka" / "kafka.json"
        state = json.loads(path.read_text())
        (entry,) = (value for name, value in state["topics"] if name == topic)
        (log,) = (value for number, value in entry["partitions"] if number == partition)
        batches = log["record_batches"]
        kept = [batch for batch in batches if batch[0] + _records_in(batch[1]) <= keep_below]
        end = kept[-1][0] + _records_in(kept[-1][1]) if kept else log["log_start_offset"]
        log["record_batches"], log["high_watermark"] = kept, end
        path.write_text(json.dumps(state))
        return end


def _records_in(batch: list[int]) -> int:
    """Offsets a Kafka v2 record batch spans: its last offset delta (bytes 23..26) plus one."""
    return int.from_bytes(bytes(batch[23:27]), "big") + 1


def start_scorer(
    broker: PrivateBroker,
    topics: dict[str, str],
    model_root: str,
    log,
    group: str | None = None,
    *flags: str,
) -> subprocess.Popen:
    """``score_events --streaming`` on the FnApiRunner, in its own session (stop it by group);
    ``flags`` are further options."""
    extra = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.score_events",
            "--runner=FnApiRunner",
            "--streaming",
            f"--bootstrapServers={broker.bootstrap}",
            f"--kafkaConfig={extra}",
            f"--inputTopic={topics['input']}",
            f"--outputTopic={topics['output']}",
            f"--deadLetterTopic={topics['dead']}",
            f"--consumerGroupId={group or f'scorer-{uuid.uuid4().hex[:8]}'}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            "--progressSeconds=10",
            *flags,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
