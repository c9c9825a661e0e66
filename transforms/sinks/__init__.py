"""Where rows land for training: BigQuery (streaming inserts or file loads) and TFRecord files.

Usage::

    from transforms.sinks import GcpEndpoints, WriteRowsToBigQuery, WriteTFRecords

    written = rows | WriteRowsToBigQuery("project:dataset.table", schema)
    files = rows | WriteTFRecords("gs://bucket/rows/part", schema)
"""

from transforms.sinks.bigquery import (
    BigQueryWriteResult,
    WriteDeadLettersToBigQuery,
    WriteRowsToBigQuery,
)
from transforms.sinks.gcp_endpoints import GcpEndpoints
from transforms.sinks.tfrecord import TFRecordWriteResult, WriteTFRecords, feature_spec

__all__ = [
    "BigQueryWriteResult",
    "GcpEndpoints",
    "TFRecordWriteResult",
    "WriteDeadLettersToBigQuery",
    "WriteRowsToBigQuery",
    "WriteTFRecords",
    "feature_spec",
]
