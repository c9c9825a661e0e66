"""Soak: ``score_events --streaming`` fed live for minutes, with a broker restart in the middle.

Run by hand, not in CI (issue "streams keep going through faults"). A broker of its own
(``scripts/stack.sh`` with a private state dir under a temp dir and a free port: the shared
stack is never touched) and the real streaming scorer (``python -m pipelines.score_events
--runner=FnApiRunner --streaming``, a subprocess in its own session) with the tiny model of
``tests/tiny_anomaly_model.py``. Events are fed live at ``--rate`` msg/s for ``--minutes``;
half-way the broker is restarted (``stack.sh restart kafka --down-seconds N``: SIGTERM, down N s,
back on the same data). One consumer reads the predictions live. Measured:

* events fed, held by the broker afterwards (the input topic read back), with a prediction,
  lost = held - predicted (must be 0) and duplicates in the output topic;
* produce → prediction latency p50/p99 (the collector's receive time minus the time this script
  produced the event) before the restart (after a warm-up) and after recovery (from 60 s after
  the broker's return), and the recovery time: broker back → first prediction of an event
  produced after the return;
* the scorer's RSS (the process and its children, /proc VmRSS) every 5 s: minute 2 vs the end,
  growth (target <= 10 %) and peak;
* a plot: latency per 10 s window, predictions/s and RSS over time, the outage shaded.

noida-db, the local broker, loses records it acknowledged on an unclean restart and gives their
offsets to new records: "lost" is counted against what the broker holds afterwards, and the
records it dropped are reported apart ("acked, not held").

    .venv/bin/python bench/bench_soak.py                              # 10 min at 1,000/s, 30 s down
    .venv/bin/python bench/bench_soak.py --minutes 2 --down-seconds 10 --plot /tmp/soak.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import numpy as np

from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS as LOCAL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = os.path.join(REPO, "scripts", "stack.sh")
FEATURES = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")
PARTITIONS = 3
WARM_UP_S = 60.0  # latency "before" starts this long after the first event
SETTLE_S = 60.0  # latency "after" starts this long after the broker is back
RSS_REFERENCE_S = 120.0  # the RSS growth is measured from this point (minute 2) to the end
RSS_SAMPLE_S = 5.0
PROGRESS_S = 30.0
WINDOW_S = 10.0  # latency percentiles per window in the plot

_LOGGER = logging.getLogger("bench_soak")


class _BrokerDownLines(logging.Filter):
    """Counts and drops librdkafka's "connect failed" lines: each client logs several a second
    while the broker is down. Everything else (e.g. offset resets) is shown."""

    NOISE = ("Connection refused", "brokers are down", "Disconnected", "Connect to ")
    dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if any(text in record.getMessage() for text in self.NOISE):
            self.dropped += 1
            return False
        return True


_KAFKA_LOG = logging.getLogger("bench_soak.kafka")
_BROKER_DOWN_LINES = _BrokerDownLines()
_KAFKA_LOG.addFilter(_BROKER_DOWN_LINES)


def client(bootstrap: str, **settings: object) -> dict[str, object]:
    """A confluent-kafka config for this script's clients, logging through :data:`_KAFKA_LOG`."""
    return {"bootstrap.servers": bootstrap, "logger": _KAFKA_LOG, **settings}


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that every ``finally`` cleans up."""


def _on_sigterm(signum, frame) -> None:
    raise Interrupted()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the private broker ---------------------------------------------------------------------------


class PrivateBroker:
    """A noida-db of this run only: ``scripts/stack.sh`` with its own state dir and port."""

    def __init__(self, state_dir: str) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KBML_PYTHON": sys.executable,
            "KBML_STACK_DIR": state_dir,
            "KBML_KAFKA_PORT": str(self.port),
        }
        self.restart_proc: subprocess.Popen | None = None
        self.restart_events: list[tuple[float, str]] = []  # (monotonic time, stack.sh line)

    def stack(self, *args: str, timeout: float = 300) -> None:
        done = subprocess.run(
            ["bash", STACK, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"stack.sh {' '.join(args)} failed:\n{done.stderr[-3000:]}")

    def start_restart(self, down_seconds: float) -> None:
        """``stack.sh restart kafka --down-seconds N`` in the background; its lines timestamped."""
        self.restart_events.append((time.monotonic(), "restart: SIGTERM"))
        self.restart_proc = subprocess.Popen(
            ["bash", STACK, "restart", "kafka", "--down-seconds", str(down_seconds)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C goes to this script, which cleans up in order
        )
        threading.Thread(target=self._read_restart, args=(self.restart_proc,), daemon=True).start()

    def _read_restart(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.restart_events.append((time.monotonic(), line.strip()))

    def restart_running(self) -> bool:
        return self.restart_proc is not None and self.restart_proc.poll() is None

    def marker(self, text: str) -> float | None:
        """When the restart printed a line containing ``text`` (monotonic), if it did."""
        return next((at for at, line in self.restart_events if text in line), None)

    def stop_restart(self) -> None:
        """End a restart still in progress (Ctrl-C); ``down`` then stops what it started."""
        if self.restart_running():
            os.killpg(self.restart_proc.pid, signal.SIGTERM)
            try:
                self.restart_proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.restart_proc.pid, signal.SIGKILL)
                self.restart_proc.wait(10)


def create_topics(bootstrap: str, names: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client(bootstrap))
    for future in admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()]).values():
        future.result(30)


def read_topic(bootstrap: str, topic: str, handle: Callable, timeout: float = 300) -> int:
    """Call ``handle(message)`` for each message of ``topic`` now (to the high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        client(bootstrap, **{"group.id": f"soak-read-{uuid.uuid4()}", "enable.auto.commit": False})
        | dict(LOCAL)
    )
    try:
        ends = {}
        for p in range(PARTITIONS):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline, count = time.monotonic() + timeout, 0
        while ends and time.monotonic() < deadline:
            for message in consumer.consume(5000, 0.5):
                if message.error() is not None:
                    continue
                count += 1
                handle(message)
                if message.offset() >= ends.get(message.partition(), 0) - 1:
                    ends.pop(message.partition(), None)
        if ends:
            _LOGGER.warning("read of %s stopped at the %.0f s deadline", topic, timeout)
        return count
    finally:
        consumer.close()


