"""Run a pipeline to its end: restart a local stream after a fault, stop at once on a permanent one.

Dataflow and Flink retry a failed bundle themselves. The local runner does not: one exception —
a broker restart that broke the producer beyond what it repairs itself, a consumer error — ends
the whole run. :func:`run_pipeline` gives a local ``--streaming`` pipeline what a cluster would:
it builds and runs the pipeline again, which resumes from the consumer group's committed offsets
(committed only after durable output, so nothing is lost; the unfinished bundles are redone).

Errors no retry can fix end the run at once, on every runner, with exit code
:data:`EXIT_PERMANENT` and a message that names the setting or topic: authentication and
authorization failures, an unknown topic, invalid client configuration, an MQTT broker that
refuses the session or the subscription, a model server that does not know the model. A stream
that keeps failing (more than :data:`MAX_RESTARTS` restarts within :data:`RESTART_WINDOW_S`)
stops too, with the last error, so a supervisor above (systemd, Kubernetes) sees a non-zero exit
instead of a loop.

On a local runner it also keeps the :class:`~pipelines.common.watchdog.Watchdog` (progress
lines, exit on a stall) and the Prometheus endpoint
(:class:`~pipelines.common.metrics_server.MetricsServer`) running across restarts, and keeps the
runner's per-bundle metrics from growing without bound (:mod:`pipelines.common.bundle_metrics`)
and its bundle ends from idling up to 200 ms (:mod:`pipelines.common.state_sampler`);
elsewhere the runner's own monitoring applies.

Usage (a pipeline's ``run()``)::

    run_pipeline(lambda p: build_pipeline(p, opts), opts, name="score_events",
                 watchdog=watchdog_from_options(values))
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import apache_beam as beam
import confluent_kafka
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common import bundle_metrics, state_sampler
from pipelines.common.metrics_server import MetricsServer
from pipelines.common.options import OptionError
from pipelines.common.watchdog import Watchdog
from transforms.inference.model_server_handler import ModelServerError
from transforms.kafka.config import KafkaConfigError
from transforms.kafka.group_lease import ConsumerGroupInUseError
from transforms.mqtt.config import MqttConfigError
from transforms.mqtt.session import MqttPermanentError

__all__ = [
    "EXIT_PERMANENT",
    "MAX_RESTARTS",
    "RESTART_WINDOW_S",
    "permanent_reason",
    "run_pipeline",
]

_LOGGER = logging.getLogger(__name__)

#: Exit code of a run stopped by an error no retry can fix.
EXIT_PERMANENT = 2
#: Restarts allowed within :data:`RESTART_WINDOW_S` before a failing stream gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 20.0)

_LOCAL_RUNNERS = frozenset(
    {"DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}
)
_K = confluent_kafka.KafkaError
#: Kafka error codes that mean a setting, a credential or a topic is wrong.
_PERMANENT_CODES: dict[int, str] = {
    _K._AUTHENTICATION: "authentication failed: check --kafkaConfig's sasl.*/ssl.* settings",
    _K.SASL_AUTHENTICATION_FAILED: "SASL authentication failed: check sasl.username/password",
    _K._SSL: "SSL handshake failed: check the ssl.* settings of --kafkaConfig",
    _K.TOPIC_AUTHORIZATION_FAILED: "not authorized for the topic: check the principal's ACLs",
    _K.GROUP_AUTHORIZATION_FAILED: "not authorized for the consumer group (--consumerGroupId)",
    _K.CLUSTER_AUTHORIZATION_FAILED: "not authorized on the cluster: check the principal's ACLs",
    _K._UNKNOWN_TOPIC: "the topic does not exist: create it or fix the topic option",
    _K.UNKNOWN_TOPIC_OR_PART: "the topic does not exist: create it or fix the topic option",
    _K._INVALID_ARG: "invalid client configuration: check --kafkaConfig",
    _K.INVALID_CONFIG: "invalid configuration: check --kafkaConfig",
}
_REASON_BY_NAME = {_K(code).name(): reason for code, reason in _PERMANENT_CODES.items()}
#: The same errors where only their text survived (a writer's delivery report, a wrapped error).
_PERMANENT_TEXT = re.compile(
    r"\b(_?AUTHENTICATION|SASL_AUTHENTICATION_FAILED|_SSL|\w*_AUTHORIZATION_FAILED"
    r"|_UNKNOWN_TOPIC|UNKNOWN_TOPIC_OR_PART|INVALID_CONFIG)\b"
)


#: Errors of our own that say a setting is wrong (a model server's 404 included).
_PERMANENT_TYPES = (
    OptionError,
    KafkaConfigError,
    MqttConfigError,
    MqttPermanentError,
    ModelServerError,
    ConsumerGroupInUseError,  # another copy runs: stop it or choose another group
)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def permanent_reason(err: BaseException) -> str | None:
    """Why ``err`` cannot be fixed by running again, or None when a restart may help."""
    for cause in _chain(err):
        if isinstance(cause, _PERMANENT_TYPES):
            return str(cause)
        if isinstance(cause, confluent_kafka.KafkaException) and cause.args:
            error = cause.args[0]
            if isinstance(error, confluent_kafka.KafkaError) and error.code() in _PERMANENT_CODES:
                return f"{_PERMANENT_CODES[error.code()]} ({error.str()})"
        match = _PERMANENT_TEXT.search(str(cause))
        if match:
            reason = _REASON_BY_NAME.get(match.group(1), "a Kafka error no retry can fix")
            return f"{reason} ({_first_line(cause)})"
    return None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:500] if str(err).strip() else type(err).__name__


def _runs_locally(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return name is None or name.split(".")[-1] in _LOCAL_RUNNERS


def run_pipeline(
    build: Callable[[beam.Pipeline], Any],
    options: PipelineOptions,
    *,
    name: str,
    watchdog: Watchdog | None = None,
    metrics: MetricsServer | None = None,
    lease: AbstractContextManager | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Build ``build(p)`` on a new pipeline and run it until it ends (see the module docstring).

    ``lease`` (a :class:`~transforms.kafka.group_lease.GroupLease`) is held from before the
    first run until the last one ended, restarts included: a second copy is refused meanwhile.

    Raises ``SystemExit(EXIT_PERMANENT)`` on a permanent error, re-raises the last error when
    a local stream exhausts its restarts or any other runner fails.
    """
    with _stop_on_permanent(name), lease if lease is not None else nullcontext():
        _run_watched(
            build, options, name=name, watchdog=watchdog, metrics=metrics, clock=clock, sleep=sleep
        )


