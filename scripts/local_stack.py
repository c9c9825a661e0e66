"""Local stack for kafka-beam-ml: Kafka (noida-db), BigQuery (local-bigquery), GCS emulator,
MQTT (Debian's mosquitto), a model server (KServe running serving/anomaly_model_server.py).

Standard library only, so it runs before anything else works. ``scripts/stack.sh`` calls it with
the project venv's Python, which is also where noida-db and gcp-storage-emulator are installed;
local-bigquery needs Python >= 3.13 and gets its own venv (installed on the first ``up``), and
so does the model server (kserve wants newer setuptools/fastapi than the project; its venv also
holds TensorFlow to load the SavedModels it serves from ``<state dir>/data/models/anomaly``).

Commands::

    up [--free-ports] [SERVICE ...]
                       install what is missing, start what is not running, wait until it answers
    install            only install (the BigQuery emulator's venv)
    down [SERVICE ...] stop exactly the processes this stack started (SIGTERM, then SIGKILL)
    restart SERVICE ... [--down-seconds N]
                       stop the services, stay down N seconds, start them on the same data
    status [--json]    one line per service: name, pid, port, up/down (exit 3 if one is down)
    env [--json]       shell exports (or JSON) pointing clients at the stack

Everything binds 127.0.0.1. Overrides (env vars): KBML_STACK_DIR (state: data, logs, pids),
KBML_BIGQUERY_VENV, KBML_MODEL_SERVER_VENV, KBML_PROJECT, KBML_KAFKA_PORT, KBML_BIGQUERY_PORT,
KBML_BIGQUERY_GRPC_PORT, KBML_GCS_PORT, KBML_MQTT_PORT, KBML_MODEL_SERVER_PORT,
KBML_STACK_TIMEOUT (seconds to wait for a service to answer), KBML_STACK_GRACE (seconds between
SIGTERM and SIGKILL on down).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Stack", "StackError", "LOCAL_KAFKA_CONFIG", "main"]

_LOGGER = logging.getLogger("local_stack")

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: librdkafka tuning for noida-db (it ignores fetch size and wait limits, see
#: docs/local_stack.md#kafka-broker-noida-db). Must equal
#: ``transforms.kafka.config.LOCAL_BROKER_SETTINGS``; a unit test checks that.
LOCAL_KAFKA_CONFIG = {
    "receive.message.max.bytes": "2147483647",
    "queued.min.messages": "1000",
    "fetch.queue.backoff.ms": "100",
}

#: local-bigquery 0.3.2 and the duckdb 1.5.5 extensions it can load offline (see
#: docs/local_stack.md#bigquery-emulator-local-bigquery).
BIGQUERY_PINS = (
    "local-bigquery==0.3.2",
    "duckdb==1.5.5",
    "duckdb-extensions",
    "duckdb-extension-icu==1.5.5",
    "duckdb-extension-ducklake==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "pytz",
)
_LOAD_EXTENSIONS = (
    "from duckdb_extensions import import_extension as i; "
    "[i(e) for e in ('icu', 'ducklake', 'spatial')]"
)
DEFAULT_PORTS = {
    "KBML_KAFKA_PORT": 9092,
    "KBML_BIGQUERY_PORT": 9050,
    "KBML_BIGQUERY_GRPC_PORT": 9060,
    "KBML_GCS_PORT": 9023,
    "KBML_MQTT_PORT": 1883,
    "KBML_MODEL_SERVER_PORT": 8085,
}

#: The model server's venv (Python 3.11, like the project): KServe's ModelServer and the
#: project's TensorFlow (docs/local_stack.md#model-server-kserve).
MODEL_SERVER_PINS = ("kserve==0.21.0", "tensorflow==2.21.0")
#: The stack's model server serves the newest version under data/models/<MODEL_NAME>.
MODEL_NAME = "anomaly"

#: Debian's mosquitto 2.0 (``apt-get install mosquitto``; scripts/bootstrap.sh installs it).
MOSQUITTO = Path("/usr/sbin/mosquitto")


class StackError(RuntimeError):
    """A service could not be installed, started or stopped; the message names it."""


@dataclasses.dataclass(frozen=True)
class Service:
    """One server process of the stack and how to tell that it answers."""

    name: str
    port_by_var: dict[str, int]
    command: tuple[str, ...]
    env: dict[str, str]
    ready: Callable[[], bool]
    prepare: Callable[[], None] | None = None  # writes what the command needs (a config file)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self.port_by_var.values())

    @property
    def port(self) -> int:
        return self.ports[0]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise StackError(f"{name}={value!r} is not a port number") from None


def _kafka_answers(port: int) -> bool:
    """Send a Kafka ApiVersions v0 request; True when the broker answers with error code 0."""
    client_id = b"kbml-stack"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return correlation_id == 1 and error_code == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _mqtt_answers(port: int) -> bool:
    """Send an MQTT 3.1.1 CONNECT (clean session); True when the broker's CONNACK accepts it."""
    client_id = b"kbml-stack-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x05" + struct.pack(">H", len(client_id)) + client_id
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(bytes([0x10, len(variable)]) + variable)
            connack = _recv_exact(sock, 4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return connack[0] == 0x20 and connack[3] == 0


def _mosquitto_config(port: int, data: Path) -> str:
    """mosquitto.conf for a bridge that acknowledges only durable messages.

    No limit on unacknowledged messages in flight (``max_inflight_messages 0``) or queued for a
    disconnected persistent session (``max_queued_*``): the bridge holds its PUBACKs until Kafka
    has the records, and a bridge that is down must find everything published meanwhile.
    """
    import getpass

    return "\n".join(
        (
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            # Mosquitto rewrites its whole store at each save: every 10 s cost seconds of
            # broker time once sessions had queued a few hundred MB. A SIGTERM saves anyway.
            "autosave_interval 60",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "persistent_client_expiration 2d",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"user {getpass.getuser()}",  # stay the invoking user (it owns the data dir)
            "",
        )
    )


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _port_taken(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port (or on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (guards against PID reuse); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


class Stack:
    """The three services, their files under the state dir, and the up/down/status/env logic."""

    def __init__(self) -> None:
        self.state_dir = Path(os.environ.get("KBML_STACK_DIR") or REPO / ".stack").resolve()
        self.bigquery_venv = Path(
            os.environ.get("KBML_BIGQUERY_VENV") or REPO / ".stack" / "bigquery-venv"
        ).resolve()
        self.model_server_venv = Path(
            os.environ.get("KBML_MODEL_SERVER_VENV") or REPO / ".stack" / "model-server-venv"
        ).resolve()
        self.project = os.environ.get("KBML_PROJECT") or "kafka-beam-ml-local"
        self.timeout = float(os.environ.get("KBML_STACK_TIMEOUT") or 120)
        self.grace = float(os.environ.get("KBML_STACK_GRACE") or 10)
        saved = self._saved_ports()
        self.ports = {
            var: _env_int(var, saved.get(var, default)) for var, default in DEFAULT_PORTS.items()
        }
        self.services = self._build_services()

    def _build_services(self) -> tuple[Service, ...]:
        kafka_port, bq_port, bq_grpc_port, gcs_port = (
            self.ports[var]
            for var in (
                "KBML_KAFKA_PORT",
                "KBML_BIGQUERY_PORT",
                "KBML_BIGQUERY_GRPC_PORT",
                "KBML_GCS_PORT",
            )
        )
        mqtt_port = self.ports["KBML_MQTT_PORT"]
        model_port = self.ports["KBML_MODEL_SERVER_PORT"]
        data = self.state_dir / "data"
        mqtt_conf = self.state_dir / "run" / "mosquitto.conf"
        venv_bin = Path(sys.executable).parent
        return (
            Service(
                "kafka",
                {"KBML_KAFKA_PORT": kafka_port},
                (
                    str(self._noida_binary()),
                    "start",
                    "--only",
                    "kafka",
                    "--host",
                    HOST,
                    "--kafka-port",
                    str(kafka_port),
                    "--data-dir",
                    str(data / "kafka"),
                ),
                {},
                lambda: _kafka_answers(kafka_port),
            ),
            Service(
                "bigquery",
                {"KBML_BIGQUERY_PORT": bq_port, "KBML_BIGQUERY_GRPC_PORT": bq_grpc_port},
                (
                    str(self.bigquery_venv / "bin" / "local-bigquery"),
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(bq_port),
                    "--grpc-port",
                    str(bq_grpc_port),
                    "--project",
                    self.project,
                    "--data-dir",
                    str(data / "bigquery"),
                ),
                # FILE_LOADS: load jobs read the temp files straight from the GCS emulator's disk.
                {"GCS_LOCAL_ROOT": str(data / "gcs" / ".cloudstorage")},
                lambda: (
                    _http_status(
                        f"http://{HOST}:{bq_port}/bigquery/v2/projects/{self.project}/datasets"
                    )
                    == 200
                ),
            ),
            Service(
                "gcs",
                {"KBML_GCS_PORT": gcs_port},
                (
                    str(venv_bin / "gcp-storage-emulator"),
                    "-d",
                    str(data / "gcs"),
                    "start",
                    "--host",
                    HOST,
                    "--port",
                    str(gcs_port),
                    "-q",
                ),
                {},
                lambda: (
                    (_http_status(f"http://{HOST}:{gcs_port}/storage/v1/b?project=x") or 999) < 500
                ),
            ),
            Service(
                "mqtt",
                {"KBML_MQTT_PORT": mqtt_port},
                (str(MOSQUITTO), "-c", str(mqtt_conf)),
                {},
                lambda: _mqtt_answers(mqtt_port),
                prepare=lambda: _write_mosquitto_config(mqtt_conf, mqtt_port, data / "mqtt"),
            ),
            Service(
                "model-server",
                {"KBML_MODEL_SERVER_PORT": model_port},
                (
                    str(self.model_server_venv / "bin" / "python"),
                    str(REPO / "serving" / "anomaly_model_server.py"),
                    "--model_root",
                    str(self.model_root),
                    "--model_name",
                    MODEL_NAME,
                    "--http_port",
                    str(model_port),
                    "--host",
                    HOST,
                    "--poll_seconds",
                    "1",
                ),
                {"TF_CPP_MIN_LOG_LEVEL": "2"},
                lambda: _http_status(f"http://{HOST}:{model_port}/v2/health/live") == 200,
            ),
        )

    @property
    def model_root(self) -> Path:
        """Where the model server looks for ``<version>/`` SavedModels (the newest is served)."""
        return self.state_dir / "data" / "models" / MODEL_NAME

    # -- files ------------------------------------------------------------------------------

    @staticmethod
    def _noida_binary() -> Path:
        """The server binary itself, not the ``noida-db`` wrapper (whose PID is not the server)."""
        import importlib.util

        spec = importlib.util.find_spec("noida_db")
        if spec is None or not spec.submodule_search_locations:
            return Path("noida-db-not-installed")
        return Path(next(iter(spec.submodule_search_locations))) / "noida-db"

    def _ports_file(self) -> Path:
        return self.state_dir / "run" / "ports.json"

    def _saved_ports(self) -> dict[str, int]:
        """Ports the running stack was started on (``up --free-ports`` may have picked them)."""
        try:
            return json.loads(self._ports_file().read_text())
        except (OSError, ValueError):
            return {}

    def _pidfile(self, service: Service) -> Path:
        return self.state_dir / "run" / f"{service.name}.pid"

    def _logfile(self, service: Service) -> Path:
        return self.state_dir / "logs" / f"{service.name}.log"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down between concurrent callers (several test sessions share a stack)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def running_pid(self, service: Service) -> int | None:
        """PID from the pidfile if that very process (same start time) is still alive."""
        try:
            pid_text, start = self._pidfile(service).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if _proc_start_time(pid) == start else None

    # -- install ----------------------------------------------------------------------------

    def install(self) -> None:
        """Check the venv-provided servers and install the BigQuery venv once (idempotent)."""
        with self._locked():
            self._install()

    def _install(self) -> None:
        noida = self._noida_binary()
        if not noida.is_file():
            raise StackError(
                "kafka: noida-db is not installed in "
                f"{sys.prefix}; run scripts/bootstrap.sh (pip install -e '.[dev]')"
            )
        if not os.access(noida, os.X_OK):
            noida.chmod(0o755)  # what the noida-db wrapper does before each run
        if not MOSQUITTO.is_file():
            raise StackError(
                f"mqtt: {MOSQUITTO} is missing; run scripts/bootstrap.sh "
                "(apt-get install mosquitto)"
            )
        if not (Path(sys.executable).parent / "gcp-storage-emulator").is_file():
            raise StackError(
                "gcs: gcp-storage-emulator is not installed in "
                f"{sys.prefix}; run scripts/bootstrap.sh (pip install -e '.[dev]')"
            )
        self._install_bigquery()
        self._install_model_server()

    def _install_bigquery(self) -> None:
        marker = self.bigquery_venv / ".kbml-installed"
        wanted = "\n".join(BIGQUERY_PINS)
        if marker.is_file() and marker.read_text() == wanted:
            return
        python = _find_python313()
        _LOGGER.info("bigquery: installing local-bigquery into %s", self.bigquery_venv)
        log = self.state_dir / "logs" / "bigquery-install.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        pip = str(self.bigquery_venv / "bin" / "python")
        steps = (
            (python, "-m", "venv", str(self.bigquery_venv)),
            (pip, "-m", "pip", "install", "--quiet", *BIGQUERY_PINS),
            (pip, "-c", _LOAD_EXTENSIONS),
        )
        with open(log, "a") as out:
            for step in steps:
                result = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
                if result.returncode != 0:
                    raise StackError(
                        f"bigquery: install step failed ({shlex.join(step)}):\n{_tail(log)}"
                    )
        marker.write_text(wanted)

    def _install_model_server(self) -> None:
        marker = self.model_server_venv / ".kbml-installed"
        wanted = "\n".join(MODEL_SERVER_PINS)
        if marker.is_file() and marker.read_text() == wanted:
            return
        _LOGGER.info("model-server: installing kserve into %s", self.model_server_venv)
        log = self.state_dir / "logs" / "model-server-install.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        python = str(self.model_server_venv / "bin" / "python")
        base_python = str(Path(sys.base_prefix) / "bin" / "python3")
        steps = (
            (base_python, "-m", "venv", str(self.model_server_venv)),
            (python, "-m", "pip", "install", "--quiet", *MODEL_SERVER_PINS),
        )
        with open(log, "a") as out:
            for step in steps:
                result = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
                if result.returncode != 0:
                    raise StackError(
                        f"model-server: install step failed ({shlex.join(step)}):\n{_tail(log)}"
                    )
        marker.write_text(wanted)

    # -- commands ---------------------------------------------------------------------------

    def _named(self, names: list[str]) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.name in names)

    def select(self, names: list[str]) -> tuple[Service, ...]:
        """The named services (all when ``names`` is empty); unknown names are an error."""
        known = {s.name: s for s in self.services}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; choose from {sorted(known)}")
        return tuple(known[n] for n in names) if names else self.services

    def up(self, names: list[str], *, free_ports: bool = False) -> None:
        """Start what is not running and wait until it answers; running services are untouched.

        With ``free_ports``, a service whose port is taken (and not pinned by its KBML_*_PORT
        variable) moves to a free port instead of failing; ``env`` then reports the new ports.
        """
        with self._locked():
            self._install()
            missing = []
            for service in self.select(names):
                pid = self.running_pid(service)
                if pid is None:
                    missing.append(service.name)
                else:
                    _LOGGER.info("%s: already up (pid %d)", service.name, pid)
            for service in self._named(missing):
                for var, port in service.port_by_var.items():
                    if not _port_taken(port):
                        continue
                    if free_ports and var not in os.environ:
                        self.ports[var] = _free_port()
                        _LOGGER.info(
                            "%s: port %d is taken; using %d", service.name, port, self.ports[var]
                        )
                        continue
                    raise StackError(
                        f"{service.name}: port {port} on {HOST} is already in use by a process "
                        f"this stack did not start; stop it or set {var} to another port"
                    )
            self.services = self._build_services()
            self._ports_file().parent.mkdir(parents=True, exist_ok=True)
            self._ports_file().write_text(json.dumps(self.ports))
            started = [(service, self._start(service)) for service in self._named(missing)]
            for service, pid in started:
                self._wait_ready(service, pid)
                _LOGGER.info("%s: up (pid %d, port %d)", service.name, pid, service.port)

    def _start(self, service: Service) -> int:
        for path in (self._pidfile(service).parent, self.state_dir / "data"):
            path.mkdir(parents=True, exist_ok=True)
        if service.prepare is not None:
            service.prepare()
        log = self._logfile(service)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # Own session: the service survives this script and down can signal its group.
            process = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **service.env, "NO_GCE_CHECK": "True"},
                cwd=self.state_dir,
                start_new_session=True,
            )
        start = _proc_start_time(process.pid)
        self._pidfile(service).write_text(f"{process.pid} {start}\n")
        return process.pid

    def _wait_ready(self, service: Service, pid: int) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if service.ready():
                return
            if self.running_pid(service) != pid:
                self._pidfile(service).unlink(missing_ok=True)
                raise StackError(
                    f"{service.name}: exited before answering on port {service.port}; "
                    f"log {self._logfile(service)}:\n{_tail(self._logfile(service))}"
                )
            time.sleep(0.1)
        self._stop(service)
        raise StackError(
            f"{service.name}: did not answer on port {service.port} within {self.timeout:.0f} s; "
            f"log {self._logfile(service)}:\n{_tail(self._logfile(service))}"
        )

    def down(self, names: list[str] | None = None) -> None:
        """Stop the processes this stack started (and only those); data is kept.

        With ``names`` only those services stop, and their ports stay reserved for ``up``.
        """
        with self._locked():
            for service in self.select(names or []):
                self._stop(service)
            if not names:
                self._ports_file().unlink(missing_ok=True)

    def restart(self, names: list[str], *, down_seconds: float = 0.0) -> None:
        """Stop the named services, stay down ``down_seconds``, start them on the same data.

        The fault the resilience tests and operators rehearse: a broker that goes away (SIGTERM,
        as in a rolling restart) and comes back with its data on the same port.
        """
        self.down(names)
        if down_seconds > 0:
            _LOGGER.info("%s: down for %.0f s", ", ".join(names), down_seconds)
            time.sleep(down_seconds)
        self.up(names)

    def _stop(self, service: Service) -> None:
        pid = self.running_pid(service)
        if pid is None:
            self._pidfile(service).unlink(missing_ok=True)
            return
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, self.grace):
            _LOGGER.warning("%s: pid %d ignored SIGTERM; sending SIGKILL", service.name, pid)
            _signal_group(pid, signal.SIGKILL)
            if not _wait_gone(pid, self.grace):
                raise StackError(f"{service.name}: pid {pid} is still running after SIGKILL")
        self._pidfile(service).unlink(missing_ok=True)
        _LOGGER.info("%s: stopped (pid %d)", service.name, pid)

    def status(self) -> list[dict[str, object]]:
        rows = []
        for service in self.services:
            pid = self.running_pid(service)
            rows.append(
                {
                    "service": service.name,
                    "pid": pid,
                    "ports": list(service.ports),
                    "up": pid is not None and service.ready(),
                }
            )
        return rows

    def env(self) -> dict[str, str]:
        by_name = {service.name: service for service in self.services}
        kafka, bigquery, gcs = by_name["kafka"], by_name["bigquery"], by_name["gcs"]
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{kafka.port}",
            "KAFKA_CONFIG": ";".join(f"{k}={v}" for k, v in LOCAL_KAFKA_CONFIG.items()),
            "BIGQUERY_EMULATOR_HOST": f"http://{HOST}:{bigquery.port}",
            "STORAGE_EMULATOR_HOST": f"http://{HOST}:{gcs.port}",
            "GOOGLE_CLOUD_PROJECT": self.project,
            "NO_GCE_CHECK": "True",
            "MQTT_BROKER": f"mqtt://{HOST}:{by_name['mqtt'].port}",
            "KBML_MODEL_SERVER_URL": f"http://{HOST}:{by_name['model-server'].port}",
            "KBML_MODEL_NAME": MODEL_NAME,
            "KBML_MODEL_ROOT": str(self.model_root),
        }


