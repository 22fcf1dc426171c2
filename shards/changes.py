"""A shard's change feed: the item changes it applied, in LSN order, for the frontends' catalogue replicas.

Every frontend keeps a replica of the catalogue (ids, metadata, FP16 table) and follows each shard's feed
from a cursor `(incarnation, lsn)`. The feed serves what the write-ahead log holds: the recent tail from
memory (a ring bounded by bytes, with the time each change was applied, so followers can measure
their lag), and older positions by re-reading the WAL, as long as its segments have not been dropped
after a snapshot. A cursor the feed cannot serve (older than both, or from another incarnation of the
shard) is answered with a reset: the follower re-reads the shard with a scan and then follows from the
position the reset named, which was taken before the scan started, so nothing written during the scan
is missed (changes re-applied over a scan that already holds them are idempotent).

The incarnation is drawn at random each time the shard opens: a node restart, or a replica the follower
has not followed before, always resets, which keeps the cursor meaningful without persisting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from shards.records import RecordBatch

# Per shard: 20 shards of 4 MiB is 80 MiB a node at most, whatever the dimension; further back, the WAL.
DEFAULT_RETAIN_BYTES = 4 << 20
MAX_ITEMS_PER_READ = 4096


@dataclass(frozen=True)
class Change:
    """One applied write: either upserted records or deleted labels. `applied_at` is the wall-clock time
    the shard applied it (0.0 when re-read from the WAL, which does not keep times)."""

    lsn: int
    applied_at: float
    upserts: RecordBatch | None = None
    deletes: NDArray[np.uint64] | None = None

    @property
    def size(self) -> int:
        """Items it touches (what a read is bounded by)."""
        if self.upserts is not None:
            return len(self.upserts)
        return 0 if self.deletes is None else len(self.deletes)

    @property
    def nbytes(self) -> int:
        """Roughly what holding it costs (what the ring is bounded by)."""
        if self.upserts is not None:
            u = self.upserts
            return int(u.vectors.nbytes + u.labels.nbytes) + sum(
                len(i) + len(p) for i, p in zip(u.item_ids, u.payloads, strict=True)
            )
        return 0 if self.deletes is None else int(self.deletes.nbytes)


@dataclass(frozen=True)
class FeedRead:
    """What a cursor gets: `changes` after it (possibly none), and the position they bring it to. With
    `reset`, `changes` is empty and `(incarnation, position)` is where to follow from after a scan."""

    incarnation: int
    position: int
    changes: tuple[Change, ...] = ()
    reset: bool = False


OlderChanges = Callable[[int], Iterator[Change] | None]
"""Changes after an LSN from durable storage (the WAL), or None when it no longer holds them all."""


class ChangeLog:
    """Thread-safe. Writers `append` in LSN order (ShardIndex applies in LSN order); readers on any thread
    `read`, and asyncio readers `wait_beyond` a position without holding a thread."""

    def __init__(
        self,
        first_lsn: int,
        retain_bytes: int = DEFAULT_RETAIN_BYTES,
        older: OlderChanges | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.incarnation = random.getrandbits(63) or 1
        self._retain = max(1, retain_bytes)
        self._older = older
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: deque[Change] = deque()
        self._held = 0
        # Everything up to `_last` is applied; the ring covers (_floor, _last].
        self._last = first_lsn - 1
        self._floor = self._last
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def position(self) -> int:
        with self._lock:
            return self._last

    def append(
        self, lsn: int, *, upserts: RecordBatch | None = None, deletes: NDArray[np.uint64] | None = None
    ) -> None:
        change = Change(lsn, self._clock(), upserts, deletes)
        with self._lock:
            if lsn <= self._last:
                raise ValueError(f"change feed: LSN {lsn} after {self._last} is out of order")
            if not self._ring:
                self._floor = lsn - 1
            self._ring.append(change)
            self._held += change.nbytes
            self._last = lsn
            while self._held > self._retain and len(self._ring) > 1:
                gone = self._ring.popleft()
                self._held -= gone.nbytes
                self._floor = gone.lsn
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that reader's loop has closed
                loop.call_soon_threadsafe(event.set)

    def skip(self, lsn: int) -> None:
        """An LSN whose write failed to apply: followers must not wait for it, and it has nothing to
        give them. The ring cannot show the gap, so it starts again after it."""
        with self._lock:
            if lsn > self._last:
                self._ring.clear()
                self._held = 0
                self._last = lsn
                self._floor = lsn

    def needs_disk(self, incarnation: int, after: int) -> bool:
        """Whether `read` would go to the WAL (callers on an event loop run it in a thread then)."""
        with self._lock:
            return incarnation == self.incarnation and after < self._floor and self._older is not None

    def read(self, incarnation: int, after: int, max_items: int = MAX_ITEMS_PER_READ) -> FeedRead:
        with self._lock:
            last = self._last
            if incarnation != self.incarnation or after > last:
                return FeedRead(self.incarnation, last, reset=True)
            if after == last:
                return FeedRead(self.incarnation, last)
            if after >= self._floor:
                return FeedRead(self.incarnation, *self._take(after, max_items))
        # Older than the ring: the WAL may still hold it (read outside the lock: it touches the disk).
        older = self._older(after) if self._older is not None else None
        if older is None:
            return FeedRead(self.incarnation, last, reset=True)
        changes: list[Change] = []
        taken = 0
        position = after
        for change in older:
            if change.lsn > last or (changes and taken + change.size > max_items):
                break
            changes.append(change)
            taken += change.size
            position = change.lsn
        return FeedRead(self.incarnation, position, tuple(changes))

    def _take(self, after: int, max_items: int) -> tuple[int, tuple[Change, ...]]:
        # Called with the lock held. LSNs in the ring are increasing, not necessarily contiguous
        # (a skipped LSN), so find the start by value.
        start = next(i for i, change in enumerate(self._ring) if change.lsn > after)
        changes: list[Change] = []
        taken = 0
        for i in range(start, len(self._ring)):
            change = self._ring[i]
            if changes and taken + change.size > max_items:
                break
            changes.append(change)
            taken += change.size
        return changes[-1].lsn, tuple(changes)

    async def wait_beyond(self, position: int, timeout_s: float) -> bool:
        """Waits until something after `position` is applied, or the timeout; True when there is."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self._last > position:
                return True
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
            return True
        except TimeoutError:
            return self.position > position
        finally:
            with self._lock:
                self._waiters.discard(entry)
