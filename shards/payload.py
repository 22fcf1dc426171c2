"""Item metadata as stored beside the vector in a shard record: compact JSON, written by the frontend.

The shard reads only the attributes ("a"), to filter search hits; a payload that is not this JSON (a test's
opaque bytes, a foreign writer) simply has no attributes.
"""

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


def attributes_of(payload: bytes) -> dict[str, str]:
    """The payload's attributes; none when it is not metadata this module wrote."""
    if not payload.startswith(b"{"):
        return {}
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    attributes = body.get("a") if isinstance(body, dict) else None
    if not isinstance(attributes, dict):
        return {}
    return {str(k): str(v) for k, v in attributes.items()}
