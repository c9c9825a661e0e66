"""run_pipeline: local streams restart after a fault, permanent errors stop at once."""

from __future__ import annotations

import apache_beam as beam
import confluent_kafka
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import supervisor
from pipelines.common.options import OptionError
from pipelines.common.supervisor import EXIT_PERMANENT, permanent_reason, run_pipeline
from transforms.kafka.writer import KafkaWriteError

K = confluent_kafka.KafkaError


#: Errors the next runs raise, and the runs seen: module state, since each run pickles its DoFn.
_ERRORS: list[BaseException] = []
_RUNS: list[int] = []


class _FailingStep(beam.DoFn):
    """Raises the next error of ``_ERRORS`` until it is empty."""

    def process(self, element):
        _RUNS.append(element)
        if _ERRORS:
            raise _ERRORS.pop(0)
        yield element


def _run(errors, *, streaming=True, runner="FnApiRunner"):
    _ERRORS[:] = errors
    _RUNS.clear()
    sleeps: list[float] = []
    clock = iter(range(0, 10_000, 10))
    options = PipelineOptions([f"--runner={runner}", *(["--streaming"] if streaming else [])])

    def build(p):
        _ = p | beam.Create([1]) | beam.ParDo(_FailingStep())

    run_pipeline(build, options, name="test", clock=lambda: float(next(clock)), sleep=sleeps.append)
    return list(_RUNS), sleeps


def test_a_local_stream_is_run_again_after_a_fault():
    timed_out = KafkaWriteError("3 of 9 messages were not delivered: _MSG_TIMED_OUT")
    runs, sleeps = _run([timed_out, RuntimeError("consumer went away")])
    assert len(runs) == 3  # two failed runs, then one that ends normally
    assert sleeps == [1.0, 2.0]  # backing off


def test_a_batch_run_fails_without_restarting():
    with pytest.raises(Exception, match="boom"):
        _run([RuntimeError("boom")], streaming=False)


def test_a_stream_that_keeps_failing_gives_up_after_the_restart_budget():
    errors = [RuntimeError(f"fault {i}") for i in range(supervisor.MAX_RESTARTS + 1)]
    with pytest.raises(Exception, match=f"fault {supervisor.MAX_RESTARTS}"):
        _run(errors)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            confluent_kafka.KafkaException(K(K.TOPIC_AUTHORIZATION_FAILED, "denied")),
            "not authorized for the topic",
        ),
        (
            confluent_kafka.KafkaException(K(K.SASL_AUTHENTICATION_FAILED, "bad password")),
            "SASL authentication failed",
        ),
        (
            confluent_kafka.KafkaException(K(K._UNKNOWN_TOPIC, "Unknown topic")),
            "topic does not exist",
        ),
        (
            KafkaWriteError("2 of 2 messages were not delivered; errors: UNKNOWN_TOPIC_OR_PART"),
            "UNKNOWN_TOPIC_OR_PART",
        ),
        (OptionError("--inputTopic is required"), "--inputTopic is required"),
    ],
)
def test_errors_no_retry_can_fix_are_named(error, reason):
    assert reason in permanent_reason(error)


def test_transient_errors_are_not_permanent():
    assert permanent_reason(confluent_kafka.KafkaException(K(K._TRANSPORT, "down"))) is None
    assert permanent_reason(KafkaWriteError("had no delivery report after 310 s")) is None


def test_a_permanent_error_wrapped_by_the_runner_is_still_found():
    try:
        try:
            raise confluent_kafka.KafkaException(K(K.GROUP_AUTHORIZATION_FAILED, "no"))
        except confluent_kafka.KafkaException as inner:
            raise RuntimeError("bundle failed") from inner
    except RuntimeError as outer:
        assert "consumer group" in permanent_reason(outer)


def test_a_permanent_error_exits_at_once_with_its_code(caplog):
    error = confluent_kafka.KafkaException(K(K.TOPIC_AUTHORIZATION_FAILED, "denied"))
    with pytest.raises(SystemExit) as exited:
        _run([error])
    assert exited.value.code == EXIT_PERMANENT
    assert "not authorized for the topic" in caplog.text


def test_without_a_runner_the_local_fnapi_runner_is_used_not_a_prism_download(monkeypatch):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    monkeypatch.delenv("FLEX_TEMPLATE_PYTHON_PY_FILE", raising=False)
    assert type(supervisor.runner_for(PipelineOptions([]))) is FnApiRunner
    monkeypatch.setenv("FLEX_TEMPLATE_PYTHON_PY_FILE", "/template/main.py")
    assert supervisor.runner_for(PipelineOptions([])) is None  # Dataflow's launcher decides
    assert supervisor.runner_for(PipelineOptions(["--runner=DirectRunner"])) is None  # as asked
    assert type(supervisor.runner_for(PipelineOptions(["--runner=DaskRunner"]))).__name__ == (
        "DaskRunner"
    )
