"""Unit tests of transforms.decoding: schemas, JSON/Avro decoding and validation."""
