"""Benchmark: decode/validate and preprocessing cost per row, against bare parsing in the same run.

Two levels, same generated credit-card events (33 fields, ~700-byte JSON):

1. In-process, no Beam: ``json.loads`` per message (baseline) vs ``DecodeAndValidate``'s DoFn on
   the same records (decode + validate + dead-letter routing); the same for schemaless Avro
   (``fastavro.schemaless_reader`` baseline vs the Avro path).
2. DirectRunner pipelines over KafkaRecords generated in the pipeline: ``Map(json.loads)``
   (baseline) vs ``DecodeAndValidate -> Filter -> Project -> EnrichWithSideInput``, and
   ``DecodeAndValidate -> WindowedAggregate`` per card over 2-minute windows.

Prints rows/s, the ratio to the baseline, medians over ``--repeats``. 1 % of the messages are
invalid, so dead-letter routing is on the measured path; every run checks rows + dead letters.

    .venv/bin/python bench/bench_decode_preprocess.py                 # 50k rows x 3, a few minutes
    .venv/bin/python bench/bench_decode_preprocess.py --rows 10000 --repeats 1
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import fastavro
from apache_beam.transforms.window import TimestampedValue

from transforms.decoding.decode import DecodeAndValidate, _DecodeFn
from transforms.decoding.schema import bundled_schema
from transforms.kafka.record import KafkaRecord
from transforms.preprocessing.enrich import EnrichWithSideInput, FileReference
from transforms.preprocessing.filter_project import Filter, Project
from transforms.preprocessing.window_aggregate import Count, Mean, Tumbling, WindowedAggregate

_LOGGER = logging.getLogger("bench_decode_preprocess")
SCHEMA = bundled_schema("creditcard")
T0_MS = 1_795_305_600_000
CARDS = 500


def _event(i: int, rng: random.Random) -> dict:
    return {
        "event_id": f"tx-{i}",
        "card_id": f"card-{i % CARDS}",
        "Time": float(i),
        **{f"V{k}": rng.gauss(0.0, 1.0) for k in range(1, 29)},
        "Amount": round(rng.expovariate(1 / 80.0), 2),
        "Class": 0,
    }


def make_records(count: int, avro: bool) -> list[KafkaRecord]:
    """``count`` records, every 100th invalid (a string Amount) so dead letters are exercised."""
    rng = random.Random(7)
    writer = fastavro.parse_schema(SCHEMA.to_avro())
    records = []
    for i in range(count):
        event = _event(i, rng)
        if avro:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, writer, event)
            value = buffer.getvalue() if i % 100 else b"\x01"
        else:
            if i % 100 == 0:
                event["Amount"] = "12.5"
            value = json.dumps(event).encode()
        records.append(KafkaRecord("tx", i % 3, i, event["card_id"].encode(), value, T0_MS + i))
    return records


def _as_read(_: bytes, count: int):
    """What ReadFromKafka emits: KafkaRecords timestamped with their Kafka time.

    Generated inside the pipeline: a Create of the records (or their bytes as a side argument)
    is cloudpickled and bz2-compressed into the graph, which costs more than the work measured.
    """
    for record in make_records(count, avro=False):
        yield TimestampedValue(record, record.timestamp_ms / 1000)


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    produced = fn()
    return time.perf_counter() - started, produced


def in_process(records: list[KafkaRecord], message_format: str) -> tuple[float, float]:
    """(baseline s, decode s) for parsing only vs the full DoFn."""
    writer = fastavro.parse_schema(SCHEMA.to_avro())

    def baseline() -> int:
        if message_format == "JSON":
            return sum(1 for r in records if json.loads(r.value))
        ok = 0
        for r in records:
            try:
                fastavro.schemaless_reader(io.BytesIO(r.value), writer, None)
                ok += 1
            except Exception:  # noqa: BLE001 - corrupt records are part of the input
                pass
        return ok

    fn = _DecodeFn(SCHEMA, message_format, None, None, None, "reject", 1_000_000, False)
    fn.setup()

    def decode() -> int:
        out = 0
        for r in records:
            out += sum(1 for _ in fn.process(r))
        return out

    base_s, _ = _time(baseline)
    decode_s, emitted = _time(decode)
    assert emitted == len(records), (emitted, len(records))  # every input → a row or a letter
    return base_s, decode_s


def _run(build: Callable[[beam.Pipeline], None]) -> float:
    started = time.perf_counter()
    with beam.Pipeline() as p:
        build(p)
    return time.perf_counter() - started


def _check_count(expected: int) -> Callable[[int], None]:
    def check(actual: int) -> None:
        if actual != expected:
            raise AssertionError(f"expected {expected} outputs, got {actual}")

    return check


def pipelines(records: list[KafkaRecord], cards_csv: str) -> dict[str, float]:
    """Seconds for the baseline and the two preprocessing chains on the DirectRunner."""
    valid = sum(1 for r in records if r.offset % 100)

    def source(p):
        return p | beam.Impulse() | beam.FlatMap(_as_read, len(records))

    def baseline(p):
        _ = (
            source(p)
            | beam.Map(lambda r: json.loads(r.value))
            | beam.combiners.Count.Globally()
            | beam.Map(_check_count(len(records)))
        )

    def chain(p):
        decoded = source(p) | DecodeAndValidate(SCHEMA)
        total = (
            (decoded.rows, decoded.dead_letters)
            | beam.Flatten()
            | "All" >> beam.combiners.Count.Globally()
        )
        _ = total | "CheckAll" >> beam.Map(_check_count(len(records)))
        return decoded

    def preprocess(p):
        decoded = chain(p)
        _ = (
            decoded.rows
            | Filter("Amount >= 0")
            | Project("event_id", "card_id", "Amount", "V1", "V2", "V3")
            | EnrichWithSideInput(FileReference(cards_csv), key="card_id")
            | "Rows" >> beam.combiners.Count.Globally()
            | "CheckRows" >> beam.Map(_check_count(valid))
        )

    def aggregate(p):
        decoded = chain(p)
        _ = decoded.rows | WindowedAggregate(
            key="card_id",
            window=Tumbling(120),
            aggregates={"n": Count(), "avg_amount": Mean("Amount")},
        )

    return {
        "baseline Map(json.loads)": _run(baseline),
        "decode+filter+project+enrich": _run(preprocess),
        "decode+window aggregate": _run(aggregate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    json_records = make_records(args.rows, avro=False)
    avro_records = make_records(args.rows, avro=True)
    with tempfile.TemporaryDirectory() as tmp:
        cards_csv = str(Path(tmp) / "cards.csv")
        Path(cards_csv).write_text(
            "card_id,tier\n" + "".join(f"card-{i},{i % 3}\n" for i in range(CARDS))
        )
        results: dict[str, list[float]] = {}
        _run(lambda p: p | beam.Create([0]))  # warm-up: the first pipeline pays one-off imports
        for repeat in range(args.repeats):
            for fmt, records in (("JSON", json_records), ("AVRO", avro_records)):
                base_s, decode_s = in_process(records, fmt)
                results.setdefault(f"in-process {fmt} parse only", []).append(base_s)
                results.setdefault(f"in-process {fmt} DecodeAndValidate", []).append(decode_s)
            for name, seconds in pipelines(json_records, cards_csv).items():
                results.setdefault(f"DirectRunner {name}", []).append(seconds)
            _LOGGER.warning("repeat %d done", repeat + 1)

    print(f"rows per run: {args.rows} (1% invalid), repeats: {args.repeats}")
    baselines = {
        "in-process JSON": "in-process JSON parse only",
        "in-process AVRO": "in-process AVRO parse only",
        "DirectRunner": "DirectRunner baseline Map(json.loads)",
    }
    for name, times in results.items():
        median = statistics.median(times)
        base = next(v for k, v in baselines.items() if name.startswith(k))
        ratio = median / statistics.median(results[base])
        print(
            f"{name:48s} median {median:7.3f} s  {args.rows / median:10,.0f} rows/s  "
            f"x{ratio:5.2f} of baseline time"
        )


if __name__ == "__main__":
    main()
