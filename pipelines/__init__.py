"""Runnable pipelines composed from :mod:`transforms` (``python -m pipelines.<name>``)."""
