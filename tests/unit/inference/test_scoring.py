"""ScoreEvents on in-memory (KafkaRecord, row) pairs with a real tiny SavedModel."""

from __future__ import annotations

import datetime
import json
import pickle
import random

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from beam_metrics import committed_counters
from tiny_anomaly_model import CREDITCARD_FEATURES, expected_score, write_model

from pipelines.common.options import OptionError, parse_and_validate
from pipelines.score_events import OPTIONS, ScoreEventsOptions, build_pipeline
from transforms.batch import Batch, BatchCoder
from transforms.decoding.columnar import ColumnarPairs
from transforms.decoding.decode import DecodeAndValidate
from transforms.decoding.row_validation import RowValidator
from transforms.decoding.schema import bundled_schema, bundled_schema_path
from transforms.inference.model_handler import SavedModelHandler, Score, Verdicts
from transforms.inference.scoring import (
    METRICS_NAMESPACE,
    PREDICTION_KEY,
    Prediction,
    PredictionBatch,
    PredictionJson,
    ScoredBatch,
    ScoredBatchCoder,
    ScoreEvents,
    _BatchScoringHandler,
    _BatchWithinBundleFn,
    _MillisText,
)
from transforms.kafka.record import KafkaRecord
from transforms.size_limits import FixedSizeLimit, _EncodeFn

SCORED_AT = 1_795_000_000.0  # 2026-11-18T11:06:40Z: a fixed scoring clock
THRESHOLD = 1.5


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("models"))
    write_model(root, 4, threshold=THRESHOLD)
    return root


def _event(offset: int, value: float, key: bytes | None = b"card-1") -> tuple[KafkaRecord, dict]:
    row = {name: value for name in CREDITCARD_FEATURES}
    row["event_id"] = f"ev-{offset}"
    record = KafkaRecord(
        topic="tx",
        partition=offset % 2,
        offset=offset,
        key=key,
        value=json.dumps(row).encode(),
        timestamp_ms=1_790_000_000_000 + offset,
    )
    return record, row


def _fixed_clock() -> float:
    return SCORED_AT


def _expected(record: KafkaRecord, row: dict, threshold: float = THRESHOLD) -> Prediction:
    score = expected_score(row)
    return Prediction(
        key=record.key,
        event_id=row["event_id"],
        score=pytest.approx(score, rel=1e-6),
        is_anomaly=score > threshold,
        threshold=threshold,
        model_version=4,
        event_time=f"2026-09-21T14:13:20.{record.offset:03d}Z",
        scoring_time="2026-11-18T11:06:40.000Z",
        topic="tx",
        partition=record.partition,
        offset=record.offset,
    )


def test_every_event_becomes_a_prediction_or_a_dead_letter(model_root: str) -> None:
    events = [_event(i, 0.5 * i, key=None if i == 3 else b"card-%d" % i) for i in range(6)]
    bad_record, bad_row = _event(9, 1.0)
    bad_row = {**bad_row, "V3": None}
    expected = [_expected(r, row) for r, row in events]
    expected_alerts = [p for p in expected if p.is_anomaly]
    assert 0 < len(expected_alerts) < len(expected)

    with TestPipeline() as p:
        scored = (
            p
            | beam.Create([*events, (bad_record, bad_row)])
            | ScoreEvents(SavedModelHandler(model_root), clock=_fixed_clock)
        )
        assert_that(scored.predictions, equal_to(expected), label="predictions")
        assert_that(scored.alerts, equal_to(expected_alerts), label="alerts")
        dead = scored.dead_letters | beam.Map(
            lambda d: (d.stage, d.error_type, "null" in d.error_message, d.offset, d.payload)
        )
        assert_that(
            dead, equal_to([("score", "FeatureError", True, 9, bad_record.value)]), label="dead"
        )


def test_threshold_override_and_event_time_is_restored(model_root: str) -> None:
    events = [_event(i, 0.4 * i) for i in range(5)]

    with TestPipeline() as p:
        scored = (
            p
            | beam.Create(events)
            | ScoreEvents(SavedModelHandler(model_root, threshold=0.5), clock=_fixed_clock)
        )
        flags = scored.predictions | beam.Map(
            lambda pred, ts=beam.DoFn.TimestampParam: (pred.offset, pred.is_anomaly, ts.micros)
        )
        assert_that(
            flags,
            equal_to(
                [(r.offset, expected_score(row) > 0.5, r.timestamp_ms * 1000) for r, row in events]
            ),
        )


