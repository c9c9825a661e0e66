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

``--use-case cars`` runs the connected-car path instead: simulated cars publish sensor readings
over MQTT (QoS 1) to the stack's Mosquitto, ``pipelines.mqtt_to_kafka`` (streaming, for the whole
run) bridges them into one Kafka topic; the export reads the history from it, the model learns
``is_anomaly``, and the scorer starts from the offsets where the history ends.

Usage (``scripts/demo.sh`` installs everything first and passes its arguments on)::

    python -m pipelines.demo [--use-case cards|cars] [--events 50000] [--live-events 2000]
                             [--rate 200] [--keep-stack]
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
from pipelines.demo.use_case import USE_CASES, UseCase
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import KafkaConfig
from transforms.mqtt import MqttConfig, end_session
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
    use_case: str = "cards"

    @property
    def case(self) -> UseCase:
        return USE_CASES[self.use_case]


def _parse(argv: Sequence[str] | None) -> DemoSettings:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--use-case",
        choices=tuple(USE_CASES),
        default="cards",
        help="cards: credit-card transactions into Kafka; cars: car sensors over MQTT → Kafka",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=50_000,
        help="historic events produced, exported and trained on",
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
        help="share of frauds (cars: anomalies) among the live events (more than in history, "
        "so alerts show up)",
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


def _stack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(_STACK), *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _services_up() -> set[str]:
    """The stack's services that answer now."""
    try:
        rows = json.loads(_stack("status", "--json").stdout)
    except ValueError:
        return set()
    return {row["service"] for row in rows if row["up"]}


@contextlib.contextmanager
def _local_stack(keep: bool, needed: Sequence[str]) -> Iterator[dict[str, str]]:
    """Start the ``needed`` services that are not up; export the stack's settings; stop after
    exactly the services the demo started (others, and other services, are left alone)."""
    started = [name for name in needed if name not in _services_up()]
    if started:
        up = _stack("up", *started)
        if up.returncode != 0:
            raise RuntimeError(f"scripts/stack.sh up failed:\n{up.stdout}{up.stderr}")
    env: dict[str, str] = {}
    for line in _stack("env").stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    os.environ.update(env)
    state = f"started {', '.join(started)}" if started else "reused"
    _say(
        f"local stack {state}: Kafka {env['KAFKA_BOOTSTRAP_SERVERS']}"
        f", BigQuery {env['BIGQUERY_EMULATOR_HOST']}, GCS {env['STORAGE_EMULATOR_HOST']}"
        + (f", MQTT {env['MQTT_BROKER']}" if "mqtt" in needed else "")
    )
    try:
        yield env
    finally:
        if started and not keep:
            _say(f"stopping what the demo started: {', '.join(started)}")
            _stack("down", *started)


