"""ModelServerHandler through ScoreEvents on in-memory pairs, against an in-process HTTP server.

The server here speaks the three REST protocols with the tiny model's formula (numpy), and can
fail on purpose (503s, a row it rejects, slow answers) — the failure paths a real server only
shows by accident. The real KServe server is in tests/integration/test_model_server.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score

from pipelines.common.model_source import MODEL_SOURCE, model_from_options
from pipelines.common.options import OptionError
from pipelines.common.supervisor import permanent_reason
from transforms.inference.model_server_handler import (
    ModelServerEndpoint,
    ModelServerError,
    ModelServerHandler,
    ModelServerUnavailable,
    fetch_features,
)
from transforms.inference.scoring import ScoreEvents
from transforms.kafka.record import KafkaRecord

THRESHOLD = 1.5
REJECTED_AMOUNT = -999.0  # the server answers 400 for a request holding a row with this Amount


class _Server:
    """A model server double: scores ``mean(x^2)``, counts requests and requests in flight."""

    def __init__(self) -> None:
        self.unavailable = 0  # answer this many predict requests with 503 first
        self.delay_s = 0.0
        self.with_threshold = True
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v2/models/anomaly":
                    inputs = [{"name": f, "datatype": "FP32", "shape": [-1]} for f in FEATURES]
                    self._answer(200, {"name": "anomaly", "inputs": inputs})
                else:
                    self._answer(404, {"error": f"no {self.path}"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    fail = server.unavailable > 0
                    server.unavailable -= fail
                try:
                    time.sleep(server.delay_s)
                    if fail:
                        answer = (503, {"error": "model anomaly is not ready"})
                    else:
                        answer = server.predict(self.path, body)
                finally:
                    # Before answering: once answered, the client's next request may arrive
                    # before this thread would get here, and count as one too many in flight.
                    with server._lock:
                        server.in_flight -= 1
                self._answer(*answer)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def predict(self, path: str, body: dict) -> tuple[int, dict]:
        if path == "/v2/models/anomaly/infer":
            columns = {t["name"]: t["data"] for t in body["inputs"]}
        elif path == "/v1/models/anomaly:predict" and "instances" in body:
            columns = {f: [row[f] for row in body["instances"]] for f in FEATURES}
        elif path == "/v1/models/anomaly:predict":
            columns = body["inputs"]
        else:
            return 404, {"error": f"Model with name {path} does not exist."}
        if REJECTED_AMOUNT in columns["Amount"]:
            return 400, {"error": "Amount must be >= 0"}
        matrix = np.array([columns[f] for f in FEATURES], np.float32).T
        scores = np.mean(np.square(matrix), axis=1).tolist()
        outputs = {"score": scores, "is_anomaly": [s > THRESHOLD for s in scores]}
        if self.with_threshold:
            outputs["threshold"] = [THRESHOLD] * len(scores)
            outputs["model_version"] = [7] * len(scores)
        if path.startswith("/v2"):
            tensors = [{"name": n, "shape": [len(v)], "data": v} for n, v in outputs.items()]
            return 200, {"model_name": "anomaly", "outputs": tensors}
        if "instances" in body:
            rows = [
                dict(zip(outputs, values, strict=True))
                for values in zip(*outputs.values(), strict=True)
            ]
            return 200, {"predictions": rows}
        return 200, {"outputs": outputs}

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


FEATURES = CREDITCARD_FEATURES


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _Server()
    yield server
    server.close()


def _pair(offset: int, value: float, **fields: Any) -> tuple[KafkaRecord, dict]:
    row = {name: value for name in FEATURES} | fields
    row["event_id"] = f"ev-{offset}"
    record = KafkaRecord("tx", 0, offset, b"k", json.dumps(row).encode(), 1_790_000_000_000)
    return record, row


def _handler(server: _Server, protocol: str = "v2", **kwargs: Any) -> ModelServerHandler:
    return ModelServerHandler(ModelServerEndpoint(server.url, "anomaly", None, protocol), **kwargs)


def _assert_scored(handler: ModelServerHandler, pairs: list) -> None:
    """Every pair becomes the prediction the tiny model's formula gives; no dead letters."""
    expected = [
        (row["event_id"], round(expected_score(row), 5), expected_score(row) > THRESHOLD, 7)
        for _, row in pairs
    ]
    with TestPipeline() as p:
        scored = p | beam.Create(pairs) | ScoreEvents(handler, max_batch_wait_s=None)
        predictions = scored.predictions | "P" >> beam.Map(
            lambda x: (x.event_id, round(x.score, 5), x.is_anomaly, x.model_version)
        )
        assert_that(predictions, equal_to(expected), label="predictions")
        assert_that(scored.dead_letters, equal_to([]), label="letters")


@pytest.mark.parametrize("protocol", ["v2", "v1-row", "v1-columnar"])
def test_each_protocol_scores_every_event_like_the_model(server: _Server, protocol: str) -> None:
    pairs = [_pair(i, (i % 7) * 0.4) for i in range(300)]
    _assert_scored(_handler(server, protocol, max_batch_size=64), pairs)
    assert server.requests == 5  # 300 rows in requests of at most 64


