"""Unit tests of transforms.sinks: BigQuery and TFRecord writers, GCP endpoints."""
