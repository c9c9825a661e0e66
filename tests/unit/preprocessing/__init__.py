"""Unit tests of transforms.preprocessing: filter/project, enrich, windows, tf.Transform."""
