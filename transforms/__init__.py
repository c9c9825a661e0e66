"""Reusable Apache Beam PTransforms for streaming machine learning on Kafka.

One subpackage per concept, in the order data flows through them:

- :mod:`transforms.kafka`: read and write Kafka in pure Python (confluent-kafka, no JVM).
- :mod:`transforms.decoding`: message bytes → rows checked against a schema, or dead letters.
- :mod:`transforms.preprocessing`: KSQL-style filter/project, enrich-join, windowed aggregates,
  tf.Transform.
- :mod:`transforms.sinks`: BigQuery and TFRecord (GCS or local) writers.
- :mod:`transforms.inference`: the SavedModel handler, its versioned store and live scoring.

Two element types cross every stage and live here: :mod:`transforms.batch` (a list moving as one
element) and :mod:`transforms.dead_letter` (what any stage emits for input it cannot use), with
:mod:`transforms.size_limits`, which keeps outputs and dead letters within every sink's record
size limit.
"""
