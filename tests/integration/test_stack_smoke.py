"""The local stack works as a user needs it: broker, BigQuery and GCS emulators, and the script.

Script lifecycle tests run a second stack on private ports in a temp dir, never the shared one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Consumer, Producer, TopicPartition

from transforms.kafka.config import LOCAL_BROKER_SETTINGS, parse_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"
PORT_VARS = (
    "KBML_KAFKA_PORT",
    "KBML_BIGQUERY_PORT",
    "KBML_BIGQUERY_GRPC_PORT",
    "KBML_GCS_PORT",
    "KBML_MQTT_PORT",
    "KBML_MODEL_SERVER_PORT",
)


def _run_stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(STACK), *args],
        capture_output=True,
        text=True,
        env={**_without_stack_vars(os.environ), "KBML_PYTHON": sys.executable, **env},
        timeout=300,
        check=False,
    )


def _without_stack_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus KBML_* overrides, so each test states the ones it means."""
    return {k: v for k, v in environ.items() if not k.startswith("KBML_")}


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


# -- the shared stack, through ordinary clients --------------------------------------------------


def test_env_matches_the_broker_settings(stack_env):
    assert dict(parse_settings(stack_env["KAFKA_CONFIG"])) == dict(LOCAL_BROKER_SETTINGS)
    assert stack_env["BIGQUERY_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    assert stack_env["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
    assert os.environ["GOOGLE_CLOUD_PROJECT"] == stack_env["GOOGLE_CLOUD_PROJECT"]


def test_kafka_produce_consume_commit_committed(
    kafka_config, kafka_bootstrap, topic_factory, group_id
):
    topic = topic_factory(partitions=3)
    producer = Producer(kafka_config.producer_dict())
    sent = {(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)}
    for key, value in sent:
        producer.produce(topic, value=value, key=key, headers=[("h", b"1")])
    assert producer.flush(10) == 0

    settings = {
        **kafka_config.consumer_dict(group_id),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
    }
    consumer = Consumer(settings)
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        for message in consumer.consume(100, 1.0):
            assert message.error() is None, message.error()
            got.append(message)
    assert {(m.key(), m.value()) for m in got} == sent
    assert all(m.headers() == [("h", b"1")] for m in got)
    consumer.commit(asynchronous=False)
    ends = {}
    for p in range(3):
        ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    consumer.close()
    assert sum(ends.values()) == len(sent)

    # A new member of the group resumes from what the first one committed.
    second = Consumer(settings)
    committed = second.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    second.close()
    assert {tp.partition: tp.offset for tp in committed} == ends

    # kcat, an independent client, sees the same messages.
    kcat = subprocess.run(
        ["kcat", "-b", kafka_bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%k=%s\n"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert set(kcat.stdout.split()) == {f"{k.decode()}={v.decode()}" for k, v in sent}


def test_bigquery_emulator_table_insert_query(bq_client, bq_dataset, gcp_endpoints):
    from google.cloud import bigquery

    retry = gcp_endpoints.bigquery_retry
    table_id = f"{gcp_endpoints.project}.{bq_dataset}.events"
    table = bigquery.Table(
        table_id,
        schema=[
            bigquery.SchemaField("id", "INTEGER", mode="REQUIRED"),
            bigquery.SchemaField("amount", "FLOAT"),
            bigquery.SchemaField("ts", "TIMESTAMP"),
        ],
    )
    bq_client.create_table(table, retry=retry)
    rows = [
        {"id": 1, "amount": 2.5, "ts": "2026-11-01T00:00:00Z"},
        {"id": 2, "amount": 7.5, "ts": "2026-11-01T00:00:01Z"},
    ]
    assert bq_client.insert_rows_json(table_id, rows, retry=retry) == []
    errors = bq_client.insert_rows_json(table_id, [{"id": "not-a-number"}], retry=retry)
    assert errors and errors[0]["errors"][0]["reason"] == "invalid"

    result = bq_client.query(
        f"SELECT COUNT(*) AS n, SUM(amount) AS total FROM `{table_id}`", retry=retry
    ).result()
    assert [(r.n, r.total) for r in result] == [(2, 10.0)]


def test_gcs_emulator_through_beam_filesystems(stack_env, gcs_bucket):
    import google.auth

    # Beam's gs:// filesystem finds credentials at once (no ~17.5 s anonymous fallback).
    credentials, _ = google.auth.default()
    assert credentials.valid

    FileSystems.set_options(PipelineOptions([]))
    path = f"{gcs_bucket}/dir/hello.txt"
    with FileSystems.create(path) as out:
        out.write(b"hello emulator\n")
    assert [m.path for m in FileSystems.match([f"{gcs_bucket}/dir/*"])[0].metadata_list] == [path]
    with FileSystems.open(path) as handle:
        assert handle.read() == b"hello emulator\n"
    FileSystems.delete([path])
    assert not FileSystems.exists(path)


@pytest.mark.parametrize("method", ["STREAMING_INSERTS", "FILE_LOADS"])
def test_beam_write_to_bigquery_emulator(method, gcp_endpoints, bq_client, bq_dataset, gcs_bucket):
    """Beam's BigQuery sink reaches the emulator through GcpEndpoints.beam_bigquery_client()."""
    table = f"{gcp_endpoints.project}:{bq_dataset}.t"
    rows = [{"id": i, "name": f"n{i}"} for i in range(20)]
    bad = [{"id": "bad", "name": "x"}] if method == "STREAMING_INSERTS" else []
    options = PipelineOptions(
        ["--project", gcp_endpoints.project, "--temp_location", f"{gcs_bucket}/tmp"]
    )
    with beam.Pipeline(options=options) as p:
        result = (
            p
            | beam.Create(rows + bad)
            | beam.io.WriteToBigQuery(
                table,
                schema="id:INTEGER,name:STRING",
                method=method,
                insert_retry_strategy="RETRY_NEVER",
                test_client=gcp_endpoints.beam_bigquery_client(),
            )
        )
        if bad:
            failed = result.failed_rows_with_errors | beam.Map(lambda r: r[1])
            assert_that(failed, equal_to(bad))
    query = f"SELECT COUNT(*) AS n FROM `{gcp_endpoints.project}.{bq_dataset}.t`"
    assert [r.n for r in bq_client.query(query, retry=gcp_endpoints.bigquery_retry).result()] == [
        20
    ]


# -- the script itself, on a private stack ------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the private dev ports may be in use by other engineers)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def private_env(tmp_path):
    """Env for a second stack on free ports with its state in a temp dir; stopped afterwards."""
    ports = dict(zip(PORT_VARS, map(str, _free_ports(len(PORT_VARS))), strict=True))
    env = {**ports, "KBML_STACK_DIR": str(tmp_path / "stack")}
    yield env
    _run_stack(env, "down")


def test_up_is_idempotent_and_down_leaves_nothing(private_env):
    up = _run_stack(private_env, "up")
    assert up.returncode == 0, up.stderr
    status = json.loads(_run_stack(private_env, "status", "--json").stdout)
    assert [(s["service"], s["up"]) for s in status] == [
        ("kafka", True),
        ("bigquery", True),
        ("gcs", True),
        ("mqtt", True),
        ("model-server", True),
    ]
    pids = {s["service"]: s["pid"] for s in status}
    assert {s["service"]: s["ports"] for s in status} == {
        "kafka": [int(private_env["KBML_KAFKA_PORT"])],
        "bigquery": [
            int(private_env["KBML_BIGQUERY_PORT"]),
            int(private_env["KBML_BIGQUERY_GRPC_PORT"]),
        ],
        "gcs": [int(private_env["KBML_GCS_PORT"])],
        "mqtt": [int(private_env["KBML_MQTT_PORT"])],
        "model-server": [int(private_env["KBML_MODEL_SERVER_PORT"])],
    }

    again = _run_stack(private_env, "up")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already up") == 5
    assert {
        s["service"]: s["pid"]
        for s in json.loads(_run_stack(private_env, "status", "--json").stdout)
    } == pids

    down = _run_stack(private_env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids.values())
    assert _processes_mentioning(private_env["KBML_STACK_DIR"]) == []
    after = _run_stack(private_env, "status", "--json")
    assert after.returncode == 3
    assert all(s["pid"] is None and not s["up"] for s in json.loads(after.stdout))
    for var in PORT_VARS:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(private_env[var]))) != 0


def test_taken_port_is_a_clear_error(private_env):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = _run_stack({**private_env, "KBML_BIGQUERY_PORT": str(port)}, "up")
    assert result.returncode == 1
    assert f"bigquery: port {port} on 127.0.0.1 is already in use" in result.stderr
    # Nothing was started: ports are checked before any service starts.
    assert not list((Path(private_env["KBML_STACK_DIR"]) / "run").glob("*.pid"))


def _fake_bigquery_venv(path: Path, server_script: str, monkeypatch) -> Path:
    """A BigQuery venv whose ``local-bigquery`` is ``server_script``, marked as installed."""
    spec = importlib.util.spec_from_file_location("local_stack", REPO / "scripts/local_stack.py")
    local_stack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "local_stack", local_stack)
    spec.loader.exec_module(local_stack)
    (path / "bin").mkdir(parents=True)
    (path / ".kbml-installed").write_text("\n".join(local_stack.BIGQUERY_PINS))
    server = path / "bin" / "local-bigquery"
    server.write_text(server_script)
    server.chmod(0o755)
    return path


