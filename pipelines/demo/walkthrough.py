"""The local end-to-end demo: the whole design on the embedded stack, in one command.

1. start the local stack (``scripts/stack.sh up``; reused when it is already up);
2. generate credit-card transactions (with a few malformed messages) into a history topic;
3. export them with the batch pipelines: Kafka → TFRecords on gs:// (GCS emulator) and Kafka →
   BigQuery (emulator), dead letters beside them;
4. train: tf.Transform analysis + the autoencoder, from the exported TFRecords; metrics and plots;
5. start the live scoring pipeline (``--streaming``, a subprocess), stream a burst and then a
   rate-limited flow of new events (frauds and malformed ones included) and show predictions and
   alerts as they arrive;
6. print a summary table, write it as ``summary.json`` and stop every process it started (also on
   Ctrl-C).

Usage (``scripts/demo.sh`` installs everything first and passes its arguments on)::

    python -m pipelines.demo [--events 50000] [--live-events 2000] [--rate 200] [--keep-stack]
"""

from __future__ import annotations

import os

# Before TensorFlow is imported: its C++ start-up chatter is not for demo viewers.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipelines import generate_events, kafka_to_bigquery, kafka_to_gcs, train
from pipelines.demo.monitor import MonitorSnapshot, ScoringMonitor
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import KafkaConfig
from transforms.sinks.gcp_endpoints import GcpEndpoints

__all__ = ["DemoSettings", "run"]

_LOGGER = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]
_STACK = _ROOT / "scripts" / "stack.sh"
_BUCKET = "kafka-beam-ml-demo"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the command line chooses: sizes, rates and where outputs go."""

    events: int
    live_events: int
    burst_events: int
    rate: float
    live_fraud_rate: float
    malformed: float
    output_dir: Path
    keep_stack: bool
    seed: int
    epochs: int


def _parse(argv: Sequence[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        default=50_000,
        help="historic transactions produced, exported and trained on",
    )
    parser.add_argument(
        "--live-events",
        type=int,
        default=2_000,
        help="events streamed at --rate into the running scorer (latency phase)",
    )
    parser.add_argument(
        "--burst-events",
        type=int,
        default=10_000,
        help="events produced as fast as possible into the scorer (throughput)",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="live events per second")
    parser.add_argument(
        "--live-fraud-rate",
        type=float,
        default=0.01,
        help="share of frauds among the live events (more than in history, so alerts show up)",
    )
    parser.add_argument(
        "--malformed",
        type=float,
        default=0.005,
        help="share of malformed messages (they become dead letters)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=_ROOT / "out" / "demo",
        help="model, plots and summary.json go under <dir>/<run id>/",
    )
    parser.add_argument(
        "--keep-stack",
        action="store_true",
        help="leave the local stack running when the demo started it",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the event generator")
    parser.add_argument("--epochs", type=int, default=40, help="maximum training epochs")
    args = parser.parse_args(argv)
    for name in ("events", "live_events", "rate"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.burst_events < 0 or not 0 <= args.malformed < 1 or not 0 <= args.live_fraud_rate < 1:
        parser.error("--burst-events ≥ 0; --malformed and --live-fraud-rate in [0, 1)")
    return DemoSettings(**vars(args))


def _say(text: str) -> None:
    print(text, flush=True)


def _step(number: int, title: str) -> None:
    _say(f"\n\033[1m[{number}/6] {title}\033[0m")


def _stack(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(_STACK), command],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def _local_stack(keep: bool) -> Iterator[dict[str, str]]:
    """Start the stack unless it is up; export its settings; stop it after if we started it."""
    already_up = _stack("status").returncode == 0
    if not already_up:
        up = _stack("up")
        if up.returncode != 0:
            raise RuntimeError(f"scripts/stack.sh up failed:\n{up.stdout}{up.stderr}")
    env: dict[str, str] = {}
    for line in _stack("env").stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    os.environ.update(env)
    state = "reused" if already_up else "started"
    _say(
        f"local stack {state}: Kafka {env['KAFKA_BOOTSTRAP_SERVERS']}"
        f", BigQuery {env['BIGQUERY_EMULATOR_HOST']}, GCS {env['STORAGE_EMULATOR_HOST']}"
    )
    try:
        yield env
    finally:
        if not already_up and not keep:
            _say("stopping the local stack (it was started by the demo)")
            _stack("down")


@contextlib.contextmanager
def _scorer(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """The streaming scoring pipeline in its own process group, always stopped on exit."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.score_events", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=_ROOT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


