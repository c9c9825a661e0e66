"""Benchmark the batch pipelines on a local Dask cluster: 1 vs 2 workers, and Dask vs Direct.

Same run, same private broker, same events (default 200k credit-card-shaped JSON events on
``--partitions`` partitions):

* ``kafka_to_gcs`` (read → decode/validate → TFRecord shards in a local directory) on the
  DirectRunner (this process: the baseline), on a Dask cluster of 1 worker and of 2 workers
  (``scripts/dask.sh``; each worker one process, one thread);
* ``score_events`` in batch (the backlog → model → output topic) on the DirectRunner and on
  2 Dask workers.

Each timing is the median of ``--repeats`` runs after one untimed warm-up per cluster (workers
import TensorFlow once). Reported: wall seconds, rows/s, and CPU-seconds per row — this process
plus every Dask worker plus the broker, from /proc, so a faster run that burns more CPU shows.
The machine's other load is printed (``uptime``); the Dask cluster shares the cores with the
broker, so 2 workers cannot double anything on a 2-core machine.

    .venv/bin/python bench/bench_dask.py                      # 200k events
    .venv/bin/python bench/bench_dask.py --events 50000 --repeats 3 --skip-scoring
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import tensorflow  # noqa: F401 - imported up front so no timed run pays TF's import
from bench_scoring import (
    PrivateBroker,
    count_messages,
    cpu_seconds,
    create_topics,
    export_models,
    fill_topic,
    wait_until_idle,
)

from pipelines import kafka_to_gcs, score_events
from transforms.decoding.schema import bundled_schema_path
from transforms.kafka.config import LOCAL_BROKER_SETTINGS

REPO = Path(__file__).resolve().parent.parent
_EXTRA = ";".join(f"{k}={v}" for k, v in LOCAL_BROKER_SETTINGS.items())


class DaskCluster:
    """``scripts/dask.sh up --workers N`` in a private state directory; ``down`` on exit."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._env = {**os.environ, "KBML_DASK_DIR": tempfile.mkdtemp(prefix="bench-dask-")}
        self.address = ""

    def _script(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "dask.sh"), *args],
            env=self._env,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def __enter__(self) -> DaskCluster:
        self.address = self._script("up", "--workers", str(self.workers)).splitlines()[-1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._script("down")

    def pids(self) -> list[int]:
        state = Path(self._env["KBML_DASK_DIR"])
        return [int(p.read_text()) for p in state.glob("worker-*.pid")]

    def runner_args(self) -> list[str]:
        return ["--runner=DaskRunner", f"--dask_client_address={self.address}"]


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _measure(
    name: str, rows: int, repeats: int, pids: list[int], action: Callable[[], None]
) -> dict[str, float]:
    """Median wall seconds and CPU-seconds/row over ``repeats`` runs of ``action``."""
    walls, cpus = [], []
    for attempt in range(repeats):
        before = _own_cpu() + sum(cpu_seconds(p) for p in pids)
        started = time.perf_counter()
        action()
        wall = time.perf_counter() - started
        cpu = _own_cpu() + sum(cpu_seconds(p) for p in pids) - before
        walls.append(wall)
        cpus.append(cpu)
        print(f"  {name} run {attempt + 1}: {wall:.2f}s, {rows / wall:,.0f} rows/s, "
              f"{cpu / rows * 1e6:.1f} CPU-us/row", flush=True)  # fmt: skip
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"wall": wall, "rows_s": rows / wall, "cpu_us_row": cpu / rows * 1e6}