# --- the scorer -----------------------------------------------------------------------------------


def write_tiny_model(root: str) -> str:
    """tests/tiny_anomaly_model.py's SavedModel, exported in a subprocess (no TF in this one)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tiny_anomaly_model import "
        "write_model; write_model(sys.argv[2], 1)"
    )
    subprocess.run(
        [sys.executable, "-c", code, os.path.join(REPO, "tests"), root],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


def start_scorer(bootstrap: str, topics: dict[str, str], model_root: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.score_events",
            "--runner=FnApiRunner",
            "--streaming",
            f"--bootstrapServers={bootstrap}",
            "--kafkaConfig=" + ";".join(f"{k}={v}" for k, v in LOCAL.items()),
            f"--inputTopic={topics['input']}",
            f"--outputTopic={topics['output']}",
            f"--deadLetterTopic={topics['dead']}",
            f"--consumerGroupId=soak-{uuid.uuid4().hex[:8]}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            "--progressSeconds=30",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tree_rss_bytes(root: int) -> int:
    """VmRSS of process ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# --- feed, collector, sampler ---------------------------------------------------------------------


class Soak:
    """Shared state of one run; times are ``time.monotonic()`` seconds since :attr:`origin`."""

    def __init__(self, bootstrap: str, topics: dict[str, str], rate: int, seconds: float) -> None:
        self.bootstrap, self.topics, self.rate, self.seconds = bootstrap, topics, rate, seconds
        self.capacity = int(rate * (seconds + 30))
        self.produced_at = np.full(self.capacity, np.nan)  # event i: when produce() accepted it
        self.first_seen = np.full(self.capacity, np.nan)  # ... when its first prediction arrived
        self.fed = self.delivered = self.delivery_errors = 0
        self.predicted = 0  # distinct events with a prediction seen live
        self.received = 0  # prediction messages seen live (duplicates included)
        self.arrivals = Counter()  # whole second → prediction messages received
        self.consumer_errors = Counter()
        self.rss: list[tuple[float, int, float]] = []  # (time, bytes, load average 1 min)
        self.warm = threading.Event()
        self.stop_feed = threading.Event()
        self.stop_all = threading.Event()
        self.origin = time.monotonic()
        self.threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    # the collector: one consumer on the output topic, from the beginning
    def start_collector(self) -> None:
        self._start(self._collect)

    def _collect(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        # auto.offset.reset=latest: when the broker comes back with a shorter output log, the
        # consumer skips to the new end instead of re-reading it all; what it skips is found by
        # the read-back at the end (counted, without a latency).
        settings = {
            "group.id": "soak-collector",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            **LOCAL,
            "fetch.queue.backoff.ms": "5",
        }
        consumer = Consumer(client(self.bootstrap, **settings))
        consumer.assign([TopicPartition(self.topics["output"], p, 0) for p in range(PARTITIONS)])
        try:
            while not self.stop_all.is_set():
                for message in consumer.consume(2000, 0.2):
                    if message.error() is not None:
                        self.consumer_errors[message.error().name()] += 1
                        continue
                    at = self.now()
                    event_id = json.loads(message.value())["event_id"]
                    if not event_id.startswith("s"):
                        self.warm.set()
                        continue
                    self.received += 1
                    self.arrivals[int(at)] += 1
                    i = int(event_id[1:])
                    if i < self.capacity and np.isnan(self.first_seen[i]):
                        self.first_seen[i] = at
                        self.predicted += 1
        finally:
            consumer.close()

    def warm_up(self, scorer: subprocess.Popen, timeout: float) -> float:
        """Produce warm-up events until the scorer answers one; returns the seconds it took."""
        from confluent_kafka import Producer

        producer = Producer(client(self.bootstrap))
        started = time.monotonic()
        n = 0
        while not self.warm.is_set():
            if scorer.poll() is not None:
                raise RuntimeError(f"the scorer exited with {scorer.returncode} while warming up")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the scorer did not answer within {timeout:.0f} s")
            producer.produce(self.topics["input"], event(f"warm-up-{n}", n), b"warm-up")
            producer.flush(5)
            n += 1
            self.warm.wait(2)
        producer.flush(10)
        return time.monotonic() - started

    # the feed: event i produced at origin + i / rate (catching up in a burst if behind)
    def start_feed(self) -> None:
        self.origin = time.monotonic()
        self._start(self._feed)

    def _feed(self) -> None:
        from confluent_kafka import Producer

        # Not idempotent, long timeout: the feed's records wait out the outage (as in the test).
        producer = Producer(
            client(self.bootstrap, **{"linger.ms": "5", "message.timeout.ms": "300000"})
        )

        def report(err, msg) -> None:
            if err is None:
                self.delivered += 1
            else:
                self.delivery_errors += 1

        i = 0
        try:
            while not self.stop_feed.is_set() and i < self.capacity:
                delay = i / self.rate - self.now()
                if delay > 0:
                    time.sleep(delay)
                key = f"s{i}"
                try:
                    producer.produce(
                        self.topics["input"], event(key, i), key.encode(), on_delivery=report
                    )
                except BufferError:
                    producer.poll(0.1)
                    continue
                self.produced_at[i] = self.now()
                i += 1
                self.fed = i
                producer.poll(0)
            deadline = time.monotonic() + 120
            while producer.flush(1) and time.monotonic() < deadline:
                if self.stop_all.is_set():  # Ctrl-C: no waiting
                    break
            if len(producer):
                _LOGGER.warning("%d fed events still undelivered", len(producer))
        finally:
            producer.purge()
            producer.flush(0)

    def start_sampler(self, pid: int) -> None:
        self._start(self._rss, pid)

    def _rss(self, pid: int) -> None:
        while not self.stop_all.is_set():
            self.rss.append((self.now(), tree_rss_bytes(pid), os.getloadavg()[0]))
            self.stop_all.wait(RSS_SAMPLE_S)

    def stop(self) -> None:
        self.stop_feed.set()
        self.stop_all.set()
        for thread in self.threads:
            thread.join(30)


_ROWS = [
    dict(zip(FEATURES, values, strict=True))
    for values in np.round(np.random.default_rng(0).normal(0, 1, (997, len(FEATURES))), 4).tolist()
]


def event(event_id: str, n: int) -> bytes:
    """A credit-card-shaped JSON event (~400 bytes: values rounded to 4 decimals)."""
    body = {"event_id": event_id, "card_id": f"card-{n % 997}", **_ROWS[n % 997]}
    return json.dumps(body).encode()


# --- numbers and plot -----------------------------------------------------------------------------


def id_ranges(numbers, shown: int = 6) -> str:
    """``"10–19, 25, 40–41 (+3 more ranges)"`` for a set of integers."""
    ranges: list[list[int]] = []
    for number in sorted(numbers):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    text = ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in ranges[:shown])
    return text + (f" (+{len(ranges) - shown} more ranges)" if len(ranges) > shown else "")


