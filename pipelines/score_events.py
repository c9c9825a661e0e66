"""Live scoring: Kafka events → decode/validate → model → predictions (and alerts) back to Kafka.

``inputTopic`` → :class:`~transforms.decoding.decode.DecodeAndValidate` (bad messages to
``deadLetterTopic`` as ``DeadLetter.to_json()``) → RunInference with
:class:`~transforms.inference.model_handler.SavedModelHandler` (or, with ``--modelServerUrl``,
:class:`~transforms.inference.model_server_handler.ModelServerHandler` on a model server) → one
JSON prediction per event on ``outputTopic``, keyed like the input; anomalies also on
``alertTopic``. The newest model version under ``modelPath`` is loaded at start and a newer one
is picked up every ``modelPollSeconds`` without a restart (a model server does the same for
its own models). A model server that stays down past ``modelServerRetries`` fails the pipeline
with the server's URL and error. Offsets are committed after the outputs are written: at-least-once.

No record can fail a bundle for its size: a prediction or alert too big for its topic
(``message.max.bytes``/``max.message.bytes``, read at set-up) becomes a dead letter (stage
``"size"``), and dead-letter payloads are cut to ``--deadLetterMaxPayloadBytes`` and to what the
dead-letter topic accepts (docs/scoring.md, "Message size limits").

Run locally (streaming on the FnApiRunner; see docs/scoring.md)::

    python -m pipelines.score_events --runner=FnApiRunner --streaming \\
        --bootstrapServers=127.0.0.1:9092 --inputTopic=transactions \\
        --outputTopic=predictions --alertTopic=alerts --deadLetterTopic=scoring-dead-letters \\
        --schemaPath=transforms/decoding/schemas/creditcard.json \\
        --modelPath=/tmp/models/fraud --consumerGroupId=scorer --startOffset=latest

On a model server (e.g. the local stack's, ``scripts/stack.sh env`` prints its URL) instead of
``--modelPath``: ``--modelServerUrl=http://127.0.0.1:8085 --modelName=anomaly
--modelServerProtocol=v2`` (docs/scoring.md, "Embedded model or model server").

Without ``--streaming`` it scores the backlog present at launch and ends (batch).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common.metrics_server import metrics_server_from_options
from pipelines.common.model_source import MODEL_SOURCE, model_from_options, preload_tensorflow
from pipelines.common.options import (
    Option,
    OptionError,
    options_class,
    parse_and_validate,
    validate,
)
from pipelines.common.row_source import ROW_SOURCE, DecodedRows, RowSource, group_lease
from pipelines.common.supervisor import run_pipeline
from pipelines.common.watchdog import watchdog_from_options
from transforms.dead_letter import DeadLetter
from transforms.inference.scoring import (
    PREDICTION_KEY,
    Prediction,
    PredictionJson,
    ScoreEvents,
    ScoringResult,
)
from transforms.kafka.config import redact_option_values
from transforms.kafka.limits import TopicRecordLimit
from transforms.kafka.writer import WriteToKafka
from transforms.size_limits import (
    KEY,
    VALUE,
    EncodeWithinLimit,
    FitDeadLetters,
    kafka_dead_letter_bytes,
)

__all__ = ["OPTIONS", "ScoreEventsOptions", "build_pipeline", "run"]

_LOGGER = logging.getLogger(__name__)

_TOPIC = r"[A-Za-z0-9._\-]{1,249}"

OPTIONS: tuple[Option, ...] = (
    *ROW_SOURCE,
    Option(
        "outputTopic",
        "Prediction topic",
        "Kafka topic for one JSON prediction per event (key = the input's key).",
        required=True,
        regexes=(_TOPIC,),
        example="predictions",
        param_type="KAFKA_TOPIC",
    ),
    Option(
        "alertTopic",
        "Alert topic",
        "Kafka topic that also receives the predictions flagged as anomalies. Unset: no alerts.",
        regexes=(_TOPIC,),
        example="fraud-alerts",
        param_type="KAFKA_TOPIC",
    ),
    Option(
        "deadLetterTopic",
        "Dead-letter topic",
        "Kafka topic for events that cannot be decoded, validated or scored, as JSON dead-letter "
        "records with the raw payload. Unset: they are counted and logged (without payload).",
        regexes=(_TOPIC,),
        example="scoring-dead-letters",
        param_type="KAFKA_TOPIC",
    ),
    *MODEL_SOURCE,
    Option(
        "predictionFields",
        "Prediction fields",
        "Comma-separated fields of the JSON predictions and alerts, in this order (default: "
        f"all of {','.join(Prediction._fields)}). A lean record such as "
        "event_id,score,is_anomaly is a third of the bytes and cheaper to encode.",
        regexes=(r"[a-z_]+(,[a-z_]+)*",),
        example="event_id,score,is_anomaly",
    ),
)

ScoreEventsOptions = options_class("ScoreEventsOptions", OPTIONS)

#: Streaming latency budget: longest an event waits for its batch (see ScoreEvents) and longest
#: reader bundle (ReadFromKafka's 1 s default cost ~1-2 s end to end on the local runner).
_STREAM_BATCH_WAIT_S = 0.05
_STREAM_BUNDLE_S = 0.1
#: Rows per model call. A call costs ~0.2 ms plus ~0.3 µs a row here (30-feature autoencoder),
#: and each batch pays Beam's per-element hops from the model to the producer: a batch job
#: scores the backlog in large calls; a stream keeps calls short for latency.
_STREAM_MODEL_ROWS = 1024
_BATCH_MODEL_ROWS = 4096

#: Dead letters keep the input event's Kafka key (predictions and alerts too: PREDICTION_KEY).
_KEY = operator.attrgetter("key")


def _log_dead_letter(letter: DeadLetter) -> None:
    _LOGGER.warning(
        "dead letter (no --deadLetterTopic): %s %s at %s[%s]@%s: %s",
        letter.stage,
        letter.error_type,
        letter.topic,
        letter.partition,
        letter.offset,
        letter.error_message,
    )


def build_pipeline(
    p: beam.Pipeline,
    opts: PipelineOptions,
    *,
    model_handler: ModelHandler | None = None,
) -> tuple[DecodedRows, ScoringResult]:
    """Add the scoring graph to ``p``; returns the decoded and scored outputs (for tests).

    Unless ``--filter`` is set, the decoded ``rows`` are lists of ``(KafkaRecord, row)`` pairs
    and the scored predictions and alerts lists of :class:`Prediction`.

    With ``--streaming`` the read is unbounded (live scoring); without it the backlog present
    at launch is scored and the pipeline ends. ``model_handler`` replaces the handler built
    from the options (the benchmark compares Beam's stock handler; see :class:`ScoreEvents` for
    the contract).
    """
    source = RowSource.from_options(opts, OPTIONS)
    values = source.values
    model = model_from_options(values, source.schema)
    fields = values["predictionFields"]
    try:
        prediction_json = PredictionJson(fields.split(",") if fields else None)
    except ValueError as err:
        raise OptionError(f"--predictionFields={fields!r}: {err}") from err
    config = source.kafka
    # Streaming: short reader bundles, since on the local runner outputs leave about a bundle late.
    # A batch re-score keeps the batch default (long bundles: each end waits for the acks).
    reader_options = {"max_process_s": _STREAM_BUNDLE_S} if source.streaming else {}
    # Lists from the reader to the producer (a list per poll, then per model call): Beam's
    # per-element cost between steps was most of the scorer's time. --filter works row by row,
    # so it reads unbatched.
    batched = source.row_filter is None
    decoded = source.read_and_decode(
        p, with_records=True, batched=batched, columnar=batched, **reader_options
    )
    # A stream bounds the wait for a batch (latency); a batch job fills batches (throughput).
    scorer = ScoreEvents(
        model_handler or model.handler,
        id_field=model.id_field,
        max_batch_wait_s=_STREAM_BATCH_WAIT_S if source.streaming else None,
        max_batch_size=_STREAM_MODEL_ROWS if source.streaming else _BATCH_MODEL_ROWS,
    )
    scored = decoded.rows | "ScoreEvents" >> (scorer.batched() if batched else scorer)

    # Each output is encoded once and checked against its topic's record limit (read from the
    # broker when the step is set up): a record too big for it becomes a dead letter instead of
    # failing the bundle. An alert is also a prediction: one too big for the prediction topic
    # is dead-lettered there only.
    output_limit = TopicRecordLimit(config, values["outputTopic"])
    size_dead_letters = []
    for name, topic, predictions, covered in (
        ("Predictions", values["outputTopic"], scored.predictions, None),
        ("Alerts", values["alertTopic"], scored.alerts, output_limit),
    ):
        if topic:
            encode = EncodeWithinLimit(
                TopicRecordLimit(config, topic),
                key_fn=PREDICTION_KEY,
                value_fn=prediction_json,
                covered_above=covered,
            )
            sized = predictions | f"Size{name}" >> (encode.batched() if batched else encode)
            sink = WriteToKafka(config, topic, key_fn=KEY, value_fn=VALUE)
            _ = sized.records | f"Write{name}" >> (sink.batched() if batched else sink)
            size_dead_letters.append((f"{name}Size", sized.dead_letters))
    # Each dead-letter stream is written on its own: a Flatten of them would be a stage of its
    # own on the local FnApiRunner, which then only runs when the stream ends.
    dead_letter_topic = values["deadLetterTopic"]
    for name, letters in (
        ("Decode", decoded.dead_letters),
        ("Score", scored.dead_letters),
        *size_dead_letters,
    ):
        if dead_letter_topic:
            fit = FitDeadLetters(
                values["deadLetterMaxPayloadBytes"],
                limit=TopicRecordLimit(config, dead_letter_topic),
                record_bytes=kafka_dead_letter_bytes,
            )
            _ = (
                letters
                | f"Fit{name}DeadLetters" >> fit
                | f"Write{name}DeadLetters"
                >> WriteToKafka(config, dead_letter_topic, key_fn=_KEY, value_fn=DeadLetter.to_json)
            )
        else:
            _ = letters | f"Log{name}DeadLetters" >> beam.Map(_log_dead_letter)
    return decoded, scored


def run(argv: Sequence[str] | None = None) -> None:
    """Parse and validate the flags, then run the scoring pipeline until it is cancelled."""
    opts = parse_and_validate(argv, ScoreEventsOptions, OPTIONS)
    values = validate(opts, OPTIONS)
    _LOGGER.info("score_events options: %s", redact_option_values(values, OPTIONS))
    preload_tensorflow(values, opts.view_as(StandardOptions).runner)
    run_pipeline(
        lambda p: build_pipeline(p, opts),
        opts,
        name="score_events",
        watchdog=watchdog_from_options(values),
        metrics=metrics_server_from_options(values),
        lease=group_lease(values),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()