@contextlib.contextmanager
def _pipeline(module: str, argv: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A streaming pipeline (``python -m module``) in its own process group, always stopped."""
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *argv],
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

    def __init__(self, entity: str, max_alerts: int = 8) -> None:
        self._entity = entity
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
                f"{clear}  ALERT {self._entity} {alert.get('key')} event {alert.get('event_id')} "
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


def _produce(
    run: _Run, topic: str, count: int, seed: int, *, anomaly_rate: float | None = None, **extra: Any
) -> generate_events.ProduceSummary:
    """Generate events into ``topic`` (cards) or publish them to the run's MQTT topics (cars)."""
    argv = [f"--kind={run.case.kind}", f"--count={count}", f"--seed={seed}"]
    if run.case.via_mqtt:
        argv += [f"--mqttBroker={run.mqtt_broker}", f"--mqttTopic={run.mqtt_root}/{{key}}/sensors"]
    else:
        argv += [*run.kafka, f"--topic={topic}", "--partitions=3"]
    extra[run.case.anomaly_rate_option] = anomaly_rate
    argv += [f"--{name}={value}" for name, value in extra.items() if value is not None]
    summary = generate_events.run(argv)
    if run.case.via_mqtt:
        run.published += summary.delivered
    return summary


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


@dataclasses.dataclass
class _Run:
    """One run's names and places, derived once from its id and shared by every step.

    For cars, ``topics["history"]`` and ``topics["live"]`` are the one topic the MQTT bridge
    writes; ``published`` counts what was published to MQTT so far.
    """

    run_id: str
    out: Path
    project: str
    kafka: tuple[str, ...]
    topics: dict[str, str]
    schema: str
    export_dir: str
    dataset: str
    case: UseCase
    mqtt_broker: str = ""
    published: int = 0

    @property
    def mqtt_root(self) -> str:
        """MQTT topics of this run: ``<root>/<car_id>/sensors``."""
        return f"demo-{self.run_id}/cars"

    @property
    def bridge_log(self) -> Path:
        return self.out / "bridge.log"

    @property
    def table(self) -> str:
        return f"{self.project}:{self.dataset}.{self.case.schema}"

    @property
    def model_root(self) -> Path:
        return self.out / "model"

    @property
    def scorer_log(self) -> Path:
        return self.out / "scorer.log"


def _new_run(settings: DemoSettings, env: dict[str, str]) -> _Run:
    """A fresh run id; its output directory, topics, bucket prefix and dataset all carry it."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    out = (settings.output_dir / run_id).resolve()
    out.mkdir(parents=True, exist_ok=True)
    case = settings.case
    topics = {
        name: f"demo-{run_id}-{name}"
        for name in ("history", "live", "predictions", "alerts", "deadletters")
    }
    if case.via_mqtt:
        topics["history"] = topics["live"] = f"demo-{run_id}-sensors"
        topics["bridge_deadletters"] = f"demo-{run_id}-bridge-deadletters"
    return _Run(
        run_id=run_id,
        out=out,
        project=env["GOOGLE_CLOUD_PROJECT"],
        kafka=(
            f"--bootstrapServers={env['KAFKA_BOOTSTRAP_SERVERS']}",
            f"--kafkaConfig={env['KAFKA_CONFIG']}",
        ),
        topics=topics,
        schema=bundled_schema_path(case.schema),
        export_dir=f"gs://{_BUCKET}/{run_id}/training",
        dataset="demo_" + run_id.replace("-", "_"),
        case=case,
        mqtt_broker=env.get("MQTT_BROKER", ""),
    )


def _seconds_since(started: float) -> float:
    """Seconds since ``started`` (a ``time.monotonic()``), to one decimal as the summary shows."""
    return round(time.monotonic() - started, 1)


def _produce_history(run: _Run, settings: DemoSettings) -> dict[str, Any]:
    """Step 2: the seeded historic events (a few malformed) that export and training read."""
    via = f"MQTT {run.mqtt_root}/+/sensors → " if run.case.via_mqtt else ""
    _step(
        2,
        f"Generate {settings.events:,} historic {run.case.events_noun} into "
        f"{via}{run.topics['history']}",
    )
    produced = _produce(
        run, run.topics["history"], settings.events, settings.seed, malformed=settings.malformed
    )
    if run.case.via_mqtt:
        bridged = _wait_bridged(run, run.published)
        _say(f"the MQTT bridge wrote {bridged:,} messages to {run.topics['history']}")
    return {
        "history_events": produced.delivered,
        "history_malformed": sum(produced.malformed.values()),
    }


def _export_tfrecords(run: _Run, source: list[str]) -> tuple[float, int]:
    """Kafka → TFRecords on the GCS emulator: (seconds taken, dead letters written beside them)."""
    _ensure_bucket(_BUCKET)
    started = time.monotonic()
    kafka_to_gcs.run(
        [
            *source,
            f"--outputDirectory={run.export_dir}",
            f"--labelField={run.case.label}",
            f"--consumerGroupId=demo-{run.run_id}-export-gcs",
        ]
    )
    seconds = _seconds_since(started)
    return seconds, _count_jsonl(f"{run.export_dir}/{kafka_to_gcs.DEAD_LETTER_DIR}/*")


def _export_bigquery(run: _Run, source: list[str]) -> float:
    """Kafka → the BigQuery emulator's table (dead letters in a table beside it); seconds taken."""
    _ensure_dataset(run.project, run.dataset)
    started = time.monotonic()
    kafka_to_bigquery.run(
        [
            *source,
            f"--outputTableSpec={run.table}",
            f"--outputDeadletterTable={run.project}:{run.dataset}.dead_letters",
            f"--consumerGroupId=demo-{run.run_id}-export-bq",
        ]
    )
    return _seconds_since(started)


def _export(run: _Run, history_events: int) -> dict[str, Any]:
    """Step 3: the history topic, read once per sink by the bounded batch export pipelines."""
    _step(3, "Export: Kafka → TFRecords on gs:// and Kafka → BigQuery (batch, bounded)")
    source = [
        *run.kafka,
        f"--inputTopic={run.topics['history']}",
        "--startOffset=earliest",
        f"--schemaPath={run.schema}",
        "--runner=FnApiRunner",
        f"--project={run.project}",
    ]
    gcs_seconds, gcs_dead = _export_tfrecords(run, source)
    bigquery_seconds = _export_bigquery(run, source)
    exported = {
        "export_gcs_seconds": gcs_seconds,
        "export_bigquery_seconds": bigquery_seconds,
        "exported_rows_bigquery": _bq_count(run.table),
        "export_dead_letters": gcs_dead,
        "exported_rows_gcs": history_events - gcs_dead,
        "bigquery_table": run.table,
        "tfrecords": f"{run.export_dir}/{kafka_to_gcs.SHARD_PREFIX}-*",
    }
    _say(
        f"exported {exported['exported_rows_gcs']:,} rows to {run.export_dir} in "
        f"{gcs_seconds} s and {exported['exported_rows_bigquery']:,} rows to "
        f"BigQuery {run.table} in {bigquery_seconds} s; "
        f"{gcs_dead} dead letters (malformed messages)"
    )
    return exported


def _train(run: _Run, settings: DemoSettings, tfrecords: str) -> dict[str, Any]:
    """Step 4: a model version from the exported TFRecords, with its test metrics and plots."""
    _step(4, "Train: tf.Transform analysis + autoencoder on the exported rows")
    started = time.monotonic()
    result = train.run(
        [
            f"--trainingData={tfrecords}",
            f"--transformDir={run.out / 'transform'}",
            f"--modelPath={run.model_root}",
            f"--epochs={settings.epochs}",
            f"--seed={settings.seed}",
            f"--project={run.project}",
            f"--label={run.case.label}",
        ]
    )
    train_seconds = _seconds_since(started)
    test = result.metrics["test"]
    plots = [
        str(Path(result.version_dir) / name) for name in ("pr_curve.png", "score_histogram.png")
    ]
    _say(
        f"model v{result.version}: PR-AUC {test.get('pr_auc'):.3f}, precision "
        f"{test.get('precision'):.3f}, recall {test.get('recall'):.3f} at threshold "
        f"{result.threshold:.4g}\nplots: {', '.join(plots)}"
    )
    return {
        "train_seconds": train_seconds,
        "model": {
            "version": result.version,
            "path": result.version_dir,
            "threshold": result.threshold,
            "pr_auc": test.get("pr_auc"),
            "precision": test.get("precision"),
            "recall": test.get("recall"),
        },
        "plots": plots,
    }


def _scorer_argv(run: _Run) -> list[str]:
    """The streaming scorer's options: live topic in; predictions, alerts, dead letters out."""
    return [
        *run.kafka,
        "--runner=FnApiRunner",
        "--streaming",
        f"--inputTopic={run.topics['live']}",
        f"--outputTopic={run.topics['predictions']}",
        f"--alertTopic={run.topics['alerts']}",
        f"--deadLetterTopic={run.topics['deadletters']}",
        f"--consumerGroupId=demo-{run.run_id}-scorer",
        # Cars: the group's offsets were set where the history ends (_start_scorer_after_history).
        "--startOffset=earliest" if not run.case.via_mqtt else "--startOffset=committed",
        f"--schemaPath={run.schema}",
        f"--modelPath={run.model_root}",
    ]


def _stream_burst(
    run: _Run, settings: DemoSettings, monitor: ScoringMonitor, display: _LiveDisplay
) -> tuple[int, dict[str, Any]]:
    """Throughput phase: events as fast as possible; (events delivered, scorer msgs/s if seen)."""
    burst = _produce(
        run,
        run.topics["live"],
        settings.burst_events,
        settings.seed + 1,
        anomaly_rate=settings.live_fraud_rate,
        malformed=settings.malformed,
    )
    snap = monitor.wait_for(burst.delivered, timeout=300, tick=display.tick)
    display.end_line()
    throughput: dict[str, Any] = {}
    if snap.first_prediction_at and snap.last_prediction_at:
        span = snap.last_prediction_at - snap.first_prediction_at
        throughput["burst_msgs_per_s"] = round(snap.predictions / max(span, 1e-3))
    return burst.delivered, throughput


def _stream_live(
    run: _Run,
    settings: DemoSettings,
    monitor: ScoringMonitor,
    display: _LiveDisplay,
    earlier: int,
) -> tuple[int, MonitorSnapshot]:
    """Latency phase: events at --rate; (all live events so far, snapshot once all have an
    outcome or the wait times out)."""
    monitor.latency_since_ms = time.time() * 1000.0
    live = _produce(
        run,
        run.topics["live"],
        settings.live_events,
        settings.seed + 2,
        rate=settings.rate,
        anomaly_rate=settings.live_fraud_rate,
        malformed=settings.malformed,
    )
    expected = earlier + live.delivered
    final = monitor.wait_for(expected, timeout=120, tick=display.tick)
    display.end_line()
    return expected, final


def _score_live(run: _Run, settings: DemoSettings, env: dict[str, str]) -> dict[str, Any]:
    """Step 5: the streaming scorer on new events, watched until every one has an outcome."""
    _step(5, "Score live: streaming pipeline, events in, predictions and alerts out")
    config = KafkaConfig.from_options(
        {"bootstrapServers": env["KAFKA_BOOTSTRAP_SERVERS"], "kafkaConfig": env["KAFKA_CONFIG"]}
    )
    for name in ("live", "predictions", "alerts", "deadletters"):
        generate_events.ensure_topic(config, run.topics[name], 3)
    if run.case.via_mqtt:
        _start_scorer_after_history(run, config)
    display = _LiveDisplay(run.case.entity)
    monitor = ScoringMonitor(
        config,
        predictions=run.topics["predictions"],
        alerts=run.topics["alerts"],
        dead_letters=run.topics["deadletters"],
        on_alert=display.alert,
    )
    scored: dict[str, Any] = {}
    with _pipeline("pipelines.score_events", _scorer_argv(run), run.scorer_log) as scorer:
        monitor.start()
        started, burst_events = time.monotonic(), 0
        if settings.burst_events:
            burst_events, scored = _stream_burst(run, settings, monitor, display)
            scored["scorer_startup_and_burst_seconds"] = _seconds_since(started)
        live_events, final = _stream_live(run, settings, monitor, display, burst_events)
        if scorer.poll() is not None:
            raise RuntimeError(f"the scorer exited with {scorer.returncode}; see {run.scorer_log}")
    monitor.stop()
    return {
        **scored,
        "live_events_in": live_events,
        "scored": final.predictions,
        "anomalies": final.anomalies,
        "alerts": final.alerts,
        "live_dead_letters": final.dead_letters,
        "latency_p50_ms": final.latency_p50_ms and round(final.latency_p50_ms),
        "latency_p99_ms": final.latency_p99_ms and round(final.latency_p99_ms),
        "live_rate_msgs_per_s": settings.rate,
        "model_versions": list(final.model_versions),
        "scorer_log": str(run.scorer_log),
    }


def _demo(settings: DemoSettings, env: dict[str, str]) -> dict[str, Any]:
    """Steps 2 to 5 on the running stack; returns the summary they add up to."""
    run = _new_run(settings, env)
    summary: dict[str, Any] = {
        "run_id": run.run_id,
        "topics": run.topics,
        "output_dir": str(run.out),
    }
    with contextlib.ExitStack() as stack:
        if run.case.via_mqtt:
            summary.update(_start_bridge(run, stack))
        summary.update(_produce_history(run, settings))
        summary.update(_export(run, summary["history_events"]))
        summary.update(_train(run, settings, summary["tfrecords"]))
        summary.update(_score_live(run, settings, env))
        if run.case.via_mqtt:
            summary.update(_bridge_outcome(run))
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
        ("latency", f"p50 {p50} ms · p99 {p99} ms ({_latency_span(summary)}, live phase)"),
        *_bridge_rows(summary),
        ("topics", ", ".join(dict.fromkeys(topics.values()))),
        ("BigQuery table", summary["bigquery_table"]),
        ("TFRecords", summary["tfrecords"]),
        ("model path", model["path"]),
        ("plots", ", ".join(summary["plots"])),
        ("summary", str(Path(summary["output_dir"]) / "summary.json")),
    ]
    _say("\n\033[1m[6/6] Summary\033[0m\n" + _table(rows))