def test_batched_scores_like_single_pairs_in_lists_at_the_earliest_event_time(
    model_root: str,
) -> None:
    events = [_event(i, 0.5 * i) for i in range(5)]
    bad_record, bad_row = _event(9, 1.0)
    expected = [_expected(r, row) for r, row in events]
    with TestPipeline() as p:
        scored = (
            p
            | beam.Create([events[:3], [*events[3:], (bad_record, {**bad_row, "V1": "x"})]])
            | ScoreEvents(SavedModelHandler(model_root), clock=_fixed_clock).batched()
        )
        lists = (
            scored.predictions
            | "Lists"
            >> beam.Map(
                lambda batch, ts=beam.DoFn.TimestampParam: (
                    type(batch).__name__,
                    ts.micros
                    == 1000
                    * min(
                        r.timestamp_ms for r, _ in events if r.offset in {p.offset for p in batch}
                    ),
                )
            )
            | beam.Distinct()
        )
        assert_that(lists, equal_to([("Batch", True)]), label="lists at the earliest time")
        flat = scored.predictions | "Flatten" >> beam.FlatMap(lambda batch: batch)
        assert_that(flat, equal_to(expected), label="predictions")
        alerts = scored.alerts | "FlatAlerts" >> beam.FlatMap(lambda batch: batch)
        assert_that(alerts, equal_to([e for e in expected if e.is_anomaly]), label="alerts")
        dead = scored.dead_letters | beam.Map(lambda d: (d.offset, d.error_type))
        assert_that(dead, equal_to([(9, "FeatureError")]), label="dead")


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_counters_count_predictions_alerts_and_dead_letters(model_root: str, batched: bool) -> None:
    events = [_event(i, 0.5 * i) for i in range(6)]
    bad_record, bad_row = _event(9, 1.0)
    inputs = [*events, (bad_record, {**bad_row, "V2": None})]
    alerts = sum(expected_score(row) > THRESHOLD for _, row in events)
    scorer = ScoreEvents(SavedModelHandler(model_root), clock=_fixed_clock)

    p = TestPipeline()
    if batched:
        _ = p | beam.Create([inputs[:4], inputs[4:]]) | scorer.batched()
    else:
        _ = p | beam.Create(inputs) | scorer
    result = p.run()
    result.wait_until_finish()

    counters = committed_counters(result, METRICS_NAMESPACE)
    assert 0 < alerts < len(events)
    assert counters == {"predictions": len(events), "alerts": alerts, "dead_letters": 1}


def test_windowed_input_is_refused_at_construction(model_root: str) -> None:
    p = TestPipeline()
    windowed = p | beam.Create([_event(0, 0.1)]) | beam.WindowInto(window.FixedWindows(1))
    with pytest.raises(ValueError, match="globally windowed"):
        _ = windowed | ScoreEvents(SavedModelHandler(model_root))


def test_batch_coder_round_trips_and_estimates_from_the_first_element() -> None:
    batch = Batch(_event(i, 0.5) for i in range(3))
    coder = BatchCoder()
    decoded = coder.decode(coder.encode(batch))
    assert decoded == batch and type(decoded) is Batch
    assert 0.5 < coder.estimate_size(batch) / len(coder.encode(batch)) < 2
    assert coder.estimate_size(Batch()) == 0


def test_prediction_json() -> None:
    prediction = Prediction(
        key=b"card-\xff",
        event_id="e1",
        score=0.25,
        is_anomaly=False,
        threshold=1.0,
        model_version=2,
        event_time="2026-11-22T01:02:03.456Z",
        scoring_time="2026-11-22T01:02:03.500Z",
        topic="tx",
        partition=1,
        offset=7,
    )

    assert json.loads(prediction.to_json()) == {
        "key": "card-\\xff",
        "event_id": "e1",
        "score": 0.25,
        "is_anomaly": False,
        "threshold": 1.0,
        "model_version": 2,
        "event_time": "2026-11-22T01:02:03.456Z",
        "scoring_time": "2026-11-22T01:02:03.500Z",
        "topic": "tx",
        "partition": 1,
        "offset": 7,
    }
    assert json.loads(prediction._replace(event_id='é"\n').to_json())["event_id"] == 'é"\n'
    odd = prediction._replace(key=None, event_id=42, score=1e-07, topic='t"x')
    decoded = json.loads(odd.to_json())
    assert (decoded["key"], decoded["event_id"], decoded["score"], decoded["topic"]) == (
        None,
        42,
        1e-07,
        't"x',
    )


