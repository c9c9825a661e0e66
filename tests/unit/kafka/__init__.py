"""Unit tests of transforms.kafka: config, records, the reader's planning/tracking, the writer."""
