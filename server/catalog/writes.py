"""The write path for items: validate, label, route to shards (durable), then update the catalogue."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from server import _core, metrics, validation
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata, decode_metadata, encode_metadata
from server.domain import ItemRecord
from server.errors import invalid
from server.routing.router import ShardRouter
from server.validation import Limits
from shards.records import RecordBatch


def unit_rows(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / norms).astype(np.float32)


class ItemWriter:
    def __init__(self, router: ShardRouter, items: ItemStore, limits: Limits, write_timeout_s: float = 30.0):
        self._router = router
        self._items = items
        self._limits = limits
        self._timeout_s = write_timeout_s

    def validate(self, records: Sequence[ItemRecord]) -> None:
        validation.check_batch(len(records), "items", self._limits)
        seen: set[str] = set()
        for i, r in enumerate(records):
            validation.check_id(r.item_id, f"items[{i}].item_id", self._limits)
            if r.item_id in seen:
                raise invalid(f"items[{i}].item_id {r.item_id!r} appears twice in the batch; send it once")
            seen.add(r.item_id)
            validation.check_embedding(r.embedding, f"items[{i}].embedding", self._limits)
            validation.check_popularity(r.popularity, f"items[{i}].popularity")
            validation.check_attributes(
                r.attributes, f"items[{i}].attributes", "max_attributes_per_item", self._limits
            )
        validation.check_new_attribute_names(
            {name for r in records for name in r.attributes},
            self._items.has_attribute,
            self._items.attribute_name_count(),
            self._limits,
        )

    async def upsert(self, records: Sequence[ItemRecord]) -> int:
        self.validate(records)
        ids = [r.item_id for r in records]
        labels = _core.stable_hash64(ids)
        for item_id, label in zip(ids, labels.tolist(), strict=True):
            owner = self._items.label_owner(label)
            if owner is not None and owner != item_id:
                raise invalid(
                    f"item_id {item_id!r} collides with {owner!r} in the 64-bit id hash; rename one"
                )
        now_ms = int(time.time() * 1000)
        vectors = unit_rows(np.asarray([r.embedding for r in records], dtype=np.float32))
        meta = [
            ItemMetadata(dict(r.attributes), float(r.popularity), r.created_at_ms or now_ms) for r in records
        ]
        batch = RecordBatch(labels, ids, vectors, [encode_metadata(m) for m in meta])
        await self._router.upsert(batch, self._timeout_s)
        self._items.upsert(ids, labels, vectors, meta)
        metrics.ITEMS.set(len(self._items))
        return len(records)

    async def delete(self, item_ids: Sequence[str]) -> int:
        validation.check_batch(len(item_ids), "item_ids", self._limits)
        validation.check_ids(item_ids, "item_ids", self._limits)
        unique = list(dict.fromkeys(item_ids))
        labels = _core.stable_hash64(unique)
        # Counted before the shards are written: the change feed may apply the delete to the catalogue
        # before the acknowledgement comes back.
        live = int((self._items.lookup_labels(labels) >= 0).sum())
        await self._router.delete(unique, labels, self._timeout_s)
        self._items.delete(unique)
        metrics.ITEMS.set(len(self._items))
        return live

    async def get(self, item_ids: Sequence[str]) -> tuple[list[ItemRecord], list[str]]:
        validation.check_batch(len(item_ids), "item_ids", self._limits)
        validation.check_ids(item_ids, "item_ids", self._limits)
        known = [i for i in dict.fromkeys(item_ids) if self._items.row_of(i) is not None]
        found: dict[str, ItemRecord] = {}
        if known:
            batch = await self._router.fetch(known, _core.stable_hash64(known), self._timeout_s)
            for j, item_id in enumerate(batch.item_ids):
                meta = decode_metadata(batch.payloads[j])
                found[item_id] = ItemRecord(
                    item_id, batch.vectors[j], meta.attributes, meta.popularity, meta.created_at_ms
                )
        records = [found[i] for i in item_ids if i in found]
        missing = [i for i in item_ids if i not in found]
        return records, missing