def _run_watched(
    build: Callable[[beam.Pipeline], Any],
    options: PipelineOptions,
    *,
    name: str,
    watchdog: Watchdog | None,
    metrics: MetricsServer | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    local = _runs_locally(options)
    if local:
        bundle_metrics.install()
        state_sampler.install()
    if metrics is not None and local:
        metrics.start()
    if watchdog is not None and local:
        watchdog.start()
    try:
        _run_with_restarts(
            build,
            options,
            name=name,
            restart=local and bool(options.view_as(StandardOptions).streaming),
            clock=clock,
            sleep=sleep,
        )
    finally:
        if watchdog is not None:
            watchdog.stop()
        if metrics is not None:
            metrics.stop()


def runner_for(options: PipelineOptions) -> beam.runners.PipelineRunner | None:
    """The runner to build the pipeline with; None lets Beam resolve ``--runner``'s name.

    - no ``--runner``, outside a Flex Template launcher: Beam's local FnApiRunner. Beam's
      default, the DirectRunner, first tries to download the Prism runner from GitHub (a
      run-time download; offline it fails after ~0.1 s and falls back to the FnApiRunner).
      In a launcher (``FLEX_TEMPLATE_PYTHON_PY_FILE`` set) the choice stays Dataflow's.
    - a DaskRunner: ours, imported only then (Dask's import is ~0.2 s of every other start-up).
    """
    runner = options.view_as(StandardOptions).runner
    if runner is None and not os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        _LOGGER.info("No --runner: running on Beam's local FnApiRunner")
        return FnApiRunner()
    if isinstance(runner, str) and runner.split(".")[-1] == "DaskRunner":
        from pipelines.common.dask_runner import DaskRunner

        return DaskRunner()
    return None


def _stop_if_permanent(err: Exception, name: str) -> None:
    """Log why and exit with :data:`EXIT_PERMANENT` when no restart can fix ``err``."""
    reason = permanent_reason(err)
    if reason is not None:
        _LOGGER.error("%s stopped: %s", name, reason)
        raise SystemExit(EXIT_PERMANENT) from err


@contextmanager
def _stop_on_permanent(name: str) -> Iterator[None]:
    """The same for errors outside the runs (taking the consumer group's lease)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless permanent
        _stop_if_permanent(err, name)
        raise


def _run_with_restarts(
    build: Callable[[beam.Pipeline], Any],
    options: PipelineOptions,
    *,
    name: str,
    restart: bool,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    restarts: deque[float] = deque()
    while True:
        try:
            with beam.Pipeline(runner=runner_for(options), options=options) as p:
                build(p)
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - classified below, never swallowed
            _stop_if_permanent(err, name)
            if not restart:
                raise
            now = clock()
            while restarts and now - restarts[0] > RESTART_WINDOW_S:
                restarts.popleft()
            if len(restarts) >= MAX_RESTARTS:
                _LOGGER.error(
                    "%s failed %d times within %.0f s; giving up. Last error: %s",
                    name,
                    len(restarts) + 1,
                    RESTART_WINDOW_S,
                    _first_line(err),
                )
                raise
            delay = _BACKOFF_S[min(len(restarts), len(_BACKOFF_S) - 1)]
            restarts.append(now)
            _LOGGER.warning(
                "%s failed (%s: %s); restarting from the committed offsets in %.0f s "
                "(restart %d of at most %d within %.0f s)",
                name,
                type(err).__name__,
                _first_line(err),
                delay,
                len(restarts),
                MAX_RESTARTS,
                RESTART_WINDOW_S,
            )
            sleep(delay)