class _LiveDisplay:
    """Alerts as they arrive and one status line: redrawn in place on a terminal, every 2 s
    into a log file (so piped output stays readable)."""

    def __init__(self, max_alerts: int = 8) -> None:
        self._interactive = sys.stdout.isatty()
        self._max_alerts = max_alerts
        self._alerts = 0
        self._line = ""
        self._at = 0.0

    def alert(self, alert: dict) -> None:
        self._alerts += 1
        if self._alerts <= self._max_alerts:
            clear = "\r\033[K" if self._interactive else ""
            _say(
                f"{clear}  ALERT card {alert.get('key')} event {alert.get('event_id')} "
                f"score {alert['score']:.3f} > threshold {alert['threshold']:.3f}"
            )

    def tick(self, snap: MonitorSnapshot) -> None:
        line = snap.line()
        if line == self._line or (not self._interactive and time.monotonic() - self._at < 2):
            return
        self._line, self._at = line, time.monotonic()
        sys.stdout.write(f"\r\033[K  {line}" if self._interactive else f"  {line}\n")
        sys.stdout.flush()

    def end_line(self) -> None:
        if self._interactive:
            _say("")


def _produce(kafka: list[str], topic: str, count: int, seed: int, **extra: Any) -> Any:
    argv = [
        *kafka,
        "--kind=creditcard",
        f"--topic={topic}",
        f"--count={count}",
        f"--seed={seed}",
        "--partitions=3",
    ]
    argv += [f"--{name}={value}" for name, value in extra.items() if value is not None]
    return generate_events.run(argv)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    rule = "─" * (width + 2) + "┼" + "─" * 60
    body = "\n".join(f" {name:<{width}} │ {value}" for name, value in rows)
    return f"{rule}\n{body}\n{rule}"


def _count_jsonl(pattern: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    total = 0
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(metadata.path) as handle:
            total += sum(1 for line in handle.read().splitlines() if line.strip())
    return total


def _ensure_dataset(project: str, dataset: str) -> None:
    GcpEndpoints.from_options().bigquery_client().create_dataset(
        f"{project}.{dataset}", exists_ok=True
    )


def _bq_count(table: str) -> int:
    client = GcpEndpoints.from_options().bigquery_client()
    return client.get_table(table.replace(":", ".")).num_rows


def _ensure_bucket(name: str) -> None:
    client = GcpEndpoints.from_options().storage_client()
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)