def _latency_span(summary: dict[str, Any]) -> str:
    """What the latency spans: from the event's Kafka write (by the producer, or the bridge)."""
    return (
        "bridge's Kafka write → prediction"
        if "mqtt_published" in summary
        else ("produce → prediction")
    )


def _bridge_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The MQTT rows of the summary (cars only)."""
    if "mqtt_published" not in summary:
        return []
    return [
        (
            "MQTT → Kafka",
            f"{summary['mqtt_published']:,} published (QoS 1) · {summary['bridged']:,} bridged "
            f"into Kafka · {summary['bridge_dead_letters']:,} bridge dead letters",
        )
    ]


# -- cars: the MQTT bridge ---------------------------------------------------------------------


def _bridge_argv(run: _Run) -> list[str]:
    """The bridge: the run's MQTT topics → the sensors topic, keyed by car id (topic level)."""
    return [
        *run.kafka,
        "--runner=FnApiRunner",
        "--streaming",
        f"--mqttBroker={run.mqtt_broker}",
        f"--mqttTopicFilter={run.mqtt_root}/+/sensors",
        f"--mqttClientId={_bridge_id(run)}",
        # A backstop: the run ends its session (end_session) when it stops the bridge.
        "--mqttSessionExpirySeconds=300",
        f"--outputTopic={run.topics['history']}",
        f"--messageKey=topic:{run.mqtt_root.count('/') + 1}",
        f"--deadLetterTopic={run.topics['bridge_deadletters']}",
    ]


