"""The one-command demo, reduced in size, end to end on the local stack (as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if text in line and "ps -eo" not in line]


def _delete_topics(kafka_config, topics: list[str]) -> None:
    """The demo keeps its topics for users to inspect; the test removes them (broker state)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config.producer_dict())  # must outlive its futures
    for future in admin.delete_topics(topics).values():
        future.result(timeout=10)


def test_demo_accounts_for_every_event_and_leaves_nothing_running(
    stack_env, kafka_config, tmp_path
):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.demo.walkthrough",
            "--events=4000",
            "--burst-events=500",
            "--live-events=200",
            "--rate=100",
            "--epochs=5",
            "--malformed=0.01",
            f"--output-dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (summary_path,) = tmp_path.glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    _delete_topics(kafka_config, list(summary["topics"].values()))

    # Every live event has an outcome: a prediction or a dead letter; malformed ones are dead.
    assert summary["live_events_in"] == 700
    assert summary["scored"] + summary["live_dead_letters"] == summary["live_events_in"]
    assert summary["live_dead_letters"] >= 1
    assert summary["alerts"] == summary["anomalies"]
    # Export: every historic event is a row or a dead letter, in both sinks.
    assert summary["export_dead_letters"] >= 1
    assert summary["exported_rows_gcs"] + summary["export_dead_letters"] == 4000
    assert summary["exported_rows_bigquery"] == summary["exported_rows_gcs"]
    # The model and its plots.
    model = summary["model"]
    for metric in ("pr_auc", "precision", "recall"):
        assert 0.0 <= model[metric] <= 1.0
    assert (Path(model["path"]) / "saved_model.pb").exists()
    for plot in summary["plots"]:
        assert Path(plot).stat().st_size > 1000
    assert summary["latency_p50_ms"] is not None and summary["latency_p99_ms"] is not None
    assert "[6/6] Summary" in result.stdout

    # Nothing left behind: the scorer is gone, and the stack the demo reused is still up.
    assert _processes_mentioning(summary["run_id"]) == []
    status = subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), "status"], check=False)
    assert status.returncode == 0
