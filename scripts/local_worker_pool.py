"""Beam's SDK worker pool on 127.0.0.1, for ``--environment_type=EXTERNAL`` runs.

A Flink or Spark job server runs Python steps in SDK workers it asks a worker pool to start
(``--environment_type=EXTERNAL --environment_config=HOST:PORT``; on Kubernetes the pool is the
``apache/beam_python3.11_sdk`` sidecar started with ``--worker_pool``). This is Beam's own pool
(``apache_beam.runners.worker.worker_pool_main``) with one difference: it listens on 127.0.0.1,
not on every interface. Each worker it starts is a separate ``python`` process (the one of this
interpreter's venv), so the pipeline's code runs outside the launching process, as on a cluster.

    .venv/bin/python scripts/local_worker_pool.py --port 50000
    python -m pipelines.score_events --runner=PortableRunner --job_endpoint=embed \\
        --environment_type=EXTERNAL --environment_config=127.0.0.1:50000 --streaming ...

It prints ``ready 127.0.0.1:PORT`` once it listens and runs until SIGTERM/SIGINT, stopping the
workers it started.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import signal
import sys
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import (
    BeamFnExternalWorkerPoolServicer,
    kill_process_gracefully,
)
from apache_beam.utils import thread_pool_executor


def serve(port: int) -> tuple[grpc.Server, int]:
    """Start the pool on 127.0.0.1:``port`` (0: a free port); returns the server and its port."""
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    def stop_workers() -> None:
        for process in pool._worker_processes.values():
            kill_process_gracefully(process)

    atexit.register(stop_workers)
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Beam's pool starts each worker as `python -c ...`: make that this venv's interpreter.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    server, port = serve(args.port)
    print(f"ready 127.0.0.1:{port}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(5)
    return 0  # atexit stops the workers


if __name__ == "__main__":
    sys.exit(main())
