"""Reusable Apache Beam PTransforms for streaming machine learning on Kafka."""