def _bridge_id(run: _Run) -> str:
    return f"demo-{run.run_id}-bridge"


def _start_bridge(run: _Run, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Start the bridge for the whole run and wait until it has subscribed."""
    if not run.mqtt_broker:
        raise RuntimeError("the local stack has no MQTT broker (MQTT_BROKER); update the stack")
    config = _kafka_config(run)
    for name in ("history", "bridge_deadletters"):
        generate_events.ensure_topic(config, run.topics[name], 3)
    # Registered first, so it runs after the bridge stopped: the run's session is not kept.
    stack.callback(end_session, MqttConfig.from_url(run.mqtt_broker, client_id=_bridge_id(run)))
    bridge = stack.enter_context(
        _pipeline("pipelines.mqtt_to_kafka", _bridge_argv(run), run.bridge_log)
    )
    deadline = time.monotonic() + 120
    while b"subscribed to" not in run.bridge_log.read_bytes():
        if bridge.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the MQTT bridge did not start; see {run.bridge_log}")
        time.sleep(0.2)
    _say(f"MQTT bridge up: {run.mqtt_root}/+/sensors → {run.topics['history']}")
    return {"bridge_log": str(run.bridge_log)}


def _kafka_config(run: _Run) -> KafkaConfig:
    values = {arg.split("=", 1)[0][2:]: arg.split("=", 1)[1] for arg in run.kafka}
    return KafkaConfig.from_options(values)


def _end_offsets(run: _Run, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(_kafka_config(run).consumer_dict(f"demo-{run.run_id}-probe"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(partitions)
        ]
    finally:
        consumer.close()


def _wait_bridged(run: _Run, count: int, timeout_s: float = 300) -> int:
    """Wait until the bridge wrote ``count`` messages (plus its dead letters); returns them."""
    deadline = time.monotonic() + timeout_s
    while True:
        bridged = sum(_end_offsets(run, run.topics["history"]))
        dead = sum(_end_offsets(run, run.topics["bridge_deadletters"]))
        if bridged + dead >= count:
            return bridged
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the MQTT bridge wrote {bridged + dead} of {count} messages in {timeout_s:.0f} s;"
                f" see {run.bridge_log}"
            )
        time.sleep(0.5)


def _start_scorer_after_history(run: _Run, config: KafkaConfig) -> None:
    """Commit the scorer group's offsets at the end of the history: it scores live events only."""
    from confluent_kafka import Consumer, TopicPartition

    topic = run.topics["live"]
    ends = _end_offsets(run, topic)
    consumer = Consumer(config.consumer_dict(f"demo-{run.run_id}-scorer"))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, end) for p, end in enumerate(ends)],
            asynchronous=False,
        )
    finally:
        consumer.close()


def _bridge_outcome(run: _Run) -> dict[str, Any]:
    """What the bridge did over the whole run: published vs bridged vs dead-lettered."""
    bridged = _wait_bridged(run, run.published)
    return {
        "mqtt_published": run.published,
        "bridged": bridged,
        "bridge_dead_letters": sum(_end_offsets(run, run.topics["bridge_deadletters"])),
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns (and writes) the summary. Stops what it started, also on Ctrl-C."""
    settings = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM (e.g. from a supervisor) unwinds like Ctrl-C so the context managers clean up.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    _step(1, "Local stack")
    try:
        needed = ("kafka", "bigquery", "gcs", *(("mqtt",) if settings.case.via_mqtt else ()))
        with _local_stack(settings.keep_stack, needed) as env:
            summary = _demo(settings, env)
    except KeyboardInterrupt:
        _say("\ninterrupted: every process the demo started has been stopped")
        raise SystemExit(130) from None
    summary["total_seconds"] = _seconds_since(started)
    _print_summary(summary)
    Path(summary["output_dir"], "summary.json").write_text(json.dumps(summary, indent=2))
    _say(f"done in {summary['total_seconds']} s")
    return summary