def test_a_row_the_server_rejects_is_dead_lettered_with_its_reason(server: _Server) -> None:
    pairs = [_pair(i, 0.5) for i in range(40)]
    pairs[13] = _pair(13, 0.5, Amount=REJECTED_AMOUNT)
    pairs[29] = _pair(29, 0.5, V1="not a number")
    with TestPipeline() as p:
        scored = p | beam.Create(pairs) | ScoreEvents(_handler(server), max_batch_wait_s=None)
        letters = scored.dead_letters | beam.Map(
            lambda d: (d.offset, d.error_type, d.error_message)
        )
        count = scored.predictions | beam.combiners.Count.Globally()
        assert_that(count, equal_to([38]), label="count")
        assert_that(
            letters,
            equal_to(
                [
                    (13, "RejectedByServer", "model server rejected the row: Amount must be >= 0"),
                    (
                        29,
                        "FeatureError",
                        "a feature is not a number: could not convert string to float: "
                        "'not a number'",
                    ),
                ]
            ),
            label="letters",
        )


def test_a_batch_the_server_fails_is_retried(server: _Server) -> None:
    server.unavailable = 1
    pairs = [_pair(i, 1.0) for i in range(20)]
    _assert_scored(_handler(server, num_retries=2), pairs)
    assert server.requests == 2


def test_a_server_that_stays_down_fails_the_pipeline_naming_it(server: _Server) -> None:
    server.unavailable = 10**6
    handler = _handler(server, num_retries=0)
    with pytest.raises(
        Exception,
        match=r"model server http://127\.0\.0\.1:\d+/v2/models/anomaly"
        r"/infer answered HTTP 503: model anomaly is not ready",
    ):
        with TestPipeline() as p:
            _ = p | beam.Create([_pair(0, 1.0)]) | ScoreEvents(handler)


def test_no_server_listening_fails_with_a_connection_message() -> None:
    endpoint = ModelServerEndpoint("http://127.0.0.1:9", "anomaly", timeout_s=1)
    handler = ModelServerHandler(endpoint, features=FEATURES, num_retries=0)
    with pytest.raises(
        Exception,
        match=r"model server http://127\.0\.0\.1:9/v2/models/anomaly"
        r"/infer did not answer",
    ):
        with TestPipeline() as p:
            _ = p | beam.Create([_pair(0, 1.0)]) | ScoreEvents(handler)


def test_requests_in_flight_stay_bounded(server: _Server) -> None:
    server.delay_s = 0.05
    client = _handler(server, max_batch_size=10, max_in_flight=3).create_client()
    verdicts = client.verdicts([_pair(i, 1.0)[1] for i in range(200)])
    assert verdicts.errors == {} and len(verdicts.scores) == 200
    assert server.requests == 20
    assert 1 < server.max_in_flight <= 3


def test_an_answer_without_a_threshold_needs_the_option(server: _Server) -> None:
    server.with_threshold = False
    rows = [_pair(i, 2.0)[1] for i in range(3)]
    with pytest.raises(ModelServerError, match="no 'threshold' output; set the threshold"):
        _handler(server).create_client().verdicts(rows)
    verdicts = _handler(server, threshold=3.0).create_client().verdicts(rows)
    assert verdicts.thresholds == [3.0] * 3 and verdicts.is_anomaly == [True] * 3
    assert verdicts.model_versions == [-1] * 3  # no version in the answer or the endpoint


def test_an_unknown_model_is_an_error_not_a_dead_letter(server: _Server) -> None:
    endpoint = ModelServerEndpoint(server.url, "nosuch")
    with pytest.raises(ModelServerError, match="cannot read the inputs of model 'nosuch'"):
        fetch_features(endpoint)
    handler = ModelServerHandler(endpoint, features=FEATURES)
    with pytest.raises(ModelServerError, match="answered HTTP 404"):
        handler.create_client().verdicts([_pair(0, 1.0)[1]])


def _values(**overrides: Any) -> dict[str, Any]:
    return {option.name: option.default for option in MODEL_SOURCE} | overrides


def test_model_options_need_exactly_one_model_and_a_server_that_answers(server: _Server) -> None:
    with pytest.raises(OptionError, match="exactly one of --modelPath"):
        model_from_options(_values(), FEATURES)
    with pytest.raises(OptionError, match="exactly one of --modelPath"):
        model_from_options(_values(modelPath="/m", modelServerUrl=server.url), FEATURES)
    with pytest.raises(OptionError, match=r"--modelServerUrl='http://127.0.0.1:9'.*did not answer"):
        model_from_options(_values(modelServerUrl="http://127.0.0.1:9"), FEATURES)
    with pytest.raises(OptionError, match=r"needs features \['Amount'\]"):
        model_from_options(_values(modelServerUrl=server.url), FEATURES[:-1])
    choice = model_from_options(_values(modelServerUrl=server.url), FEATURES)
    assert choice.features == FEATURES and choice.id_field == "event_id"
    assert isinstance(choice.handler, ModelServerHandler)


def test_an_unknown_model_stops_a_local_stream_but_an_unavailable_server_restarts_it() -> None:
    assert permanent_reason(ModelServerError("answered HTTP 404")) == "answered HTTP 404"
    assert permanent_reason(ModelServerUnavailable("answered HTTP 503")) is None