def test_prediction_json_writes_the_chosen_fields_in_their_order_and_survives_pickling():
    prediction = Prediction(b"card-\xff", "e1", 0.25, True, 1.0, 2, "t0", "t1", "tx", 1, 7)
    lean = pickle.loads(pickle.dumps(PredictionJson(["score", "event_id", "is_anomaly"])))
    assert lean(prediction) == b'{"score":0.25,"event_id":"e1","is_anomaly":true}'
    assert PredictionJson(["key"])(prediction) == b'{"key":"card-\\\\xff"}'
    assert PredictionJson(["key"])(prediction._replace(key=None)) == b'{"key":null}'
    assert PredictionJson()(prediction) == prediction.to_json()


@pytest.mark.parametrize("fields", [[], ["score", "nope"], ["score", "score"]])
def test_prediction_json_refuses_unknown_empty_or_repeated_fields(fields):
    with pytest.raises(ValueError, match="prediction fields must be distinct names among key,"):
        PredictionJson(fields)


def _batches(fn: _BatchWithinBundleFn, elements: list[int]) -> list[list[int]]:
    """The model calls' batches the fn emits (each element is a list of them)."""
    fn.start_bundle()
    emitted = [wv.value for e in elements for wv in fn.process(e)]
    emitted += [wv.value for wv in fn.finish_bundle()]
    assert all(type(chunks) is Batch and chunks for chunks in emitted)
    return [chunk for chunks in emitted for chunk in chunks]


def test_batches_stay_within_a_bundle_and_respect_size_and_wait() -> None:
    assert _batches(_BatchWithinBundleFn(3, None), list(range(7))) == [[0, 1, 2], [3, 4, 5], [6]]
    assert _batches(_BatchWithinBundleFn(3, 0.0), [1, 2]) == [[1], [2]]  # no wait: one each
    assert _batches(_BatchWithinBundleFn(100, 60.0), [1, 2]) == [[1, 2]]  # flushed at bundle end
    assert _batches(_BatchWithinBundleFn(3, None), []) == []
    batched = _BatchWithinBundleFn(3, None, batched_input=True)
    assert _batches(batched, [[0, 1], [2, 3, 4, 5, 6, 7, 8], [9]]) == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9],
    ]


def _columns(events: list[tuple[KafkaRecord, dict]]) -> ColumnarPairs:
    validator = RowValidator(bundled_schema("creditcard"))
    rows = validator.decode_json_columns([record.value for record, _ in events])
    return ColumnarPairs([record for record, _ in events], rows)


def test_column_wise_batches_stay_column_wise_unless_mixed_with_lists() -> None:
    events = [_event(i, 0.1 * i) for i in range(7)]
    fn = _BatchWithinBundleFn(4, None, batched_input=True)
    chunks = _batches(fn, [_columns(events[:3]), _columns(events[3:])])
    assert [type(c).__name__ for c in chunks] == ["ColumnarPairs", "ColumnarPairs"]
    assert [c.rows.column("event_id") for c in chunks] == [
        [f"ev-{i}" for i in range(4)],
        [f"ev-{i}" for i in range(4, 7)],
    ]
    mixed = _batches(fn, [_columns(events[:2]), Batch(events[2:3])])  # a list: a dead letter
    assert [type(c).__name__ for c in mixed] == ["Batch"]
    assert [(record.offset, row["event_id"]) for record, row in mixed[0]] == [
        (i, f"ev-{i}") for i in range(3)
    ]


def test_column_wise_decoded_batches_score_like_lists_of_pairs(model_root: str) -> None:
    events = [_event(i, 0.5 * i) for i in range(7)]
    records = [record for record, _ in events]
    expected = [_expected(r, row) for r, row in events]
    scorer = ScoreEvents(SavedModelHandler(model_root), clock=_fixed_clock, max_batch_size=4)
    with TestPipeline() as p:
        decoded = (
            p
            | beam.Create([records[:3], records[3:]])
            | DecodeAndValidate(bundled_schema("creditcard")).with_records().columnar()
        )
        scored = decoded.rows | scorer.batched()
        kinds = scored.predictions | "Kinds" >> beam.Map(lambda b: type(b).__name__)
        assert_that(kinds | beam.Distinct(), equal_to(["PredictionBatch"]), label="columns")
        flat = scored.predictions | "Flatten" >> beam.FlatMap(list)
        assert_that(flat, equal_to(expected), label="predictions")
        alerts = scored.alerts | "FlatAlerts" >> beam.FlatMap(list)
        assert_that(alerts, equal_to([e for e in expected if e.is_anomaly]), label="alerts")


