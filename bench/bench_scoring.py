"""Benchmark the scoring pipeline against Beam's stock TF handler and a raw Kafka loop.

Same run, same broker, same model, same events (default 200k credit-card-shaped JSON events):

  (a) ``pipelines.score_events`` with :class:`~transforms.inference.model_handler.SavedModelHandler`
  (a-lean) the same with ``--predictionFields=event_id,score,is_anomaly``: the raw loop's record
  (b) the same pipeline with Beam's stock ``TFModelHandlerNumpy`` (Keras ``.keras`` file of the
      same network, adapted to the pipeline's ``(KafkaRecord, row)`` → ``Score`` contract)
  (c) a raw confluent-kafka consume → predict → produce loop with the same SavedModel (the ceiling)
  (d) with ``--model-server``: the pipeline scoring on a model server
      (:class:`~transforms.inference.model_server_handler.ModelServerHandler`, OIP v2) — the
      local stack's KServe server (serving/anomaly_model_server.py) serving the same SavedModel,
      on a private port — and its streaming latency next to the embedded model's

plus both handlers' ``run_inference`` alone (no Beam, no Kafka) on the same rows. Each timed run
also reports events per CPU-second of this process (all its threads: Beam, librdkafka, TF). Last,
(a) scores a topic of :data:`STARTUP_EVENTS` events: nearly all of that run is (a)'s fixed
start-up (building the pipeline, loading and tracing the model, the runner's set-up), which (c)
does not pay (it loads its model before its clock starts); (a) without it is printed too.

(a) and (b) read the backlog with ``stop="end_at_launch"`` in batch mode on the default runner;
times include pipeline start-up. Then latency: the real streaming pipeline
(``python -m pipelines.score_events --runner=FnApiRunner --streaming``) fed at ``--rate`` msg/s;
p50/p99 of prediction arrival minus the event's Kafka timestamp, next to the same run's baseline:
the events read straight from the input topic by the same consumer (what the broker and
librdkafka alone cost), and the broker's and the scorer's CPU over the run.

The model is a dense autoencoder 30→14→7→7→30 (the seeds' demo shape) with random weights:
speed, not quality, is measured. By default the benchmark runs its own broker on a private port
(big topics make noida-db snapshot for seconds and would disturb the shared stack) and waits for
the broker to go idle before each timing.

    .venv/bin/python bench/bench_scoring.py                 # everything, 200k events
    .venv/bin/python bench/bench_scoring.py --events 20000 --skip-latency
    .venv/bin/python bench/bench_scoring.py --only-latency --plot docs/images/scoring_latency.png
    .venv/bin/python bench/bench_scoring.py --model-server --skip-stock --events 20000  # (a) vs (d)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from transforms.kafka.config import LOCAL_BROKER_SETTINGS as LOCAL
from transforms.kafka.heap import settle_heap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")
THRESHOLD = 1.0
PARTITIONS = 3

_LOGGER = logging.getLogger("bench_scoring")


# --- broker -------------------------------------------------------------------------------------


class PrivateBroker:
    """noida-db on a private port through scripts/stack.sh with its own state directory.

    With ``model_dir`` (a SavedModel version directory) the stack's model server runs too, on
    ``model_server_port``, serving a copy of it as model ``anomaly``.
    """

    def __init__(
        self, port: int, model_dir: str | None = None, model_server_port: int = 19185
    ) -> None:
        self.bootstrap = f"127.0.0.1:{port}"
        self.model_server_url = f"http://127.0.0.1:{model_server_port}" if model_dir else None
        self._model_dir = model_dir
        self._dir = tempfile.mkdtemp(prefix="bench-scoring-stack-")
        self._env = {**os.environ, "KBML_STACK_DIR": self._dir, "KBML_KAFKA_PORT": str(port),
                     "KBML_MODEL_SERVER_PORT": str(model_server_port)}  # fmt: skip

    def __enter__(self) -> PrivateBroker:
        services = ["kafka"]
        if self._model_dir is not None:
            served = os.path.join(self._dir, "data", "models", "anomaly", "1")
            shutil.copytree(self._model_dir, served)
            services.append("model-server")
        subprocess.run(
            [os.path.join(REPO, "scripts", "stack.sh"), "up", *services], env=self._env, check=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([os.path.join(REPO, "scripts", "stack.sh"), "down"], env=self._env)
        shutil.rmtree(self._dir, ignore_errors=True)

    def pid(self) -> int | None:
        return stack_kafka_pid(self._env)


def stack_kafka_pid(env: dict[str, str] | None = None) -> int | None:
    """The PID of the stack's broker (``scripts/stack.sh status`` under ``env``), if up."""
    status = subprocess.run(
        [os.path.join(REPO, "scripts", "stack.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    for line in status.splitlines():
        if line.startswith("kafka") and "pid=" in line:
            pid = line.split("pid=")[1].split()[0]
            return int(pid) if pid.isdigit() else None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int | None, quiet_s: float = 3.0, timeout_s: float = 120.0) -> None:
    """Wait until process ``pid`` used < 5 % CPU for ``quiet_s`` (noida-db snapshots its state)."""
    if pid is None:
        time.sleep(quiet_s)
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        before = cpu_seconds(pid)
        time.sleep(quiet_s)
        if (cpu_seconds(pid) - before) / quiet_s < 0.05:
            return
    _LOGGER.warning("broker still busy after %.0f s; timing anyway", timeout_s)


def create_topics(bootstrap: str, *names: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)


def fill_topic(bootstrap: str, topic: str, count: int, seed: int = 7) -> None:
    """Produce ``count`` JSON events shaped like the credit-card schema (~700 bytes each)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20"})
    rng = np.random.default_rng(seed)
    for start in range(0, count, 10_000):
        values = rng.normal(0, 1, (min(10_000, count - start), len(FEATURES)))
        for i, row in enumerate(values.tolist()):
            event = {"event_id": f"e{start + i}", "card_id": f"card-{(start + i) % 997}"}
            event.update(zip(FEATURES, row, strict=True))
            while True:
                try:
                    producer.produce(topic, json.dumps(event).encode(), event["card_id"].encode())
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
    producer.flush(120)


def count_messages(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count"})
    total = 0
    for p in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high - low
    consumer.close()
    return total


# --- model --------------------------------------------------------------------------------------


def export_models(root: str) -> tuple[str, str]:
    """One random 30→14→7→7→30 autoencoder as (a SavedModel under ``root/1``, a ``.keras`` file)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    inputs = keras.Input((len(FEATURES),), name="x")
    hidden = inputs
    for units in (14, 7, 7):
        hidden = keras.layers.Dense(units, activation="relu")(hidden)
    reconstruction = keras.layers.Dense(len(FEATURES))(hidden)
    score = keras.ops.mean(keras.ops.square(inputs - reconstruction), axis=-1)
    network = keras.Model(inputs, score)
    keras_path = os.path.join(root, "autoencoder.keras")
    network.save(keras_path)

    class Serving(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        @tf.function(
            input_signature=[{n: tf.TensorSpec([None], tf.float32, name=n) for n in FEATURES}]
        )
        def serve(self, columns):
            scores = self.network(tf.stack([columns[n] for n in FEATURES], axis=1))
            return {"score": scores, "is_anomaly": scores > THRESHOLD}

    serving = Serving()
    version_dir = os.path.join(root, "models", "1")
    tf.saved_model.save(serving, version_dir, signatures={"serving_default": serving.serve})
    info = {"version": 1, "features": list(FEATURES), "threshold": THRESHOLD,
            "label": "Class", "id_field": "event_id", "metrics": {}}  # fmt: skip
    with open(os.path.join(version_dir, "model_info.json"), "w") as handle:
        json.dump(info, handle)
    return os.path.dirname(version_dir), keras_path


# --- (a) and (b): the pipeline --------------------------------------------------------------------


def import_pipeline_modules() -> None:
    """Import what (a), (b) and (c) run before any timing, so no run pays module imports.

    The first run otherwise paid Beam's and the pipeline's imports (~1.5 s on a slow machine).
    """
    import apache_beam.ml.inference.tensorflow_inference  # noqa: F401
    import apache_beam.runners.direct.direct_runner  # noqa: F401
    import apache_beam.runners.portability.fn_api_runner  # noqa: F401

    import pipelines.score_events  # noqa: F401


def stock_handler(keras_path: str):
    """Beam's TFModelHandlerNumpy behind the pipeline's keyed (KafkaRecord, row) contract."""
    from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    from transforms.inference.model_handler import Score

    def to_vectors(batch):  # ScoreEvents batches before RunInference: preprocessing sees batches
        return [
            ((record, row.get("event_id")), np.array([row[n] for n in FEATURES], np.float32))
            for record, row in batch
        ]

    def to_score(pair):
        (record, event_id), result = pair
        score = float(result.inference)
        verdict = Score(score, score > THRESHOLD, THRESHOLD, 1)
        return record, PredictionResult({"event_id": event_id}, verdict, "1")

    return (
        KeyedModelHandler(TFModelHandlerNumpy(keras_path))
        .with_preprocess_fn(to_vectors)
        .with_postprocess_fn(to_score)
    )


def model_flags(model_root: str, server_url: str | None = None) -> list[str]:
    """score_events flags for the embedded model, or for the model server at ``server_url``."""
    if server_url is None:
        return [f"--modelPath={model_root}"]
    return [f"--modelServerUrl={server_url}", "--modelName=anomaly", "--modelServerProtocol=v2"]


def run_pipeline(
    bootstrap: str,
    model_root: str,
    source: str,
    sink: str,
    handler=None,
    server_url=None,
    fields: str = "",
) -> float:
    """Score the whole ``source`` topic into ``sink`` in batch mode; returns wall seconds."""
    import apache_beam as beam

    from pipelines.common.options import parse_and_validate
    from pipelines.score_events import OPTIONS, ScoreEventsOptions, build_pipeline
    from transforms.decoding.schema import bundled_schema_path

    argv = [
        f"--bootstrapServers={bootstrap}",
        "--kafkaConfig=" + ";".join(f"{k}={v}" for k, v in LOCAL.items()),
        f"--inputTopic={source}",
        f"--outputTopic={sink}",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        *model_flags(model_root, server_url),
        *([f"--predictionFields={fields}"] if fields else []),
    ]
    opts = parse_and_validate(argv, ScoreEventsOptions, OPTIONS)
    started = time.perf_counter()
    with beam.Pipeline(options=opts) as p:
        build_pipeline(p, opts, model_handler=handler)
    return time.perf_counter() - started


def handlers_only(model_root: str, keras_path: str, count: int) -> dict[str, float]:
    """rows/s of each handler's run_inference alone, batches of 1024, no Beam and no Kafka."""
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

    from transforms.inference.model_handler import SavedModelHandler

    rng = np.random.default_rng(3)
    rows = [dict(zip(FEATURES, v, strict=True)) for v in rng.normal(0, 1, (count, 30)).tolist()]
    vectors = [np.array([r[n] for n in FEATURES], np.float32) for r in rows]
    rates = {}
    for name, handler, examples in (
        ("SavedModelHandler", SavedModelHandler(model_root), rows),
        ("stock TFModelHandlerNumpy", TFModelHandlerNumpy(keras_path), vectors),
    ):
        model = handler.load_model()
        list(handler.run_inference(examples[:1024], model))  # warm-up
        started = time.perf_counter()
        for i in range(0, count, 1024):
            list(handler.run_inference(examples[i : i + 1024], model))
        rates[name] = count / (time.perf_counter() - started)
    return rates


# --- (c): the ceiling -----------------------------------------------------------------------------


def raw_loop(bootstrap: str, model_root: str, source: str, sink: str, count: int) -> float:
    """consume → msgspec → one signature call per batch → produce; returns wall seconds.

    msgspec into a typed struct (parsing and type checks in C), the parser the pipeline uses,
    so the ceiling is what a careful hand-written loop gets.
    """
    import msgspec
    import tensorflow as tf
    from confluent_kafka import Consumer, Producer, TopicPartition

    event = msgspec.defstruct(
        "Event", [("event_id", str), *((name, float) for name in FEATURES)], kw_only=True
    )
    decode, encode, values = (
        msgspec.json.Decoder(event).decode,
        msgspec.json.encode,
        msgspec.structs.astuple,
    )
    signature = tf.saved_model.load(os.path.join(model_root, "1")).signatures["serving_default"]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-raw",
                         "enable.auto.commit": "false", **LOCAL})  # fmt: skip
    consumer.assign([TopicPartition(source, p, 0) for p in range(PARTITIONS)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20"})
    started = time.perf_counter()
    done = 0
    while done < count:
        messages = [m for m in consumer.consume(2000, 1.0) if m.error() is None]
        if not messages:
            continue
        events = [decode(m.value()) for m in messages]
        matrix = np.array([values(e)[1:] for e in events], np.float32).T
        outputs = signature(**{n: tf.constant(matrix[i]) for i, n in enumerate(FEATURES)})
        scores = outputs["score"].numpy().tolist()
        flags = outputs["is_anomaly"].numpy().tolist()
        for message, e, score, flag in zip(messages, events, scores, flags, strict=True):
            value = encode({"event_id": e.event_id, "score": score, "is_anomaly": flag})
            while True:
                try:
                    producer.produce(sink, value, message.key())
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
        done += len(messages)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


# --- latency --------------------------------------------------------------------------------------


class Latencies(NamedTuple):
    """(send time, latency) pairs in s; the send time counts from the first timed event."""

    pipeline: list[tuple[float, float]]  # produce → prediction read back from the output topic
    broker: list[tuple[float, float]]  # produce → the same event read from the input topic
    cpu: list[tuple[float, float, float]]  # (time, broker cores, scorer cores) every CPU_SAMPLE_S
    first_prediction_s: list[float]  # launch → the first prediction read back (one value)


CPU_SAMPLE_S = 0.5
#: Events of the topic whose scoring is (a)'s start-up, nearly.
STARTUP_EVENTS = 1000
#: The fields of the raw loop's record, for (a-lean).
LEAN_FIELDS = "event_id,score,is_anomaly"


def measure_latency(
    bootstrap: str,
    model_root: str,
    rate: int,
    seconds: float,
    broker_pid: int | None = None,
    server_url: str | None = None,
) -> Latencies:
    """Run the streaming pipeline and feed it ``rate`` msg/s (event ``i`` sent at ``i / rate``).

    The baseline in the same run: the same consumer reads the input topic too, i.e. what the
    broker and librdkafka alone cost — broker stalls (noida-db's state snapshots) show in both
    series, the pipeline's own in one. The broker's (if ``broker_pid``) and the scorer's CPU are
    sampled alongside."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from transforms.decoding.schema import bundled_schema_path

    suffix = uuid.uuid4().hex[:8]
    source, sink = f"lat-in-{suffix}", f"lat-out-{suffix}"
    create_topics(bootstrap, source, sink)
    log = open(os.path.join(tempfile.gettempdir(), f"bench-latency-{suffix}.log"), "wb")  # noqa: SIM115
    launched = time.perf_counter()
    scorer = subprocess.Popen(
        [sys.executable, "-m", "pipelines.score_events", "--runner=FnApiRunner", "--streaming",
         f"--bootstrapServers={bootstrap}", f"--inputTopic={source}", f"--outputTopic={sink}",
         "--kafkaConfig=" + ";".join(f"{k}={v}" for k, v in LOCAL.items()),
         f"--consumerGroupId=lat-{suffix}", "--startOffset=earliest",
         f"--schemaPath={bundled_schema_path('creditcard')}",
         *model_flags(model_root, server_url)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    # One consumer reads both topics: a second client would cost the 2-core machine enough CPU
    # to move the pipeline's p99 by hundreds of ms.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-read-{suffix}",
                         **LOCAL, "fetch.queue.backoff.ms": "5"})  # fmt: skip
    consumer.assign([TopicPartition(t, p, 0) for t in (sink, source) for p in range(PARTITIONS)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "0"})
    latencies = Latencies([], [], [], [])
    received: set[str] = set()
    stop = threading.Event()

    def sample_cpu(origin: float) -> None:
        pids = (broker_pid, scorer.pid)
        before = [cpu_seconds(pid) if pid else 0.0 for pid in pids]
        while not stop.wait(CPU_SAMPLE_S):
            try:
                now = [cpu_seconds(pid) if pid else 0.0 for pid in pids]
            except OSError:  # a process ended early: the run reports what arrived
                return
            cores = [(a - b) / CPU_SAMPLE_S for a, b in zip(now, before, strict=True)]
            latencies.cpu.append((time.perf_counter() - origin, *cores))
            before = now

    def collect() -> None:
        while not stop.is_set():
            for message in consumer.consume(1000, 0.05):
                if message.error() is not None:
                    continue
                arrived = time.time()
                value = json.loads(message.value())
                event_id = value["event_id"]
                if message.topic() == sink:
                    received.add(event_id)
                if not event_id.startswith("lat-"):
                    continue
                sent_s = int(event_id[4:]) / rate
                if message.topic() == sink:
                    event_ms = _event_ms(value["event_time"])
                    latencies.pipeline.append((sent_s, arrived - event_ms / 1000))
                else:
                    latencies.broker.append((sent_s, arrived - message.timestamp()[1] / 1000))

    threads = [threading.Thread(target=collect, daemon=True)]
    threads[0].start()
    try:
        _produce_until(producer, source, lambda: "warm-up" in received, timeout=180)
        latencies.first_prediction_s.append(time.perf_counter() - launched)
        interval = 1.0 / rate
        total = int(rate * seconds)
        started = time.perf_counter()
        threads.append(threading.Thread(target=sample_cpu, args=(started,), daemon=True))
        threads[-1].start()
        for i in range(total):
            target = started + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            event = {"event_id": f"lat-{i}", "card_id": f"card-{i % 97}",
                     **dict.fromkeys(FEATURES, 0.1)}  # fmt: skip
            producer.produce(source, json.dumps(event).encode(), event["card_id"].encode())
            producer.poll(0)
        producer.flush(30)
        deadline = time.time() + 30
        while len(latencies.pipeline) < total and time.time() < deadline:
            time.sleep(0.2)
        if len(latencies.pipeline) < total:
            _LOGGER.warning("only %d of %d latency events arrived", len(latencies.pipeline), total)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        consumer.close()
        os.killpg(scorer.pid, signal.SIGTERM)
        try:
            scorer.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(scorer.pid, signal.SIGKILL)
        log.close()
    return latencies


def percentiles_ms(samples: list[tuple[float, float]]) -> tuple[float, float]:
    p50, p99 = np.percentile([latency for _, latency in samples], [50, 99]) * 1000
    return float(p50), float(p99)


def plot_latency(latencies: Latencies, rate: int, path: str) -> None:
    """Latency over the run next to the broker-only baseline and both processes' CPU (spikes show
    when they happen and whose they are), and both CDFs, with p50/p99/target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplot_mosaic(
        [["time", "cdf"], ["cpu", "cdf"]],
        figsize=(11, 5.5),
        width_ratios=(2, 1),
        height_ratios=(3, 1),
    )
    over_time, cpu, cdf = axes["time"], axes["cpu"], axes["cdf"]
    p50, p99 = percentiles_ms(latencies.pipeline)
    for samples, color, label in (
        (latencies.broker, "tab:gray", "broker only (input topic)"),
        (latencies.pipeline, "tab:blue", "pipeline (prediction)"),
    ):
        if not samples:
            continue
        sent, latency_ms = np.array(samples).T
        latency_ms = latency_ms * 1000
        over_time.scatter(sent, latency_ms, s=2, alpha=0.4, color=color, rasterized=True)
        cdf.plot(np.sort(latency_ms), np.linspace(0, 1, len(latency_ms)), color=color, label=label)
    for axis, draw in ((over_time, over_time.axhline), (cdf, cdf.axvline)):
        draw(p50, color="tab:green", linestyle="--", label=f"pipeline p50 {p50:.0f} ms")
        draw(p99, color="tab:orange", linestyle="--", label=f"pipeline p99 {p99:.0f} ms")
        draw(1000, color="tab:red", linestyle=":", label="target p99 1 s")
        axis.grid(alpha=0.3)
    over_time.set(
        ylabel="produce → read (ms)",
        title=f"Live scoring latency at {rate} msg/s ({len(latencies.pipeline):,} events)",
    )
    over_time.legend(loc="upper right", fontsize="small")
    if latencies.cpu:
        at, broker_cores, scorer_cores = np.array(latencies.cpu).T
        cpu.plot(at, broker_cores, color="tab:gray", label="broker")
        cpu.plot(at, scorer_cores, color="tab:blue", label="scoring pipeline")
        cpu.legend(loc="upper right", fontsize="small")
    cpu.set(xlabel="time since the first event (s)", ylabel="CPU (cores)")
    cpu.set_xlim(over_time.get_xlim())
    cpu.grid(alpha=0.3)
    cdf.set(xlabel="produce → read (ms)", ylabel="fraction of events", title="CDF")
    cdf.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_latency(latencies: Latencies, rate: int, label: str) -> float | None:
    """Print p50/p99 (and the same run's broker baseline and CPU); return the p99 in ms."""
    if not latencies.pipeline:
        print(f"\nlatency ({label}): no event arrived")
        return None
    p50, p99 = percentiles_ms(latencies.pipeline)
    print(
        f"\nlatency ({label}) at {rate} msg/s streaming ({len(latencies.pipeline)} events): "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms  (targets p50 <= 150 ms, p99 <= 500 ms)"
    )
    for seconds in latencies.first_prediction_s:
        print(f"  first prediction {seconds:.1f} s after launch (target <= 5 s)")
    if latencies.broker:
        base50, base99 = percentiles_ms(latencies.broker)
        print(
            f"  broker only, same run ({len(latencies.broker)} events): "
            f"p50 {base50:.0f} ms, p99 {base99:.0f} ms; "
            f"pipeline/broker p50 {p50 / base50:.1f}x, p99 {p99 / base99:.1f}x"
        )
    if latencies.cpu:
        broker_cores, scorer_cores = np.array(latencies.cpu)[:, 1:].T
        print(
            f"  CPU cores median/max: broker {np.median(broker_cores):.2f}/"
            f"{broker_cores.max():.2f}, scorer {np.median(scorer_cores):.2f}/"
            f"{scorer_cores.max():.2f}"
        )
    return p99


def _event_ms(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text).timestamp() * 1000


def _produce_until(producer, topic: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        event = {"event_id": "warm-up", "card_id": "card-0", **dict.fromkeys(FEATURES, 0.1)}
        producer.produce(topic, json.dumps(event).encode(), b"card-0")
        producer.flush(10)
        for _ in range(20):
            if done():
                return
            time.sleep(0.25)
    raise RuntimeError(f"streaming scorer not live after {timeout} s")


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--port", type=int, default=19192, help="private broker port")
    parser.add_argument("--bootstrap", help="use this broker instead of a private one")
    parser.add_argument("--rate", type=int, default=1000, help="latency run: msg/s")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only-latency", action="store_true")
    parser.add_argument("--plot", help="write the latency plot (PNG) here")
    parser.add_argument(
        "--model-server", action="store_true", help="also (d): score on the stack's model server"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    workdir = tempfile.mkdtemp(prefix="bench-scoring-")
    model_root, keras_path = export_models(workdir)
    import_pipeline_modules()
    if args.model_server and args.bootstrap is not None:
        parser.error("--model-server runs its own stack: drop --bootstrap")
    model_dir = os.path.join(model_root, "1") if args.model_server else None
    broker = PrivateBroker(args.port, model_dir) if args.bootstrap is None else None
    try:
        if broker is not None:
            broker.__enter__()
        bootstrap = args.bootstrap or broker.bootstrap
        pid = broker.pid() if broker is not None else None
        suffix = uuid.uuid4().hex[:8]
        source = f"bench-in-{suffix}"
        sinks = {
            name: f"bench-out-{name}-{suffix}" for name in ("a", "a-lean", "b", "c", "d", "a0")
        }
        small = f"bench-in-small-{suffix}"
        results: dict[str, float] = {}
        per_cpu_s: dict[str, float] = {}
        runs: list[tuple[str, Callable[[], float]]] = [
            ("a", lambda: run_pipeline(bootstrap, model_root, source, sinks["a"])),
            ("a-lean", lambda: run_pipeline(
                bootstrap, model_root, source, sinks["a-lean"], fields=LEAN_FIELDS)),  # fmt: skip
            ("c", lambda: raw_loop(bootstrap, model_root, source, sinks["c"], args.events)),
        ]
        server_url = broker.model_server_url if broker is not None else None
        if server_url is not None:
            runs.insert(1, ("d", lambda: run_pipeline(
                bootstrap, model_root, source, sinks["d"], server_url=server_url)))  # fmt: skip
        if args.only_latency:
            runs = []
        else:
            create_topics(bootstrap, source, small, *sinks.values())
            started = time.perf_counter()
            fill_topic(bootstrap, source, args.events)
            fill_topic(bootstrap, small, STARTUP_EVENTS)
            print(f"filled {args.events} events in {time.perf_counter() - started:.1f} s")
        if not args.skip_stock and runs:
            runs.insert(1, ("b", lambda: run_pipeline(
                bootstrap, model_root, source, sinks["b"], stock_handler(keras_path))))  # fmt: skip
        for name, fn in runs:
            wait_until_idle(pid)
            settle_heap()  # the worker's one-time settle, as in bench_read_from_kafka.py
            cpu_started = time.process_time()
            seconds = fn()
            per_cpu_s[name] = args.events / (time.process_time() - cpu_started)
            written = count_messages(bootstrap, sinks[name])
            results[name] = args.events / seconds
            print(
                f"({name}) {seconds:7.1f} s  {results[name]:9,.0f} msg/s  "
                f"{per_cpu_s[name]:9,.0f} msg/CPU-s  wrote {written}"
            )

        labels = {
            "a": "pipeline + SavedModelHandler",
            "a-lean": "pipeline, lean prediction record",
            "b": "pipeline + stock TFModelHandlerNumpy",
            "c": "raw confluent-kafka loop",
            "d": "pipeline + ModelServerHandler (KServe)",
        }
        if results:
            print(f"\n{args.events} events, {PARTITIONS} partitions")
            for name, rate in results.items():
                print(
                    f"  ({name}) {labels[name]:38s} {rate:9,.0f} msg/s "
                    f"{per_cpu_s[name]:9,.0f} msg/CPU-s"
                )
            if "b" in results:
                print(f"  (a)/(b) = {results['a'] / results['b']:.2f}   (target >= 6)")
            for name in ("a", "a-lean"):
                print(
                    f"  ({name})/(c) = {results[name] / results['c']:.2f} "
                    f"(per CPU-second {per_cpu_s[name] / per_cpu_s['c']:.2f})   (target >= 0.7)"
                )
            if "d" in results:
                print(f"  (d)/(a) = {results['d'] / results['a']:.2f}   (remote / embedded)")
            wait_until_idle(pid)
            startup_s = run_pipeline(bootstrap, model_root, small, sinks["a0"])
            steady = args.events / (args.events / results["a"] - startup_s)
            print(
                f"  (a) on {STARTUP_EVENTS} events: {startup_s:.1f} s, i.e. start-up; (a) without "
                f"it {steady:,.0f} msg/s = {steady / results['c']:.2f} of (c)"
            )

        if not args.skip_stock and not args.only_latency:
            rates = handlers_only(model_root, keras_path, min(args.events, 50_000))
            for name, rate in rates.items():
                print(f"  handler only, {name:26s} {rate:9,.0f} rows/s")
            ours, stock = rates.values()
            print(f"  handler only ratio = {ours / stock:.1f}")

        if not args.skip_latency:
            targets = [("embedded", None)] + ([("model server", server_url)] if server_url else [])
            p99s = {}
            for label, url in targets:
                wait_until_idle(pid)
                latencies = measure_latency(
                    bootstrap, model_root, args.rate, args.latency_seconds, pid, server_url=url
                )
                p99s[label] = report_latency(latencies, args.rate, label)
                if args.plot and url is None:
                    plot_latency(latencies, args.rate, args.plot)
                    print(f"latency plot: {args.plot}")
            if len(p99s) == 2 and None not in p99s.values():
                print(
                    f"  p99 model server / embedded = {p99s['model server'] / p99s['embedded']:.2f}"
                )
    finally:
        if broker is not None:
            broker.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
