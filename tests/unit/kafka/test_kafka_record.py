"""KafkaRecord and its Beam coder."""

from __future__ import annotations

import apache_beam as beam
from apache_beam import coders, typehints
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.kafka.record import KafkaRecord, KafkaRecordCoder

RECORDS = [
    KafkaRecord("tx", 2, 40, b"card-1", b'{"a": 1}', 1_790_000_000_123, (("h", b"x"), ("n", None))),
    KafkaRecord("tx", 0, 0, None, None, 0),
]


def test_coder_round_trips_deterministically_and_estimates_without_encoding():
    coder = coders.registry.get_coder(KafkaRecord)
    assert isinstance(coder, KafkaRecordCoder) and coder.is_deterministic()
    for record in RECORDS:
        encoded = coder.encode(record)
        assert coder.decode(encoded) == record
        assert coder.encode(coder.decode(encoded)) == encoded
        assert abs(coder.estimate_size(record) - len(encoded)) <= 24
    assert coders.registry.get_coder(typehints.List[KafkaRecord]).is_deterministic()


def test_records_cross_a_shuffle_intact():
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(RECORDS).with_output_types(KafkaRecord)
            | beam.Map(lambda r: (r.partition, r)).with_output_types(
                typehints.Tuple[int, KafkaRecord]
            )
            | beam.GroupByKey()
            | beam.FlatMap(lambda kv: kv[1])
        )
        assert_that(out, equal_to(RECORDS))
