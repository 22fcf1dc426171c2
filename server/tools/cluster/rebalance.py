"""What moves when nodes or the shard count change (`recd shards plan`), and moving it online
(`recd shards rebalance`).

The protocol, from the stored layout (epoch e, placement A) to a target placement B. Each step stores a
new epoch in the layout store (server/cluster/layout_store) by compare-and-set, from the epoch the
previous step stored, and then makes sure every node follows it (a node that has not read it from the
store yet is handed it):

1. dual (e+1): nodes open the shards B places on them, empty and "receiving"; frontends write to A and B,
   read from A. A node adopts the epoch only after the writes it already admitted finish, and refuses
   writes routed by another epoch, so once every node has it, every later write reaches B too.
2. copy: every shard of A is scanned from one live replica; each item goes (as a backfill upsert) to the
   replicas B gives its B-shard, unless that replica already holds it. A backfill skips items that live
   writes touched since the shard started receiving, so it never overwrites a newer write. If a target
   node restarted meanwhile (it lost that memory), the copy to it is done again.
3. switched (e+2): frontends read from B, still write to both.
4. stable B (e+3): writes go to B only. After a grace period (frontends poll the epoch), items a shard
   holds that B places elsewhere are deleted, and shards a node no longer hosts are dropped.

A failure before step 4 rolls back to A (a newer epoch of the old placement). Running the command again
resumes a rebalance that was interrupted after step 1.

Two rebalances started at once compute their first step from the same epoch: the store takes one, and
the other is refused (LayoutConflict) before it changed anything. A step refused later (another run
resumed the same rebalance and moved it on) stops this run without a roll-back: the layout is the other
run's to finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from server.cluster.layout import Layout, Placement
from server.cluster.layout_store.base import LayoutConflict, LayoutStore, describe
from server.cluster.layout_store.pushed import PushedLayoutStore
from shards.client import ShardClient
from shards.records import NodeLayout, RecordBatch, ShardError

log = logging.getLogger(__name__)


# --- plan -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardMove:
    shard: int
    before: tuple[str, ...]  # replicas in the current placement (empty: a new shard)
    after: tuple[str, ...]  # replicas in the target placement (empty: a removed shard)

    @property
    def gained(self) -> list[str]:
        return [n for n in self.after if n not in self.before]

    @property
    def lost(self) -> list[str]:
        return [n for n in self.before if n not in self.after]


@dataclass(frozen=True)
class Plan:
    current: Placement
    target: Placement
    shard_moves: list[ShardMove]
    items_total: int
    items_moved: int  # items whose logical shard changes
    items_source: str

    @property
    def moved_fraction(self) -> float:
        return self.items_moved / self.items_total if self.items_total else 0.0

    @property
    def ideal_fraction(self) -> float:
        """What a perfect hash would move: the share the new shards take (or the removed ones held)."""
        a, b = self.current.shard_count, self.target.shard_count
        return abs(b - a) / max(a, b)

    @property
    def replicas_copied(self) -> int:
        return sum(len(m.gained) for m in self.shard_moves)


def make_plan(current: Placement, target: Placement, item_ids: Sequence[str], items_source: str) -> Plan:
    moves = []
    for shard in range(max(current.shard_count, target.shard_count)):
        before = current.replicas[shard] if shard < current.shard_count else ()
        after = target.replicas[shard] if shard < target.shard_count else ()
        if set(before) != set(after):
            moves.append(ShardMove(shard, before, after))
    moved = len(current.item_ring.plan(target.item_ring, list(item_ids))) if item_ids else 0
    return Plan(current, target, moves, len(item_ids), moved, items_source)


def format_plan(plan: Plan) -> str:
    a, b = plan.current, plan.target
    lines = [
        f"from {a.shard_count} shards on {len(a.nodes)} nodes (replication {a.copies})"
        f" to {b.shard_count} shards on {len(b.nodes)} nodes (replication {b.copies})",
    ]
    if plan.items_total:
        lines.append(
            f"items changing shard: {plan.items_moved:,} of {plan.items_total:,} ({plan.items_source})"
            f" = {plan.moved_fraction:.2%}; ideal {plan.ideal_fraction:.2%}"
        )
    lines.append(f"shard replicas to copy: {plan.replicas_copied}; shards whose replicas change:")
    for m in plan.shard_moves:
        before, after = ",".join(m.before) or "(new)", ",".join(m.after) or "(removed)"
        lines.append(
            f"  shard {m.shard:3d}: {before:<24} -> {after:<24}"
            f" copy to {','.join(m.gained) or '-'}; drop from {','.join(m.lost) or '-'}"
        )
    if not plan.shard_moves:
        lines.append("  (none)")
    for node in sorted(set(a.nodes) | set(b.nodes)):
        lines.append(f"{node}: {len(a.shards_of(node))} shards -> {len(b.shards_of(node))} shards")
    return "\n".join(lines)


def sample_ids(n: int = 100_000) -> list[str]:
    """Stand-in item ids for planning without the live catalogue (the ring hashes ids uniformly)."""
    return [f"sample-{i}" for i in range(n)]


# --- rebalance ------------------------------------------------------------------------------------------
@dataclass
class RebalanceReport:
    from_epoch: int
    to_epoch: int = 0
    items_scanned: int = 0
    items_moved: int = 0  # distinct items whose logical shard changed
    records_copied: int = 0  # backfill records written, one per receiving replica
    records_skipped: int = 0  # backfill records a newer live write had superseded
    records_deleted: int = 0
    copies_redone: int = 0
    seconds: float = 0.0
    phases: list[tuple[str, float]] = field(default_factory=list)


class RebalanceError(RuntimeError):
    pass


class Rebalancer:
    def __init__(
        self,
        clients: Mapping[str, ShardClient],
        *,
        store: LayoutStore | None = None,
        grace_s: float = 2.0,
        batch_size: int = 1024,
        timeout_s: float = 30.0,
        progress: Callable[[str], None] | None = None,
        max_items_per_s: float | None = None,
    ) -> None:
        """`store`: where the layout lives (default: on the nodes, through `clients`);
        `max_items_per_s`: scan pace (copy and clean-up), so the move leaves CPU to live traffic."""
        self._clients = clients
        self._store = store or PushedLayoutStore(lambda: clients, timeout_s)
        self._rate = max_items_per_s
        self._paced_until = 0.0
        self._grace_s = grace_s
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        self._progress = progress or (lambda line: log.info("%s", line))
        self._origin = ""  # the document this run started from
        self._stored: Layout | None = None  # what this run last stored (or resumed from)
        self._ours: set[str] = set()  # documents this run may roll back from

    async def run(self, layout: Layout, target: Placement | None, addresses: Mapping[str, str]) -> Layout:
        """Moves the cluster from `layout` (the stored one) to `target`, or finishes the rebalance
        `layout` is in the middle of. Returns the final layout. LayoutConflict when the store no longer
        holds `layout` (another rebalance came first): then this run changed nothing."""
        self.report = RebalanceReport(layout.epoch)
        started = time.monotonic()
        self._origin = layout.to_json()
        self._stored = layout
        if layout.phase == "stable":
            if target is None or target == layout.current:
                await self._settle(layout)  # bring any node that missed it up to date
                return layout
            dual = layout.begin(target, addresses)
            self._check_clients(dual)
            resuming = False
        else:
            dual = layout
            self._check_clients(dual)
            if target is not None and target != layout.target:
                raise RebalanceError("a different rebalance is under way; run without changes to finish it")
            self._progress(f"resuming the rebalance of epoch {layout.epoch} ({layout.phase})")
            self._ours.add(layout.to_json())
            resuming = True
        try:
            if not resuming:
                await self._phase("dual", self._change(dual))
            if dual.phase == "dual":
                if resuming:
                    await self._settle(dual)
                await self._phase("copy", self._copy_all(dual))
                switched = dual.switch()
                await self._phase("switch", self._change(switched))
            else:
                switched = dual
                await self._settle(switched)
        except LayoutConflict:
            raise  # another run moved the layout on: it is not ours to roll back
        except Exception:
            await self._roll_back(dual)
            raise
        final = switched.finish()
        await self._phase("finish", self._change(final))
        await asyncio.sleep(self._grace_s)
        await self._phase("cleanup", self._clean_up(final, dual.current))
        await self._phase("drop", self._push(final, drop_unplaced=True))
        self.report.to_epoch = final.epoch
        self.report.seconds = time.monotonic() - started
        return final

    async def _phase(self, name: str, work: object) -> None:
        started = time.monotonic()
        assert asyncio.iscoroutine(work)
        await work
        self.report.phases.append((name, time.monotonic() - started))
        self._progress(f"{name}: done in {time.monotonic() - started:.1f}s")

    def _check_clients(self, layout: Layout) -> None:
        missing = [n for n in layout.all_nodes if n not in self._clients]
        if missing:
            raise RebalanceError(f"no client for nodes {missing}")

    async def _change(self, layout: Layout) -> None:
        """Stores `layout` in place of the layout this run stored last (LayoutConflict if another run
        changed it meanwhile), then brings every node to it."""
        assert self._stored is not None
        self._ours.add(layout.to_json())  # before: a store that fails part-way may hold it all the same
        await self._store.compare_and_set(self._stored.epoch, layout)
        self._stored = layout
        await self._settle(layout)

    async def _settle(self, layout: Layout) -> None:
        """Every node follows `layout` (also nodes it no longer uses: they must stop taking writes); one
        that has not read it from the store yet is handed it."""
        targets = list(dict.fromkeys([*layout.all_nodes, *self._clients]))

        async def follows(node: str) -> bool:
            try:
                answer = await self._clients[node].get_layout(self._timeout_s)
            except ShardError:
                return False  # handing it over retries, and says what failed
            if answer.epoch > layout.epoch:
                raise LayoutConflict(layout.epoch, await self._store.read())
            return answer.epoch == layout.epoch

        done = await asyncio.gather(*(follows(n) for n in targets))
        await self._push(layout, nodes=[n for n, ok in zip(targets, done, strict=True) if not ok])

    async def _push(
        self, layout: Layout, drop_unplaced: bool = False, nodes: Sequence[str] | None = None
    ) -> None:
        """Hands `layout` to `nodes` (default: every node)."""
        targets = list(dict.fromkeys([*layout.all_nodes, *self._clients])) if nodes is None else nodes

        async def push(node: str) -> NodeLayout:
            last: Exception | None = None
            for attempt in range(5):
                try:
                    return await self._clients[node].set_layout(
                        layout.to_json(), drop_unplaced, self._timeout_s
                    )
                except ShardError as exc:
                    last = exc
                    if not exc.transient:
                        break
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise RebalanceError(f"{node} did not take layout epoch {layout.epoch}: {last}")

        await asyncio.gather(*(push(n) for n in targets))

    async def _roll_back(self, dual: Layout) -> None:
        try:
            # Whatever this run stored last, even if its answer was lost: the store says.
            stored = await self._store.read()
            document = stored.to_json() if stored is not None else ""
            if stored is None or document not in self._ours:
                self._progress(
                    "nothing to roll back: the store holds the layout this run started from"
                    if document == self._origin
                    else f"not rolling back: the stored layout is another run's ({describe(stored)})"
                )
                return
            self._stored = stored
            back = Layout(stored.epoch + 1, dual.current, {n: dual.addresses[n] for n in dual.current.nodes})
            self._progress(f"rolling back to the old placement at epoch {back.epoch}")
            await self._change(back)
            await asyncio.sleep(self._grace_s)
            await self._push(back, drop_unplaced=True)
        except Exception as exc:  # the original error matters more; the next run resumes from here
            log.error("roll back failed: %s", exc)

    async def _pace(self, items: int) -> None:
        if not self._rate:
            return
        now = time.monotonic()
        self._paced_until = max(self._paced_until, now) + items / self._rate
        await asyncio.sleep(self._paced_until - now)

    async def _incarnations(self, nodes: Sequence[str]) -> dict[str, int]:
        answers = await asyncio.gather(*(self._clients[n].get_layout(self._timeout_s) for n in nodes))
        return {n: a.incarnation for n, a in zip(nodes, answers, strict=True)}

    async def _copy_all(self, dual: Layout) -> None:
        assert dual.target is not None
        receivers = list(dual.target.nodes)
        before = await self._incarnations(receivers)
        await self._copy(dual, receivers)
        for _ in range(3):
            after = await self._incarnations(receivers)
            restarted = [n for n in receivers if after[n] != before[n]]
            if not restarted:
                return
            self._progress(f"copying again to {restarted}: they restarted during the copy")
            self.report.copies_redone += 1
            before = after
            await self._copy(dual, restarted)
        raise RebalanceError("target nodes kept restarting during the copy")

    async def _copy(self, dual: Layout, receivers: Sequence[str]) -> None:
        a, b = dual.current, dual.target
        assert b is not None
        same_ring = a.shard_count == b.shard_count and a.vnodes == b.vnodes
        wanted = set(receivers)
        for shard in range(a.shard_count):
            if same_ring and not (set(b.replicas[shard]) - set(a.replicas[shard])) & wanted:
                continue  # items stay in this shard and every receiver already holds it
            moved, copied, scanned = await self._copy_shard(dual, shard, wanted)
            self.report.items_moved += moved
            self.report.items_scanned += scanned
            self.report.records_copied += copied

    async def _copy_shard(self, dual: Layout, shard: int, receivers: set[str]) -> tuple[int, int, int]:
        a, b = dual.current, dual.target
        assert b is not None
        errors = []
        for source in a.replicas[shard]:
            moved = copied = scanned = 0
            try:
                async for batch in self._clients[source].scan(shard, self._batch_size):
                    await self._pace(len(batch))
                    scanned += len(batch)
                    owners = b.item_ring.owner(batch.item_ids)
                    sends = []
                    for dest_shard in np.unique(owners).tolist():
                        rows = np.flatnonzero(owners == dest_shard)
                        if dest_shard != shard:
                            moved += len(rows)
                        part = batch.take(rows)
                        for node in b.replicas[dest_shard]:
                            if node in receivers and not (dest_shard == shard and node in a.replicas[shard]):
                                sends.append(self._backfill(node, dest_shard, part, dual.epoch))
                    copied += sum(await asyncio.gather(*sends))
                return moved, copied, scanned
            except ShardError as exc:
                if not exc.transient:
                    raise
                errors.append(f"{source}: {exc}")
                self._progress(f"shard {shard}: scan from {source} failed ({exc}); trying the next replica")
        raise RebalanceError(f"shard {shard}: no replica could be copied from: {'; '.join(errors)}")

    async def _backfill(self, node: str, shard: int, batch: RecordBatch, epoch: int) -> int:
        for attempt in range(5):
            try:
                written = await self._clients[node].upsert(
                    {shard: batch}, self._timeout_s, layout_epoch=epoch, backfill=True
                )
                self.report.records_skipped += len(batch) - written
                return written
            except ShardError as exc:
                if not exc.transient or attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _clean_up(self, final: Layout, before: Placement) -> None:
        """Deletes, from every shard that stays where it was, the items the new item ring puts elsewhere
        (copied out, or written to both placements during the move)."""
        placement = final.current
        if before.shard_count == placement.shard_count and before.vnodes == placement.vnodes:
            return
        jobs = [
            (node, shard)
            for shard in range(min(before.shard_count, placement.shard_count))
            for node in placement.replicas[shard]
            if node in before.replicas[shard]
        ]
        for node, shard in jobs:
            client = self._clients[node]
            stray: list[np.ndarray] = []
            async for batch in client.scan(shard, self._batch_size):
                await self._pace(len(batch))
                owners = placement.item_ring.owner(batch.item_ids)
                stray.append(batch.labels[owners != shard])
            labels = np.concatenate(stray) if stray else np.zeros(0, np.uint64)
            for start in range(0, len(labels), 10_000):
                self.report.records_deleted += await client.delete(
                    shard, labels[start : start + 10_000], self._timeout_s, layout_epoch=final.epoch
                )
