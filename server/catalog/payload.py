"""Item metadata as stored beside the vector in a shard record (the shard treats it as opaque bytes)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ItemMetadata:
    attributes: dict[str, str]
    popularity: float
    created_at_ms: int


def encode_metadata(meta: ItemMetadata) -> bytes:
    body = {"a": meta.attributes, "p": meta.popularity, "t": meta.created_at_ms}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_metadata(payload: bytes) -> ItemMetadata:
    body = json.loads(payload)
    return ItemMetadata(
        attributes={str(k): str(v) for k, v in body.get("a", {}).items()},
        popularity=float(body.get("p", 0.0)),
        created_at_ms=int(body.get("t", 0)),
    )