def _export(bootstrap: str, topic: str, runner_args: list[str], unit_records: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-dask-export-") as out:
        kafka_to_gcs.run(
            [
                f"--bootstrapServers={bootstrap}",
                f"--kafkaConfig={_EXTRA}",
                f"--inputTopic={topic}",
                "--startOffset=earliest",
                f"--schemaPath={bundled_schema_path('creditcard')}",
                f"--outputDirectory={out}",
                "--numShards=4",
                f"--workUnitRecords={unit_records}",
                *runner_args,
            ]
        )
        shards = list(Path(out).glob("part-*"))
        assert len(shards) == 4, shards


def _score(
    bootstrap: str, source: str, model_root: str, runner_args: list[str], unit_records: int
) -> str:
    sink = f"bench-dask-scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, sink)
    score_events.run(
        [
            f"--bootstrapServers={bootstrap}",
            f"--kafkaConfig={_EXTRA}",
            f"--inputTopic={source}",
            f"--outputTopic={sink}",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path('creditcard')}",
            f"--modelPath={model_root}",
            f"--workUnitRecords={unit_records}",
            *runner_args,
        ]
    )
    return sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=19193, help="private broker port")
    parser.add_argument("--unit-records", type=int, default=20_000, help="--workUnitRecords")
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())

    results: dict[str, dict[str, float]] = {}
    with PrivateBroker(args.port) as broker, tempfile.TemporaryDirectory() as workdir:
        bootstrap, broker_pid = broker.bootstrap, broker.pid()
        topic = f"bench-dask-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, topic, partitions=args.partitions)
        fill_topic(bootstrap, topic, args.events)
        assert count_messages(bootstrap, topic) >= args.events
        wait_until_idle(broker_pid)
        rows = args.events
        base_pids = [broker_pid] if broker_pid else []

        def export_on(runner_args: list[str]) -> Callable[[], None]:
            return lambda: _export(bootstrap, topic, runner_args, args.unit_records)

        _export(
            bootstrap, topic, [], args.unit_records
        )  # warm-up: imports, first model of everything
        results["export direct"] = _measure(
            "export direct", rows, args.repeats, base_pids, export_on([])
        )
        for workers in (1, 2):
            with DaskCluster(workers) as cluster:
                pids = base_pids + cluster.pids()
                export_on(cluster.runner_args())()  # warm-up on the workers
                name = f"export dask x{workers}"
                results[name] = _measure(
                    name, rows, args.repeats, pids, export_on(cluster.runner_args())
                )
        if not args.skip_scoring:
            model_root, _ = export_models(workdir)
            _score(bootstrap, topic, model_root, [], args.unit_records)  # warm-up
            results["score direct"] = _measure(
                "score direct",
                rows,
                args.repeats,
                base_pids,
                lambda: _score(bootstrap, topic, model_root, [], args.unit_records),
            )
            with DaskCluster(2) as cluster:
                pids = base_pids + cluster.pids()
                sink = _score(
                    bootstrap, topic, model_root, cluster.runner_args(), args.unit_records
                )
                assert count_messages(bootstrap, sink) == rows, "dask scoring lost rows"
                results["score dask x2"] = _measure(
                    "score dask x2",
                    rows,
                    args.repeats,
                    pids,
                    lambda: _score(
                        bootstrap, topic, model_root, cluster.runner_args(), args.unit_records
                    ),
                )

    print("load after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(
        f"\n{rows:,} events, {args.partitions} partitions, units of {args.unit_records} offsets, "
        f"median of {args.repeats}"
    )
    print(f"{'run':<18} {'wall s':>8} {'rows/s':>10} {'CPU-us/row':>11}")
    for name, r in results.items():
        print(f"{name:<18} {r['wall']:>8.2f} {r['rows_s']:>10,.0f} {r['cpu_us_row']:>11.1f}")
    one, two = results["export dask x1"], results["export dask x2"]
    print(f"export: dask x2 / dask x1 = {two['rows_s'] / one['rows_s']:.2f}x rows/s")
    print(f"export: dask x2 / direct  = {two['rows_s'] / results['export direct']['rows_s']:.2f}x")
    if "score dask x2" in results:
        ratio = results["score dask x2"]["rows_s"] / results["score direct"]["rows_s"]
        print(f"score:  dask x2 / direct  = {ratio:.2f}x rows/s")


if __name__ == "__main__":
    main()