def _demo(settings: DemoSettings, env: dict[str, str]) -> dict[str, Any]:
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    out = (settings.output_dir / run_id).resolve()
    out.mkdir(parents=True, exist_ok=True)
    project = env["GOOGLE_CLOUD_PROJECT"]
    kafka = [
        f"--bootstrapServers={env['KAFKA_BOOTSTRAP_SERVERS']}",
        f"--kafkaConfig={env['KAFKA_CONFIG']}",
    ]
    topics = {
        name: f"demo-{run_id}-{name}"
        for name in ("history", "live", "predictions", "alerts", "deadletters")
    }
    schema = bundled_schema_path("creditcard")
    export_dir = f"gs://{_BUCKET}/{run_id}/training"
    dataset = "demo_" + run_id.replace("-", "_")
    summary: dict[str, Any] = {"run_id": run_id, "topics": topics, "output_dir": str(out)}

    _step(2, f"Generate {settings.events:,} historic transactions into {topics['history']}")
    produced = _produce(
        kafka, topics["history"], settings.events, settings.seed, malformed=settings.malformed
    )
    summary["history_events"] = produced.delivered
    summary["history_malformed"] = sum(produced.malformed.values())

    _step(3, "Export: Kafka → TFRecords on gs:// and Kafka → BigQuery (batch, bounded)")
    source = [
        *kafka,
        f"--inputTopic={topics['history']}",
        "--startOffset=earliest",
        f"--schemaPath={schema}",
        "--runner=FnApiRunner",
        f"--project={project}",
    ]
    _ensure_bucket(_BUCKET)
    started = time.monotonic()
    kafka_to_gcs.run(
        [
            *source,
            f"--outputDirectory={export_dir}",
            "--labelField=Class",
            f"--consumerGroupId=demo-{run_id}-export-gcs",
        ]
    )
    summary["export_gcs_seconds"] = round(time.monotonic() - started, 1)
    gcs_dead = _count_jsonl(f"{export_dir}/{kafka_to_gcs.DEAD_LETTER_DIR}/*")
    table = f"{project}:{dataset}.transactions"
    _ensure_dataset(project, dataset)
    started = time.monotonic()
    kafka_to_bigquery.run(
        [
            *source,
            f"--outputTableSpec={table}",
            f"--outputDeadletterTable={project}:{dataset}.dead_letters",
            f"--consumerGroupId=demo-{run_id}-export-bq",
        ]
    )
    summary["export_bigquery_seconds"] = round(time.monotonic() - started, 1)
    summary["exported_rows_bigquery"] = _bq_count(table)
    summary["export_dead_letters"] = gcs_dead
    summary["exported_rows_gcs"] = summary["history_events"] - gcs_dead
    summary["bigquery_table"] = table
    summary["tfrecords"] = f"{export_dir}/{kafka_to_gcs.SHARD_PREFIX}-*"
    _say(
        f"exported {summary['exported_rows_gcs']:,} rows to {export_dir} in "
        f"{summary['export_gcs_seconds']} s and {summary['exported_rows_bigquery']:,} rows to "
        f"BigQuery {table} in {summary['export_bigquery_seconds']} s; "
        f"{gcs_dead} dead letters (malformed messages)"
    )

    _step(4, "Train: tf.Transform analysis + autoencoder on the exported rows")
    model_root = out / "model"
    started = time.monotonic()
    result = train.run(
        [
            f"--trainingData={summary['tfrecords']}",
            f"--transformDir={out / 'transform'}",
            f"--modelPath={model_root}",
            f"--epochs={settings.epochs}",
            f"--seed={settings.seed}",
            f"--project={project}",
        ]
    )
    summary["train_seconds"] = round(time.monotonic() - started, 1)
    test = result.metrics["test"]
    summary["model"] = {
        "version": result.version,
        "path": result.version_dir,
        "threshold": result.threshold,
        "pr_auc": test.get("pr_auc"),
        "precision": test.get("precision"),
        "recall": test.get("recall"),
    }
    summary["plots"] = [
        str(Path(result.version_dir) / name) for name in ("pr_curve.png", "score_histogram.png")
    ]
    _say(
        f"model v{result.version}: PR-AUC {test.get('pr_auc'):.3f}, precision "
        f"{test.get('precision'):.3f}, recall {test.get('recall'):.3f} at threshold "
        f"{result.threshold:.4g}\nplots: {', '.join(summary['plots'])}"
    )

    _step(5, "Score live: streaming pipeline, events in, predictions and alerts out")
    config = KafkaConfig.from_options(
        {"bootstrapServers": env["KAFKA_BOOTSTRAP_SERVERS"], "kafkaConfig": env["KAFKA_CONFIG"]}
    )
    for name in ("live", "predictions", "alerts", "deadletters"):
        generate_events.ensure_topic(config, topics[name], 3)
    scorer_argv = [
        *kafka,
        "--runner=FnApiRunner",
        "--streaming",
        f"--inputTopic={topics['live']}",
        f"--outputTopic={topics['predictions']}",
        f"--alertTopic={topics['alerts']}",
        f"--deadLetterTopic={topics['deadletters']}",
        f"--consumerGroupId=demo-{run_id}-scorer",
        "--startOffset=earliest",
        f"--schemaPath={schema}",
        f"--modelPath={model_root}",
    ]
    display = _LiveDisplay()
    monitor = ScoringMonitor(
        config,
        predictions=topics["predictions"],
        alerts=topics["alerts"],
        dead_letters=topics["deadletters"],
        on_alert=display.alert,
    )
    with _scorer(scorer_argv, out / "scorer.log") as scorer:
        monitor.start()
        expected = 0
        started = time.monotonic()
        if settings.burst_events:
            burst = _produce(
                kafka,
                topics["live"],
                settings.burst_events,
                settings.seed + 1,
                fraudRate=settings.live_fraud_rate,
                malformed=settings.malformed,
            )
            expected += burst.delivered
            burst_snap = monitor.wait_for(expected, timeout=300, tick=display.tick)
            display.end_line()
            if burst_snap.first_prediction_at and burst_snap.last_prediction_at:
                span = burst_snap.last_prediction_at - burst_snap.first_prediction_at
                summary["burst_msgs_per_s"] = round(burst_snap.predictions / max(span, 1e-3))
            summary["scorer_startup_and_burst_seconds"] = round(time.monotonic() - started, 1)
        monitor.latency_since_ms = time.time() * 1000.0
        live = _produce(
            kafka,
            topics["live"],
            settings.live_events,
            settings.seed + 2,
            rate=settings.rate,
            fraudRate=settings.live_fraud_rate,
            malformed=settings.malformed,
        )
        expected += live.delivered
        final = monitor.wait_for(expected, timeout=120, tick=display.tick)
        display.end_line()
        if scorer.poll() is not None:
            raise RuntimeError(
                f"the scorer exited with {scorer.returncode}; see {out / 'scorer.log'}"
            )
    monitor.stop()
    summary.update(
        live_events_in=expected,
        scored=final.predictions,
        anomalies=final.anomalies,
        alerts=final.alerts,
        live_dead_letters=final.dead_letters,
        latency_p50_ms=final.latency_p50_ms and round(final.latency_p50_ms),
        latency_p99_ms=final.latency_p99_ms and round(final.latency_p99_ms),
        live_rate_msgs_per_s=settings.rate,
        model_versions=list(final.model_versions),
        scorer_log=str(out / "scorer.log"),
    )
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    model = summary["model"]
    topics = summary["topics"]
    p50, p99 = summary["latency_p50_ms"], summary["latency_p99_ms"]
    rows = [
        (
            "events in",
            f"{summary['history_events']:,} historic + {summary['live_events_in']:,} live",
        ),
        (
            "rows exported",
            f"{summary['exported_rows_gcs']:,} TFRecord rows · "
            f"{summary['exported_rows_bigquery']:,} BigQuery rows",
        ),
        (
            "dead letters",
            f"{summary['export_dead_letters']:,} export · {summary['live_dead_letters']:,} live",
        ),
        (
            "model",
            f"v{model['version']} · PR-AUC {model['pr_auc']:.3f} · precision "
            f"{model['precision']:.3f} · recall {model['recall']:.3f}",
        ),
        (
            "events scored",
            f"{summary['scored']:,} · {summary['anomalies']:,} anomalies · "
            f"{summary['alerts']:,} alerts",
        ),
        (
            "accounted for",
            f"{summary['scored'] + summary['live_dead_letters']:,} of "
            f"{summary['live_events_in']:,} live events (scored + dead letters)",
        ),
        (
            "msgs/s",
            f"{summary.get('burst_msgs_per_s', '—')} scoring a burst · live at "
            f"{summary['live_rate_msgs_per_s']:.0f}/s",
        ),
        ("latency", f"p50 {p50} ms · p99 {p99} ms (produce → prediction, live phase)"),
        ("topics", ", ".join(topics.values())),
        ("BigQuery table", summary["bigquery_table"]),
        ("TFRecords", summary["tfrecords"]),
        ("model path", model["path"]),
        ("plots", ", ".join(summary["plots"])),
        ("summary", str(Path(summary["output_dir"]) / "summary.json")),
    ]
    _say("\n\033[1m[6/6] Summary\033[0m\n" + _table(rows))


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns (and writes) the summary. Stops what it started, also on Ctrl-C."""
    settings = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (e.g. from a supervisor) unwinds like Ctrl-C so the context managers clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    _step(1, "Local stack")
    try:
        with _local_stack(settings.keep_stack) as env:
            summary = _demo(settings, env)
    except KeyboardInterrupt:
        _say("\ninterrupted: every process the demo started has been stopped")
        raise SystemExit(130) from None
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    _print_summary(summary)
    Path(summary["output_dir"], "summary.json").write_text(json.dumps(summary, indent=2))
    _say(f"done in {summary['total_seconds']} s")
    return summary

