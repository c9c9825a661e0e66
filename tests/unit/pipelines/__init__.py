"""Unit tests of the pipelines' parts: options, templates, trainer, synthetic data, README."""
