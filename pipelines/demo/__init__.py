"""The local end-to-end demo (``python -m pipelines.demo``) and the synthetic events it runs on."""
