"""Hinted handoff: the writes a replica missed, kept by the frontend and replayed once it answers again.

With `write_acks` below the replication factor a write is acknowledged while a replica is down; that
replica must still get it, or it would serve (and feed to catalogues) a shard without the write once it
is back. Every write a replica failed with a transient error (down, circuit open, deadline) is kept here
as a hint, per node and shard, keyed by label: the newest write of a label replaces an older hint, and a
later write of it that reaches the node directly drops the hint (it is newer). A background task replays
a node's hints, oldest first in batches, as soon as its circuit lets a call through, and stops when none
is left.

Ordering within one frontend: a replay batch and this frontend's direct writes of the same labels to the
same node never overlap (`writing` and the replay keep apart by label; writes of other items never
wait), so a replayed hint cannot land after a newer direct write of the same label. Writes of one item
through two frontends at once are not ordered across replicas (as without handoff). Hints live in
memory, bounded by `max_items`: a frontend that dies, or hints dropped past the bound
(`recd_write_hints_dropped_total`), leave a replica behind; the README says how to repair it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import metrics
from server.routing.replicas import Replicas
from server.routing.topology import Topology
from server.tasks import cancel_and_wait
from shards.records import ErrorKind, RecordBatch, ShardError

log = logging.getLogger(__name__)

REPLAY_BATCH_ITEMS = 1024
REPLAY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class _Upsert:
    item_id: str
    vector: npt.NDArray[np.float32]
    payload: bytes


_DELETE = None  # a hint that deletes its label
_Hint = _Upsert | None
_ABSENT = object()


class _Turns:
    """A node's direct writes and its replay batches, kept apart by label: a direct write waits for a
    replay batch that carries one of its labels, and a replay batch leaves out the labels a direct write
    is carrying (that write supersedes their hints, or hints them again if it fails). Writes of other
    labels never wait for a replay."""

    def __init__(self) -> None:
        self.cond = asyncio.Condition()
        self.writing: dict[int, int] = {}  # label -> direct writes of it in flight
        self.replaying: set[int] = set()


class HintedHandoff:
    def __init__(
        self,
        replicas: Replicas,
        topology: Callable[[], Topology],
        max_items: int = 200_000,
        interval_s: float = 0.5,
    ) -> None:
        self._replicas = replicas
        self._topology = topology
        self._max_items = max_items
        self._interval_s = interval_s
        # node -> shard -> label -> hint, oldest first (a re-hinted label moves to the end)
        self._hints: dict[str, dict[int, dict[int, _Hint]]] = {}
        self._count = 0
        self._turns: dict[str, _Turns] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- the write path ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def writing(
        self, node: str, labels: Iterable[npt.NDArray[np.uint64]], deadline: float
    ) -> AsyncIterator[None]:
        """Keeps a direct write of `labels` to `node` apart from a replay of the same labels to it (waits
        at most until `deadline`)."""
        if not self._hints.get(node):
            # Nothing held for the node, so no replay to it either: nothing to keep apart. (A hint of
            # one of these labels added meanwhile comes from a concurrent write of the same item, which
            # is unordered anyway.)
            yield
            return
        turns = self._turns.setdefault(node, _Turns())
        mine = {label for part in labels for label in part.tolist()}
        async with turns.cond:
            if not turns.replaying.isdisjoint(mine):
                try:
                    await asyncio.wait_for(
                        turns.cond.wait_for(lambda: turns.replaying.isdisjoint(mine)),
                        max(0.001, deadline - time.monotonic()),
                    )
                except TimeoutError:
                    raise ShardError(
                        f"{node}: deadline passed while missed writes of the same items were replayed to it",
                        ErrorKind.DEADLINE_EXCEEDED,
                    ) from None
            for label in mine:
                turns.writing[label] = turns.writing.get(label, 0) + 1
        try:
            yield
        finally:
            async with turns.cond:
                for label in mine:
                    left = turns.writing[label] - 1
                    if left:
                        turns.writing[label] = left
                    else:
                        del turns.writing[label]
                turns.cond.notify_all()

    def missed_upsert(self, node: str, shard: int, batch: RecordBatch) -> None:
        hints = [
            _Upsert(item_id, batch.vectors[i], payload)
            for i, (item_id, payload) in enumerate(zip(batch.item_ids, batch.payloads, strict=True))
        ]
        self._add(node, shard, batch.labels.tolist(), hints)

    def missed_delete(self, node: str, shard: int, labels: npt.NDArray[np.uint64]) -> None:
        self._add(node, shard, labels.tolist(), [_DELETE] * len(labels))

    def written(self, node: str, shard: int, labels: npt.NDArray[np.uint64]) -> None:
        """A direct write of these labels reached the node: it is newer than any hint of them."""
        held = self._hints.get(node, {}).get(shard)
        if not held:
            return
        for label in labels.tolist():
            if held.pop(label, _ABSENT) is not _ABSENT:
                self._count -= 1
        self._tidy(node, shard)

    def pending(self, node: str | None = None) -> int:
        if node is not None:
            return sum(len(h) for h in self._hints.get(node, {}).values())
        return self._count

    def _add(self, node: str, shard: int, labels: list[int], hints: Sequence[_Hint]) -> None:
        held = self._hints.setdefault(node, {}).setdefault(shard, {})
        dropped = 0
        for label, hint in zip(labels, hints, strict=True):
            if label in held:
                del held[label]  # re-inserted at the end: the newest write wins, replayed last
                self._count -= 1
            if self._count >= self._max_items:
                dropped += 1
                continue
            held[label] = hint
            self._count += 1
        if dropped:
            metrics.WRITE_HINTS_DROPPED.labels(node).inc(dropped)
            log.warning(
                "hinted handoff full (%d writes held): %d writes %s missed are dropped; once it is back, "
                "`recd shards check` finds what it lacks and --repair-from a peer repairs it",
                self._max_items,
                dropped,
                node,
            )
        self._tidy(node, shard)
        self._start()

    def _tidy(self, node: str, shard: int) -> None:
        shards = self._hints.get(node)
        if shards is not None and not shards.get(shard, True):
            del shards[shard]
        metrics.WRITE_HINTS_PENDING.labels(node).set(self.pending(node))

    # --- replay --------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._closed or self._count == 0 or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hinted-handoff")

    async def _run(self) -> None:
        while self._count and not self._closed:
            await asyncio.sleep(self._interval_s)
            await self.replay()

    async def replay(self) -> int:
        """One round: every node with hints whose circuit lets a call through gets them; returns how
        many hints were delivered."""
        delivered = 0
        for node in list(self._hints):
            if node not in self._replicas.names:
                # The layout dropped the node: nothing of it is served any more.
                for shard, held in list(self._hints[node].items()):
                    self._discard(node, shard, list(held), "node left the layout", lost=False)
                del self._hints[node]
                continue
            if not self._replicas.health(node).allow():
                continue
            while self._hints.get(node):
                sent = await self._replay_batch(node)
                if sent <= 0:
                    break
                delivered += sent
        return delivered

    async def _replay_batch(self, node: str) -> int:
        """Replays one batch of one shard; returns how many hints it settled (0: stop for this round)."""
        shard, held = next(iter(self._hints[node].items()))
        topology = self._topology()
        if not any(
            node in routing.replicas[shard] for routing in topology.writes if shard < len(routing.replicas)
        ):
            # The layout moved the shard off this node: what it missed is no longer its to hold.
            self._discard(node, shard, list(held), "the shard moved off it", lost=False)
            return len(held) or -1
        turns = self._turns.setdefault(node, _Turns())
        async with turns.cond:
            free = (label for label in held if label not in turns.writing)
            labels = list(itertools.islice(free, REPLAY_BATCH_ITEMS))
            if not labels:
                return 0  # every one is being written directly right now: next round
            turns.replaying.update(labels)
        hints = [held[label] for label in labels]
        try:
            await self._send(node, shard, labels, hints, topology.epoch)
        except ShardError as exc:
            if exc.transient or exc.kind is ErrorKind.STALE_LAYOUT:
                return 0  # still down, or a layout change under way: next round
            # Refused for good (it would be refused on every replay): keep no poison in the queue.
            log.error(
                "hinted handoff to %s, shard %d refused: %s; dropping %d writes",
                node,
                shard,
                exc,
                len(labels),
            )
            self._discard(node, shard, labels, "refused", lost=True)
            return len(labels)
        finally:
            async with turns.cond:
                turns.replaying.difference_update(labels)
                turns.cond.notify_all()
        # Drop what was sent unless a newer hint replaced it meanwhile (a direct write that failed).
        for label, hint in zip(labels, hints, strict=True):
            if label in held and held[label] is hint:
                del held[label]
                self._count -= 1
        self._tidy(node, shard)
        metrics.WRITE_HINTS_REPLAYED.labels(node).inc(len(labels))
        return len(labels)

    async def _send(self, node: str, shard: int, labels: list[int], hints: list[_Hint], epoch: int) -> None:
        client = self._replicas.client(node)
        ups = [(label, h) for label, h in zip(labels, hints, strict=True) if h is not None]
        deletes = np.array([label for label, h in zip(labels, hints, strict=True) if h is None], np.uint64)
        if ups:
            batch = RecordBatch(
                np.array([label for label, _ in ups], np.uint64),
                [h.item_id for _, h in ups],
                np.stack([h.vector for _, h in ups]),
                [h.payload for _, h in ups],
            )
            call = client.upsert({shard: batch}, REPLAY_TIMEOUT_S, layout_epoch=epoch)
            await self._replicas.call(node, "upsert", call)
        if len(deletes):
            call = client.delete(shard, deletes, REPLAY_TIMEOUT_S, layout_epoch=epoch)
            await self._replicas.call(node, "delete", call)

    def _discard(self, node: str, shard: int, labels: list[int], reason: str, *, lost: bool) -> None:
        """Drops hints; `lost`: the node keeps serving the shard without these writes (counted, since it
        needs a repair), as opposed to hints made moot (the shard or the node left the layout)."""
        held = self._hints[node][shard]
        for label in labels:
            if held.pop(label, _ABSENT) is not _ABSENT:
                self._count -= 1
        if lost:
            metrics.WRITE_HINTS_DROPPED.labels(node).inc(len(labels))
        log.log(
            logging.WARNING if lost else logging.INFO,
            "hinted handoff: %d writes for %s, shard %d dropped (%s)",
            len(labels),
            node,
            shard,
            reason,
        )
        self._tidy(node, shard)

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait([self._task])