def percentiles_ms(latency_s: np.ndarray) -> tuple[float, float, int]:
    if latency_s.size == 0:
        return float("nan"), float("nan"), 0
    p50, p99 = np.percentile(latency_s, [50, 99]) * 1000
    return float(p50), float(p99), int(latency_s.size)


def plot(
    soak: Soak,
    outage: tuple[float | None, float | None, float | None],
    recovered_at: float | None,
    path: str,
    title: str,
) -> None:
    """Latency per window, predictions/s and RSS over the run; ``outage`` is (SIGTERM, the
    broker's exit, its return) in seconds since the first fed event."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, rate, mem) = plt.subplots(
        3, 1, sharex=True, figsize=(11, 8), height_ratios=(3, 2, 2)
    )
    n = soak.fed
    sent, seen = soak.produced_at[:n], soak.first_seen[:n]
    ok = ~np.isnan(seen)
    windows = np.arange(0, soak.seconds + WINDOW_S, WINDOW_S)
    mids, p50s, p99s = [], [], []
    for start in windows:
        inside = ok & (sent >= start) & (sent < start + WINDOW_S)
        if inside.any():
            latency = (seen[inside] - sent[inside]) * 1000
            mids.append(start + WINDOW_S / 2)
            p50s.append(np.percentile(latency, 50))
            p99s.append(np.percentile(latency, 99))
    lat.plot(mids, p50s, marker=".", color="tab:green", label="p50")
    lat.plot(mids, p99s, marker=".", color="tab:orange", label="p99")
    lat.axhline(1000, color="tab:red", linestyle=":", label="1 s")
    lat.set(yscale="log", ylabel="produce → prediction (ms)", title=title)
    seconds = np.arange(0, max(soak.arrivals, default=0) + 1)
    rate.plot(
        seconds,
        [soak.arrivals.get(s, 0) for s in seconds],
        color="tab:blue",
        lw=0.7,
        label="predictions/s (received)",
    )
    rate.axhline(soak.rate, color="tab:gray", linestyle=":", label=f"feed {soak.rate}/s")
    rate.set(ylabel="predictions/s")
    if soak.rss:
        at, rss, _ = np.array(soak.rss).T
        mem.plot(at, rss / 2**20, color="tab:purple", label="scorer RSS (with children)")
        reference = rss[np.argmin(np.abs(at - min(RSS_REFERENCE_S, soak.seconds / 4)))]
        mem.axhline(
            reference * 1.1 / 2**20, color="tab:red", linestyle=":", label="+10 % of minute 2"
        )
    mem.set(ylabel="RSS (MiB)", xlabel="time since the first fed event (s)")
    down_at, stopped_at, back_at = outage
    for axis in (lat, rate, mem):
        if down_at is not None:
            end = back_at if back_at is not None else soak.now()
            stopped = stopped_at if stopped_at is not None else down_at
            axis.axvspan(
                down_at,
                stopped,
                color="tab:red",
                alpha=0.08,
                label="broker shutting down (SIGTERM → exit)" if axis is lat else None,
            )
            axis.axvspan(
                stopped,
                end,
                color="tab:red",
                alpha=0.2,
                label="broker down → back" if axis is lat else None,
            )
        if recovered_at is not None:
            axis.axvline(
                recovered_at,
                color="tab:red",
                lw=0.8,
                linestyle="--",
                label="first prediction of a post-return event" if axis is lat else None,
            )
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right" if axis is mem else "upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="feed duration")
    parser.add_argument("--rate", type=int, default=1000, help="msg/s fed live")
    parser.add_argument("--down-seconds", type=float, default=30.0, help="broker outage")
    parser.add_argument("--restart-at", type=float, help="seconds into the feed (default: half)")
    parser.add_argument(
        "--catch-up-seconds",
        type=float,
        default=180.0,
        help="after the feed: wait at most this long for the last predictions",
    )
    parser.add_argument(
        "--plot", default=os.path.join(REPO, "docs", "images", "soak_broker_restart.png")
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, broker data)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)

    seconds = args.minutes * 60
    restart_at = seconds / 2 if args.restart_at is None else args.restart_at
    warm_up_s = min(WARM_UP_S, restart_at / 2)  # short debug runs keep a "before" window
    rss_reference_s = min(RSS_REFERENCE_S, seconds / 4)
    workdir = tempfile.mkdtemp(prefix="bench-soak-")
    print(
        f"soak: {args.minutes:g} min at {args.rate}/s, broker restart at {restart_at:.0f} s "
        f"(down {args.down_seconds:g} s); workdir {workdir}; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    broker = PrivateBroker(os.path.join(workdir, "stack"))
    scorer = soak = log = None
    broker_up = False
    try:
        model_root = write_tiny_model(os.path.join(workdir, "models"))
        broker_up = True  # from here on, "down" in finally (a failed "up" may leave a process)
        broker.stack("up", "kafka")
        suffix = uuid.uuid4().hex[:6]
        topics = {
            "input": f"soak-in-{suffix}",
            "output": f"soak-out-{suffix}",
            "dead": f"soak-dlq-{suffix}",
        }
        create_topics(
            broker.bootstrap,
            {topics["input"]: PARTITIONS, topics["output"]: PARTITIONS, topics["dead"]: 1},
        )
        log_path = os.path.join(workdir, "score_events.log")
        log = open(log_path, "wb")  # noqa: SIM115
        scorer = start_scorer(broker.bootstrap, topics, model_root, log)
        soak = Soak(broker.bootstrap, topics, args.rate, seconds)
        soak.start_collector()
        took = soak.warm_up(scorer, timeout=300)
        print(
            f"broker {broker.bootstrap}, scorer pid {scorer.pid} live after {took:.0f} s",
            flush=True,
        )

        soak.start_feed()
        soak.start_sampler(scorer.pid)
        next_progress = PROGRESS_S
        restarted = False
        while soak.now() < seconds:
            time.sleep(0.5)
            if scorer.poll() is not None:
                print(f"!! the scorer exited with {scorer.returncode}", flush=True)
                break
            if not restarted and soak.now() >= restart_at:
                broker.start_restart(args.down_seconds)
                restarted = True
                print(
                    f"{soak.now():5.0f} s  broker: SIGTERM, down {args.down_seconds:g} s",
                    flush=True,
                )
            if soak.now() >= next_progress:
                next_progress += PROGRESS_S
                rss = soak.rss[-1][1] / 2**20 if soak.rss else float("nan")
                state = "down/restarting" if broker.restart_running() else "up"
                print(
                    f"{soak.now():5.0f} s  fed {soak.fed:,}  predicted {soak.predicted:,}  "
                    f"lag {soak.fed - soak.predicted:,}  scorer RSS {rss:.0f} MiB  "
                    f"broker {state}  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        soak.stop_feed.set()
        soak.threads[1].join(150)  # the feed: its flush is bounded (120 s)
        # the feed has stopped, the restart may not have ended (a long --down-seconds)
        deadline = time.monotonic() + args.down_seconds + 300
        while broker.restart_running() and time.monotonic() < deadline:
            time.sleep(0.5)
        if broker.restart_running():
            raise RuntimeError("stack.sh restart did not finish")
        if broker.restart_proc is not None and broker.restart_proc.returncode != 0:
            raise RuntimeError(f"stack.sh restart failed: {broker.restart_events[-5:]}")
        fed_end = soak.now()
        print(
            f"{fed_end:5.0f} s  feed stopped: fed {soak.fed:,}, delivered {soak.delivered:,}, "
            f"delivery errors {soak.delivery_errors}",
            flush=True,
        )

        # what the broker holds now
        held_records = Counter()
        where = np.full((soak.capacity, 2), -1, np.int64)  # event → (partition, offset) held

        def hold(message) -> None:
            key = message.key()
            held_records[key] += 1
            if key.startswith(b"s") and int(key[1:]) < soak.capacity:
                where[int(key[1:])] = message.partition(), message.offset()

        read_topic(broker.bootstrap, topics["input"], hold)
        held = {int(k[1:]) for k in held_records if k.startswith(b"s")}

        # wait (bounded) until every held event has a prediction, live or in the output topic
        output_ids: Counter = Counter()

        def read_output() -> None:
            output_ids.clear()
            read_topic(
                broker.bootstrap,
                topics["output"],
                lambda m: output_ids.update((json.loads(m.value())["event_id"],)),
            )

        def missing() -> set[int]:
            live = set(np.flatnonzero(~np.isnan(soak.first_seen)).tolist())
            read = {int(e[1:]) for e in output_ids if e.startswith("s")}
            return held - live - read

        deadline = time.monotonic() + args.catch_up_seconds
        last_count, quiet_since = -1, time.monotonic()
        while (gone := missing()) and time.monotonic() < deadline and scorer.poll() is None:
            if soak.received != last_count:
                last_count, quiet_since = soak.received, time.monotonic()
            elif time.monotonic() - quiet_since > 10:  # nothing new live: look in the topic
                read_output()
                quiet_since = time.monotonic()
            print(
                f"{soak.now():5.0f} s  catching up: {len(gone):,} held events without a "
                "prediction yet",
                flush=True,
            )
            time.sleep(5)
        read_output()
        lost = missing()
        caught_up = soak.now()

        # --- results
        n = soak.fed
        sent, seen = soak.produced_at[:n], soak.first_seen[:n]
        latency = seen - sent
        markers = [
            broker.marker(text) for text in ("restart: SIGTERM", "stopped (pid", ": up (pid")
        ]
        down_at, stopped_at, back_at = (None if m is None else m - soak.origin for m in markers)
        scored = ~np.isnan(seen)
        recovered = None
        if back_at is not None and np.any(scored & (sent >= back_at)):
            recovered = float(np.min(seen[scored & (sent >= back_at)]))
        before_to = down_at if down_at is not None else fed_end
        before = percentiles_ms(latency[scored & (sent >= warm_up_s) & (sent < before_to)])
        # after: from SETTLE_S after the return (half the time left in a short debug run)
        after_from = fed_end
        if back_at is not None:
            after_from = back_at + min(SETTLE_S, max(0.0, fed_end - back_at) / 2)
        after = percentiles_ms(latency[scored & (sent >= after_from)])
        in_output = {int(e[1:]) for e in output_ids if e.startswith("s")}
        output_records = sum(c for e, c in output_ids.items() if e.startswith("s"))
        live_ids = set(np.flatnonzero(~np.isnan(seen)).tolist())
        input_records = sum(c for k, c in held_records.items() if k.startswith(b"s"))
        rss = np.array(soak.rss) if soak.rss else np.zeros((0, 3))
        rss_during = rss[rss[:, 0] <= fed_end] if rss.size else rss

        print(
            f"\n== soak: {args.minutes:g} min at {args.rate}/s, broker restart at "
            f"{before_to:.0f} s (down {args.down_seconds:g} s) =="
        )
        print(
            f"events fed        {n:,}  (delivered {soak.delivered:,}, "
            f"errors {soak.delivery_errors})"
        )
        print(
            f"held by broker    {len(held):,}  ({input_records:,} input records; "
            f"fed but not held: {len(set(range(n)) - held):,})"
        )
        print(
            f"with a prediction {len(held & (live_ids | in_output)):,} of the held "
            f"(seen live {len(live_ids):,}; in the output topic now {len(in_output):,})"
        )
        print(f"LOST              {len(lost):,}  (held − predicted; must be 0)")
        if lost:
            print(f"  lost events {id_ranges(lost)}")
            for partition in range(PARTITIONS):
                offsets = sorted(where[i, 1] for i in lost if where[i, 0] == partition)
                if offsets:
                    print(
                        f"  input partition {partition}: {len(offsets):,} lost at offsets "
                        f"{id_ranges(offsets)}"
                    )
        not_held = set(range(n)) - held
        if not_held:
            print(f"  fed but not held (the broker dropped them): events {id_ranges(not_held)}")
        dups = output_records - len(in_output)
        print(
            f"duplicates        {dups:,} in the output topic ({output_records:,} records, "
            f"{dups / max(1, len(in_output)):.2%}); {soak.received - len(live_ids):,} seen "
            "twice live"
        )
        print(
            f"latency before    p50 {before[0]:,.0f} ms, p99 {before[1]:,.0f} ms  "
            f"({before[2]:,} events produced {warm_up_s:.0f}–{before_to:.0f} s)"
        )
        print(
            f"latency after     p50 {after[0]:,.0f} ms, p99 {after[1]:,.0f} ms  "
            f"({after[2]:,} events produced {after_from:.0f}–{fed_end:.0f} s)"
        )
        if down_at is None or back_at is None:
            print("outage            the broker restart did not happen or did not finish")
        else:
            stop_s = f"{stopped_at:.1f}" if stopped_at is not None else "?"
            print(
                f"outage            SIGTERM at {down_at:.1f} s, stopped at {stop_s} s, back at "
                f"{back_at:.1f} s ({back_at - down_at:.1f} s without a broker)"
            )
            if recovered is not None:
                print(
                    f"recovery          {recovered - back_at:.1f} s (broker back → first "
                    "prediction of an event produced after the return)"
                )
            else:
                print("recovery          NONE: no event produced after the return was predicted")
        if rss_during.size:
            at_ref = rss_during[np.argmin(np.abs(rss_during[:, 0] - rss_reference_s))]
            end, peak = rss_during[-1], rss_during[:, 1].max()
            growth = (end[1] - at_ref[1]) / at_ref[1]
            print(
                f"scorer RSS        {at_ref[1] / 2**20:,.0f} MiB at {at_ref[0]:.0f} s → "
                f"{end[1] / 2**20:,.0f} MiB at {end[0]:.0f} s: growth {growth:+.1%} "
                f"(target ≤ 10 %), peak {peak / 2**20:,.0f} MiB"
            )
            # The scorer's in-process restart after the fault rebuilds the pipeline and gives
            # memory back: the end-to-end growth can hide a steady climb. The slope of each
            # stretch without a fault shows it (a linear fit, MiB per minute).
            stretches = [("before the restart", 0.0, before_to)]
            if back_at is not None:
                stretches.append(("after recovery", after_from, fed_end))
            slopes = []
            for name, start, stop in stretches:
                part = rss_during[(rss_during[:, 0] >= start) & (rss_during[:, 0] <= stop)]
                if len(part) >= 3:
                    slope = np.polyfit(part[:, 0], part[:, 1], 1)[0] * 60 / 2**20
                    slopes.append(slope)
                    print(f"  RSS slope {name}: {slope:+.1f} MiB/min ({start:.0f}–{stop:.0f} s)")
            if slopes:
                projected = max(slopes) * (end[0] - at_ref[0]) / 60 / (at_ref[1] / 2**20)
                print(f"  at the steeper slope, minute 2 → end without a restart: {projected:+.1%}")
            loads = rss[:, 2]
            print(
                f"load average 1 min: median {np.median(loads):.1f}, min {loads.min():.1f}, "
                f"max {loads.max():.1f} (2 cores; other engineers' tests share them)"
            )
        with open(log_path, errors="replace") as handle:
            text = handle.read()
        print(
            f"scorer: still running {scorer.poll() is None}, in-process restarts "
            f"{text.count('restarting from the committed offsets')}, fatal producer errors "
            f"{text.count('failed fatally')}; consumer errors {dict(soak.consumer_errors)}; "
            f"caught up at {caught_up:.0f} s; this script's clients logged "
            f"{_BROKER_DOWN_LINES.dropped} broker-down lines (not shown)"
        )
        if lost or scorer.poll() is not None:
            print("scorer log tail:\n" + text[-3000:])
        if args.plot:
            os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
            title = (
                f"score_events --streaming, {args.rate}/s for {args.minutes:g} min, broker "
                f"down {args.down_seconds:g} s (p50/p99 per {WINDOW_S:.0f} s of produce "
                "time)"
            )
            plot(soak, (down_at, stopped_at, back_at), recovered, args.plot, title)
            print(f"plot: {args.plot}")
        return 1 if lost else 0
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup runs to its end
        if soak is not None:
            soak.stop_feed.set()
            soak.stop_all.set()
        if scorer is not None:
            stop_process_group(scorer)
        if soak is not None:
            soak.stop()
        if log is not None:
            log.close()
        broker.stop_restart()
        if broker_up:
            try:
                broker.stack("down", timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"!! stack.sh down: {error}", file=sys.stderr)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