def test_score_events_options_fail_fast_naming_the_flag(model_root: str) -> None:
    base = [
        "--bootstrapServers=127.0.0.1:9092",
        "--inputTopic=tx",
        "--startOffset=earliest",
        f"--schemaPath={bundled_schema_path('creditcard')}",
        f"--modelPath={model_root}",
    ]
    with pytest.raises(OptionError, match="--outputTopic"):
        parse_and_validate(base, ScoreEventsOptions, OPTIONS)

    opts = parse_and_validate(
        [*base, "--outputTopic=out", "--modelPollSeconds=0"], ScoreEventsOptions, OPTIONS
    )
    with pytest.raises(OptionError, match="--modelPollSeconds"):
        build_pipeline(beam.Pipeline(), opts)


def test_score_events_checks_the_model_against_the_schema_at_launch(
    model_root: str, tmp_path
) -> None:
    def launch(model_path: str, schema: str) -> None:
        argv = [
            "--bootstrapServers=127.0.0.1:9092",
            "--inputTopic=tx",
            "--outputTopic=out",
            "--startOffset=earliest",
            f"--schemaPath={bundled_schema_path(schema)}",
            f"--modelPath={model_path}",
        ]
        build_pipeline(beam.Pipeline(), parse_and_validate(argv, ScoreEventsOptions, OPTIONS))

    with pytest.raises(OptionError, match="--modelPath=.*no complete model version"):
        launch(str(tmp_path), "creditcard")
    with pytest.raises(OptionError, match=r"needs features \['Time', 'V1'"):
        launch(model_root, "car_sensor")
    launch(model_root, "creditcard")  # builds


class _Model:
    """The plain handler's model (Beam's Shared needs an object it can weakly reference)."""


class _KeyedPlainHandler(ModelHandler):
    """A non-SavedModel handler on (KafkaRecord, row) pairs, used as Beam's stock ones are:
    preprocessing on the batch, postprocessing on each result (as the benchmark adapts
    TFModelHandlerNumpy)."""

    def load_model(self):
        return _Model()

    def run_inference(self, batch, model, inference_args=None):
        return [(record, PredictionResult(values, sum(values))) for record, values in batch]


def _to_values(batch):
    return [(record, [row[n] ** 2 / 30 for n in CREDITCARD_FEATURES]) for record, row in batch]


def _to_score(pair):
    record, result = pair
    if record.offset == 2:  # a handler's own error for one event
        return record, PredictionResult(result.example, ValueError("no score for this one"))
    score = result.inference
    return record, PredictionResult(result.example, Score(score, score > THRESHOLD, THRESHOLD, 7))


def test_any_keyed_handler_scores_through_its_pre_and_postprocessing(model_root: str) -> None:
    events = [_event(i, 0.5 * i) for i in range(5)]
    handler = _KeyedPlainHandler().with_preprocess_fn(_to_values).with_postprocess_fn(_to_score)
    expected = [_expected(r, row)._replace(model_version=7) for r, row in events if r.offset != 2]

    with TestPipeline() as p:
        scored = p | beam.Create([events]) | ScoreEvents(handler, clock=_fixed_clock).batched()
        flat = scored.predictions | beam.FlatMap(lambda batch: batch)
        assert_that(flat, equal_to(expected), label="predictions")
        dead = scored.dead_letters | beam.Map(lambda d: (d.offset, d.error_type, d.error_message))
        assert_that(dead, equal_to([(2, "ValueError", "no score for this one")]), label="dead")


def test_a_handler_losing_results_fails_clearly() -> None:
    pairs = Batch((_event(i, 1.0)[0], [1.0]) for i in range(4))
    with pytest.raises(ValueError, match="returned 3 results for 4 events"):
        _BatchScoringHandler(_DropOneHandler()).run_inference([pairs], None)


class _DropOneHandler(_KeyedPlainHandler):
    def run_inference(self, batch, model, inference_args=None):
        return super().run_inference(batch, model)[:-1]


