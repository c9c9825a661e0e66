"""A local dask.distributed cluster (one scheduler, N worker processes) on 127.0.0.1.

Usage (through scripts/dask.sh)::

    dask.sh up [--workers N] [--threads T]   start, wait until N workers joined, print the address
    dask.sh down                             stop the processes this script started (by PID)
    dask.sh status                           address and worker PIDs, exit 1 when not running
    dask.sh address                          the scheduler address (for --dask_client_address)

State lives in ``$KBML_DASK_DIR`` (default ``<KBML_STACK_DIR or .stack>/dask``): ``address``,
``*.pid`` and ``logs/``. The scheduler listens on ``$KBML_DASK_PORT`` (default: a free port);
its dashboard is off. Workers run without a nanny, one process each, so every process this
script starts has its own PID file and is stopped by that PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0


def _state_dir() -> Path:
    if os.environ.get("KBML_DASK_DIR"):
        return Path(os.environ["KBML_DASK_DIR"])
    return Path(os.environ.get("KBML_STACK_DIR", ROOT / ".stack")) / "dask"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(state: Path) -> dict[str, int]:
    found = {}
    for path in sorted(state.glob("*.pid")):
        try:
            found[path.stem] = int(path.read_text().strip())
        except ValueError:
            path.unlink()
    return found


def _spawn(state: Path, name: str, args: list[str]) -> int:
    log = open(state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=state,
        start_new_session=True,  # survives this script; stopped by `down`
    )
    (state / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=READY_TIMEOUT_S) as client:
        client.wait_for_workers(count, timeout=READY_TIMEOUT_S)


def up(workers: int, threads: int) -> int:
    state = _state_dir()
    running = {name: pid for name, pid in _pids(state).items() if _alive(pid)}
    if running:
        print(
            f"dask: already running ({', '.join(sorted(running))}); `down` first", file=sys.stderr
        )
        print((state / "address").read_text().strip())
        return 0
    (state / "logs").mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("KBML_DASK_PORT") or _free_port())
    address = f"tcp://{HOST}:{port}"
    _spawn(
        state,
        "scheduler",
        [
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-dashboard",
        ],
    )
    for index in range(workers):
        _spawn(
            state,
            f"worker-{index}",
            [
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--host",
                HOST,
                "--nthreads",
                str(threads),
                "--no-nanny",
                "--no-dashboard",
                "--name",
                f"worker-{index}",
                "--local-directory",
                str(state / f"worker-{index}"),
            ],
        )
    (state / "address").write_text(address + "\n")
    try:
        _wait_for_workers(address, workers)
    except Exception as err:  # noqa: BLE001 - reported with the logs' location, then cleaned up
        print(
            f"dask: cluster not ready in {READY_TIMEOUT_S:.0f}s: {err}; logs in {state / 'logs'}",
            file=sys.stderr,
        )
        down()
        return 1
    print(address)
    return 0


def down() -> int:
    state = _state_dir()
    pids = _pids(state)
    # Workers first, so the scheduler does not see them vanish one by one and reschedule.
    for name in sorted(pids, key=lambda n: n == "scheduler"):
        pid = pids[name]
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        (state / f"{name}.pid").unlink(missing_ok=True)
    (state / "address").unlink(missing_ok=True)
    return 0


def status() -> int:
    state = _state_dir()
    pids = _pids(state)
    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    address = (state / "address").read_text().strip() if (state / "address").exists() else "-"
    print(f"address {address}")
    for name, pid in pids.items():
        print(f"{name} pid {pid} {'running' if name in alive else 'DEAD'}")
    return 0 if alive and "scheduler" in alive and len(alive) == len(pids) else 1


def address() -> int:
    path = _state_dir() / "address"
    if not path.exists():
        print("dask: not running (scripts/dask.sh up)", file=sys.stderr)
        return 1
    print(path.read_text().strip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "address"))
    parser.add_argument("--workers", type=int, default=2, help="worker processes (up)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (up)")
    args = parser.parse_args(argv)
    if args.command == "up":
        if args.workers < 1 or args.threads < 1:
            parser.error("--workers and --threads must be >= 1")
        return up(args.workers, args.threads)
    return {"down": down, "status": status, "address": address}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