# Answers every GET with 200 on --port, ignores SIGTERM, and has a child in its process group.
_STUBBORN_SERVER = f"""#!{sys.executable}
import http.server, signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "300"])
print("child", child.pid, flush=True)
port = int(sys.argv[sys.argv.index("--port") + 1])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever()
"""


def test_down_kills_a_service_that_ignores_sigterm_and_its_children(
    private_env, tmp_path, monkeypatch
):
    venv = _fake_bigquery_venv(tmp_path / "stubborn-venv", _STUBBORN_SERVER, monkeypatch)
    env = {**private_env, "KBML_BIGQUERY_VENV": str(venv), "KBML_STACK_GRACE": "1"}
    up = _run_stack(env, "up", "bigquery")
    assert up.returncode == 0, up.stderr
    (status,) = [
        s
        for s in json.loads(_run_stack(env, "status", "--json").stdout)
        if s["service"] == "bigquery"
    ]
    log = Path(private_env["KBML_STACK_DIR"]) / "logs" / "bigquery.log"
    child = int(log.read_text().split("child ")[1].split()[0])
    assert _alive(status["pid"]) and _alive(child)

    down = _run_stack(env, "down")
    assert down.returncode == 0, down.stderr
    assert "ignored SIGTERM; sending SIGKILL" in down.stderr
    assert not _alive(status["pid"]) and not _alive(child)


