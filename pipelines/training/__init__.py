"""The trainer's parts: training data, the autoencoder, its evaluation and artifact storage."""
