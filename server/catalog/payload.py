"""Item metadata as stored beside the vector in a shard record. The codec lives in the shard package
(the shard reads the attributes to filter its hits); the frontend uses it from here."""

from shards.payload import ItemMetadata, decode_metadata, encode_metadata

__all__ = ["ItemMetadata", "decode_metadata", "encode_metadata"]