def test_service_that_exits_is_named_with_its_log(private_env, tmp_path, monkeypatch):
    venv = _fake_bigquery_venv(
        tmp_path / "broken-venv",
        "#!/bin/sh\necho 'cannot open database: disk on fire' >&2\nexit 2\n",
        monkeypatch,
    )
    result = _run_stack({**private_env, "KBML_BIGQUERY_VENV": str(venv)}, "up", "bigquery")
    assert result.returncode == 1
    port = private_env["KBML_BIGQUERY_PORT"]
    assert f"bigquery: exited before answering on port {port}" in result.stderr
    assert "disk on fire" in result.stderr


def test_free_ports_moves_off_a_taken_port(private_env):
    state = Path(private_env["KBML_STACK_DIR"])
    (state / "run").mkdir(parents=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # Remembered ports (what an earlier `up --free-ports` chose) apply unless pinned by env.
        (state / "run" / "ports.json").write_text(
            json.dumps(
                {**{var: int(private_env[var]) for var in PORT_VARS}, "KBML_GCS_PORT": taken}
            )
        )
        env = {"KBML_STACK_DIR": str(state)}
        refused = _run_stack(env, "up", "gcs")
        assert refused.returncode == 1
        assert f"gcs: port {taken} on 127.0.0.1 is already in use" in refused.stderr

        moved = _run_stack(env, "up", "--free-ports", "gcs")
        assert moved.returncode == 0, moved.stderr
        endpoint = json.loads(_run_stack(env, "env", "--json").stdout)["STORAGE_EMULATOR_HOST"]
    assert endpoint.startswith("http://127.0.0.1:") and not endpoint.endswith(f":{taken}")
    status = json.loads(_run_stack(env, "status", "--json").stdout)
    assert [s["up"] for s in status if s["service"] == "gcs"] == [True]
    assert _run_stack(env, "down").returncode == 0
    assert not (state / "run" / "ports.json").exists()