def test_scored_batch_coder_round_trips_and_estimates_cheaply() -> None:
    pairs = Batch(_event(i, 0.5) for i in range(4))
    verdicts = Verdicts([0.1, 0.2, 0.3, 0.4], [False] * 4, [1.0] * 4, [3] * 4, {2: ValueError("x")})
    coder = ScoredBatchCoder()
    decoded = coder.decode(coder.encode(ScoredBatch(pairs, verdicts)))
    assert decoded.pairs == pairs and type(decoded.pairs) is Batch
    assert decoded.verdicts[:4] == verdicts[:4] and str(decoded.verdicts.errors[2]) == "x"
    estimate = coder.estimate_size(ScoredBatch(pairs, verdicts))
    assert 0.5 < estimate / len(coder.encode(ScoredBatch(pairs, verdicts))) < 2


def test_event_times_are_formatted_like_isoformat_to_the_millisecond() -> None:
    text = _MillisText()
    rng = random.Random(3)
    moments = [-1, 0, 999, 1000, 1_790_000_000_999, 1_790_000_001_000, 1_790_000_000_999]
    moments += sorted(rng.randrange(-(10**12), 4 * 10**12) for _ in range(2000))
    for ms in moments:
        moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
        assert text(ms) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _prediction_batch() -> tuple[PredictionBatch, list[Prediction]]:
    records = [
        KafkaRecord("tx", i % 2, 10 + i, key, b"{}", 1_790_000_000_000 + i)
        for i, key in enumerate([b"card-1", None, b"\xff\xfebad", b"card-4"])
    ]
    verdicts = Verdicts([0.5, 2.0, 0.25, 3.5], [False, True, False, True], [1.5] * 4, [4] * 4, {})
    times = [f"2026-09-21T14:13:20.00{i}Z" for i in range(4)]
    batch = PredictionBatch(records, ["a", None, 7, "d"], verdicts, times, "2026-11-18T11:06:40Z")
    expected = [
        Prediction(r.key, eid, s, f, 1.5, 4, t, "2026-11-18T11:06:40Z", "tx", r.partition, r.offset)
        for r, eid, s, f, t in zip(
            records, ["a", None, 7, "d"], verdicts.scores, verdicts.is_anomaly, times, strict=True
        )
    ]
    return batch, expected


def test_prediction_batches_are_the_predictions_they_hold_column_wise() -> None:
    batch, expected = _prediction_batch()
    assert len(batch) == 4 and list(batch) == expected and batch == expected
    assert batch[2] == expected[2] and batch[1:3] == expected[1:3]
    assert batch.column("offset") == [10, 11, 12, 13] and batch.column("model_version") == [4] * 4
    copied = pickle.loads(pickle.dumps(batch))
    assert type(copied) is Batch and copied == expected  # another process gets the tuples
    assert BatchCoder().estimate_size(batch) == batch.estimate_bytes() > 0


@pytest.mark.parametrize(
    "fields", [None, ["event_id", "score", "is_anomaly"], ["key"], ["offset", "key", "score"]]
)
def test_prediction_json_encodes_a_batch_from_columns_like_each_prediction(fields) -> None:
    batch, expected = _prediction_batch()
    encode = PredictionJson(fields)
    assert encode.on_batch(batch) == [encode(p) for p in expected]  # incl. None and bad UTF-8 keys
    assert encode.on_batch(expected) is None  # a plain list: one by one
    assert PREDICTION_KEY.on_batch(batch) == [p.key for p in expected]
    assert [PREDICTION_KEY(p) for p in expected] == [p.key for p in expected]
    assert pickle.loads(pickle.dumps(encode)).on_batch(batch) == encode.on_batch(batch)


def test_size_checked_encoding_of_a_prediction_batch_equals_that_of_its_list() -> None:
    batch, expected = _prediction_batch()

    def encoded(element, limit: int) -> tuple[list, list]:
        fn = _EncodeFn(PREDICTION_KEY, PredictionJson(), FixedSizeLimit(limit), None, True)
        fn.setup()
        outputs = list(fn.process(element))
        records = [r for out in outputs if not isinstance(out, TaggedOutput) for r in out]
        letters = [out.value.offset for out in outputs if isinstance(out, TaggedOutput)]
        return records, letters

    for limit in (10_000, len(PredictionJson()(expected[2])) + 5):  # all fit; some do not
        assert encoded(batch, limit) == encoded(Batch(expected), limit)
    assert encoded(batch, 10_000)[0] == [(p.key, PredictionJson()(p)) for p in expected]