def _find_python313() -> str:
    candidates = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        candidates.append(Path(root.stdout.strip()) / "versions" / "3.13.0" / "bin" / "python")
    candidates.append(Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python")
    for name in ("python3.13", "python3.14"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(
        "bigquery: local-bigquery needs Python >= 3.13 and none was found "
        "(looked for $(pyenv root)/versions/3.13.0 and python3.13 on PATH)"
    )


def _write_mosquitto_config(path: Path, port: int, data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_mosquitto_config(port, data))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the service's process group (its own session, so exactly what we started)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _proc_start_time(pid) is None and not _group_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is left in the process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="install, start and wait (idempotent)")
    up.add_argument(
        "services", nargs="*", help="kafka, bigquery, gcs, mqtt, model-server (default: all)"
    )
    up.add_argument(
        "--free-ports", action="store_true", help="move to free ports when a default one is taken"
    )
    commands.add_parser("install", help="install the servers without starting them")
    down = commands.add_parser("down", help="stop what this stack started")
    down.add_argument(
        "services", nargs="*", help="kafka, bigquery, gcs, mqtt, model-server (default: all)"
    )
    restart = commands.add_parser("restart", help="stop services, then start them on the same data")
    restart.add_argument("services", nargs="+", help="kafka, bigquery, gcs, mqtt, model-server")
    restart.add_argument(
        "--down-seconds", type=float, default=0.0, help="how long to stay down (default 0)"
    )
    status = commands.add_parser("status", help="show each service (exit 3 if one is down)")
    status.add_argument("--json", action="store_true", help="print a JSON list instead")
    env = commands.add_parser("env", help="print exports for clients")
    env.add_argument("--json", action="store_true", help="print a JSON object instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="stack: %(message)s", stream=sys.stderr)
    try:
        stack = Stack()
        if args.command == "up":
            stack.up(args.services, free_ports=args.free_ports)
        elif args.command == "install":
            stack.install()
        elif args.command == "down":
            stack.down(args.services)
        elif args.command == "restart":
            stack.restart(args.services, down_seconds=args.down_seconds)
        elif args.command == "status":
            rows = stack.status()
            if args.json:
                sys.stdout.write(json.dumps(rows) + "\n")
                return 0 if all(row["up"] for row in rows) else 3
            for row in rows:
                ports = ",".join(str(p) for p in row["ports"])
                state = "up" if row["up"] else "down"
                sys.stdout.write(
                    f"{row['service']:<9} pid={row['pid'] or '-':<8} port={ports:<11} {state}\n"
                )
            return 0 if all(row["up"] for row in rows) else 3
        else:
            values = stack.env()
            if args.json:
                sys.stdout.write(json.dumps(values) + "\n")
            else:
                for key, value in values.items():
                    sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
    except StackError as err:
        _LOGGER.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
