"""`recd shards check`: are the replicas of every shard alike? (anti-entropy's detection half)

Every replica of every shard of the current placement is scanned and compared, item by item: an item
some replicas hold and others lack, or one they hold with another vector or payload, is a divergence.
Hinted handoff (server/routing/handoff.py) keeps replicas alike while frontends live; this finds a
replica left behind anyway (a frontend that died holding hints, hints dropped past their bound). A scan
is not a point-in-time view, so writes under way while it runs can show as divergences that are gone
on the next run: run it twice, or when writes are quiet.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from server.cluster.layout import Layout
from shards.client import ShardClient
from shards.records import RecordBatch, ShardError


@dataclass
class ShardCheck:
    shard: int
    replicas: tuple[str, ...]
    items: int = 0  # distinct items over all replicas
    missing: dict[str, int] = field(default_factory=dict)  # replica -> items others hold that it lacks
    differing: int = 0  # items every replica holds, not alike
    examples: list[str] = field(default_factory=list)  # a few diverging item ids
    unreadable: dict[str, str] = field(default_factory=dict)  # replica -> why it could not be scanned

    @property
    def alike(self) -> bool:
        return not self.unreadable and not self.differing and not any(self.missing.values())

    def describe(self) -> str:
        if self.unreadable:
            why = "; ".join(f"{n}: {e}" for n, e in self.unreadable.items())
            return f"shard {self.shard}: not checked ({why})"
        if self.alike:
            return f"shard {self.shard}: {self.items} items alike on {', '.join(self.replicas)}"
        lacking = ", ".join(f"{n} lacks {k}" for n, k in self.missing.items() if k)
        parts = [p for p in (lacking, f"{self.differing} differ" if self.differing else "") if p]
        return f"shard {self.shard}: DIVERGED: {'; '.join(parts)} (e.g. {', '.join(self.examples)})"


# item id -> (label, digest of its vector and payload)
View = dict[str, tuple[int, bytes]]


def _digests(batch: RecordBatch) -> View:
    return {
        item_id: (label, hashlib.blake2b(batch.vectors[i].tobytes() + payload, digest_size=16).digest())
        for i, (item_id, label, payload) in enumerate(
            zip(batch.item_ids, batch.labels.tolist(), batch.payloads, strict=True)
        )
    }


async def _replica_view(client: ShardClient, shard: int) -> View:
    held: View = {}
    async for batch in client.scan(shard):
        held.update(_digests(batch))
    return held


async def _views(
    shard: int, replicas: tuple[str, ...], clients: Mapping[str, ShardClient], result: ShardCheck
) -> dict[str, View]:
    views: dict[str, View] = {}
    for node in replicas:
        try:
            views[node] = await _replica_view(clients[node], shard)
        except (ShardError, KeyError) as exc:
            result.unreadable[node] = str(exc)
    return views


async def check_shard(
    shard: int, replicas: tuple[str, ...], clients: Mapping[str, ShardClient]
) -> ShardCheck:
    result = ShardCheck(shard, replicas)
    views = await _views(shard, replicas, clients, result)
    if result.unreadable:
        return result
    every = set().union(*views.values())
    result.items = len(every)
    diverging: set[str] = set()
    for node, view in views.items():
        lacking = every - view.keys()
        result.missing[node] = len(lacking)
        diverging |= lacking
    for item in set.intersection(*(set(v) for v in views.values())):
        if len({view[item] for view in views.values()}) > 1:
            result.differing += 1
            diverging.add(item)
    result.examples = sorted(diverging)[:5]
    return result


async def check_replicas(
    layout: Layout, clients: Mapping[str, ShardClient], shards: Iterable[int] | None = None
) -> list[ShardCheck]:
    """One ShardCheck per shard of the current placement (or of `shards`), a few shards at a time."""
    placement = layout.current
    wanted = list(range(placement.shard_count) if shards is None else shards)
    limit = asyncio.Semaphore(4)

    async def one(shard: int) -> ShardCheck:
        async with limit:
            return await check_shard(shard, placement.replicas[shard], clients)

    return list(await asyncio.gather(*(one(s) for s in wanted)))


@dataclass
class ShardRepair:
    shard: int
    copied: dict[str, int] = field(default_factory=dict)  # replica -> items written to it from the source
    deleted: dict[str, int] = field(default_factory=dict)  # replica -> items it held that the source lacks


async def repair_from(
    layout: Layout, clients: Mapping[str, ShardClient], source: str, timeout_s: float = 60.0
) -> list[ShardRepair]:
    """Makes every other replica of the shards `source` holds (current placement) match `source`: items
    it holds that a replica lacks or holds differently are written to that replica, items a replica
    holds that it lacks are deleted there. Which replica is right is the operator's call (e.g. the one
    that stayed up while the other missed writes); run it while writes to those shards are quiet, since
    a write landing between the scan and the repair can be undone by it. Raises ShardError if a replica
    cannot be read or written (repairs are idempotent: run it again)."""
    repairs = []
    for shard in layout.current.shards_of(source):
        replicas = layout.current.replicas[shard]
        probe = ShardCheck(shard, replicas)
        views = await _views(shard, replicas, clients, probe)
        if probe.unreadable:
            raise ShardError(probe.describe())
        truth = views[source]
        repair = ShardRepair(shard)
        for node, view in views.items():
            if node == source:
                continue
            stale = [label for item, (label, digest) in truth.items() if view.get(item) != (label, digest)]
            extra = [label for item, (label, _) in view.items() if item not in truth]
            if stale:
                records = await clients[source].fetch(shard, stale, timeout_s)
                await clients[node].upsert({shard: records}, timeout_s, layout_epoch=layout.epoch)
            if extra:
                await clients[node].delete(shard, extra, timeout_s, layout_epoch=layout.epoch)
            repair.copied[node], repair.deleted[node] = len(stale), len(extra)
        repairs.append(repair)
    return repairs
