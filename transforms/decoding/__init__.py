"""Message bytes → rows validated against a declared schema; everything else a dead letter.

Usage::

    from transforms.decoding import DecodeAndValidate, RowSchema

    schema = RowSchema.from_file("creditcard.json")
    decoded = records | DecodeAndValidate(schema, message_format="JSON")
    rows, dead_letters = decoded.rows, decoded.dead_letters
"""

from transforms.decoding.avro import AvroDecoder, ConfluentAvroDecoder
from transforms.decoding.decode import MESSAGE_FORMATS, DecodeAndValidate, DecodeResult
from transforms.decoding.schema import Field, RowSchema, bundled_schema, bundled_schema_path

__all__ = [
    "AvroDecoder",
    "ConfluentAvroDecoder",
    "DecodeAndValidate",
    "DecodeResult",
    "Field",
    "MESSAGE_FORMATS",
    "RowSchema",
    "bundled_schema",
    "bundled_schema_path",
]
