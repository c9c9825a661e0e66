"""Unit tests of transforms.inference: the SavedModel handler and live scoring."""
